"""Building a config's networks: the supernet and a trained supernet from its checkpoint."""

import pytest
import torch

from qspos.core.supernet import Supernet
from qspos.errors import QsposError
from qspos.runtime.build import build_supernet, load_supernet
from qspos.runtime.checkpoint import atomic_save
from qspos.runtime.config import load_config
from qspos.runtime.rundir import SUPERNET_SECTIONS, fingerprint


def _checkpoint(cfg, supernet, **extra):
    return {"model": supernet.state_dict(), "fingerprint": fingerprint(cfg, *SUPERNET_SECTIONS), **extra}


def test_load_supernet_round_trip_and_refusals(small_cfg, tmp_path, perturb):
    supernet = perturb(build_supernet(small_cfg))
    path = tmp_path / "supernet.pt"
    atomic_save(_checkpoint(small_cfg, supernet, complete=True), path)
    loaded = load_supernet(small_cfg, path)
    for (k, a), b in zip(supernet.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k

    atomic_save(_checkpoint(small_cfg, supernet, complete=False), path)
    with pytest.raises(QsposError, match="unfinished"):
        load_supernet(small_cfg, path)
    assert isinstance(load_supernet(small_cfg, path, require_complete=False), Supernet)

    other = load_config(small_cfg, ["space.width_multipliers=[0.5,1.0,1.5]"])
    with pytest.raises(QsposError, match="another model/space"):
        load_supernet(other, path, require_complete=False)
    with pytest.raises(QsposError, match="not found"):
        load_supernet(small_cfg, tmp_path / "missing.pt")


def test_the_auto_quant_backend_is_the_fastest_for_the_device(small_cfg):
    assert small_cfg.quant.backend == "auto"
    from qspos.runtime.build import quant_backend

    assert quant_backend(small_cfg, "cpu") == "fused" and quant_backend(small_cfg, "cuda") == "reference"
    assert quant_backend(load_config(small_cfg, ["quant.backend=compiled"]), "cuda") == "compiled"
    layer = next(m for _, m in build_supernet(small_cfg, "cpu").layer_items())
    assert layer.weight_quant.backend == layer.input_quant.backend == "fused"
    layer = next(m for _, m in build_supernet(small_cfg, "cuda").layer_items())  # built on the CPU, for CUDA
    assert layer.weight_quant.backend == "reference"
