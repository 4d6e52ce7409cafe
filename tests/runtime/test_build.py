"""Building a config's networks: the supernet and a trained supernet from its checkpoint."""

import pytest
import torch
from torch import nn

import qspos
from qspos.core.cost import CostModel
from qspos.core.supernet import Supernet
from qspos.errors import QsposError
from qspos.runtime.build import build_supernet, load_float_weights, load_supernet, quant_backend
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


def test_the_supernet_the_stages_build_is_the_one_the_api_documents(small_cfg):
    """``qspos.evolve(build_supernet(cfg), ...)`` once failed on a missing ``input_shape``."""
    supernet = build_supernet(small_cfg)
    assert type(supernet) is qspos.Supernet and supernet.input_shape == small_cfg.input_shape
    arch = supernet.space.uniform(2, 2)
    assert supernet.cost(arch) == CostModel(supernet, small_cfg.input_shape).cost(arch)
    ranked = qspos.evolve(supernet, lambda a: -supernet.cost(a).bitops, {"bitops": "uniform 3,3"}, population=2,
                          iterations=1, topk=1, mutation_count=1, crossover_count=1)
    assert ranked and all(supernet.cost(a).bitops <= supernet.cost(supernet.space.uniform(3, 3)).bitops
                          for a, _ in ranked)


def _user_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


SPACE = {"weight_bits": [2, 4], "act_bits": [2, 8], "width_multipliers": [0.5, 1.0]}


def test_from_model_uses_the_stages_backend_and_keeps_the_models_weights(small_cfg):
    model = _user_model()
    supernet = qspos.Supernet.from_model(model, SPACE, (1, 8, 8))
    auto = quant_backend(small_cfg, "cpu")  # quant.backend: auto
    assert {q.backend for _, layer in supernet.layer_items() for q in (layer.weight_quant, layer.input_quant)} == {auto}
    assert torch.equal(supernet.net.get_submodule("3").weight, model[3].weight)  # the model's weights: the start


def test_from_model_calibrates_the_activation_thresholds_on_the_data_given():
    """Without calibration every threshold stayed at 1.0, and a custom loop lost ~10 points."""
    batches = [(torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(i)) * 5, None) for i in range(2)]
    plain = qspos.Supernet.from_model(_user_model(), SPACE, (1, 8, 8))
    calibrated = qspos.Supernet.from_model(_user_model(), SPACE, (1, 8, 8), calib=batches)
    thresholds = {n: layer.input_quant.threshold for n, layer in calibrated.layer_items()}
    assert all((t == 1.0).all() for _, layer in plain.layer_items() for t in layer.input_quant.threshold)
    assert all((t != 1.0).all() for n, t in thresholds.items() if calibrated.net.get_submodule(n).input_quant.quantized)
    qspos.init_act_thresholds(plain, batches)  # the public step, the same calibration
    for n, layer in plain.layer_items():
        assert torch.equal(layer.input_quant.threshold, thresholds[n]), n


@pytest.mark.parametrize("shape", [(32, 32), (1, 32, 32, 1), (1, 0, 32)])
def test_from_model_names_an_input_shape_that_is_not_one_image(shape):
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(QsposError, match=r"input_shape: give one image's \(channels, height, width\)"):
        qspos.Supernet.from_model(net, {"pairs": [[4, 4]]}, shape)


def test_float_weights_go_into_the_leading_slices_and_set_the_thresholds(small_cfg):
    cfg = small_cfg
    supernet = build_supernet(cfg)
    state = {k: torch.randn_like(v) if v.is_floating_point() else v
             for k, v in supernet.net.state_dict().items()
             if "_quant." not in k and k.rsplit(".", 1)[-1] in ("weight", "bias", "running_mean", "running_var")}
    narrow = state["layer1.0.conv1.weight"][:2]  # a narrower float net fills the first channels
    state["layer1.0.conv1.weight"] = narrow
    path = "float.pt"  # where the state came from, for messages
    fresh = build_supernet(cfg)
    before = fresh.net.conv1.weight_quant.threshold.clone()
    load_float_weights(fresh, state, path)
    torch.testing.assert_close(fresh.net.fc.weight, state["fc.weight"], rtol=0, atol=0)
    torch.testing.assert_close(fresh.net.layer1[0].conv1.weight[:2], narrow, rtol=0, atol=0)
    assert not torch.equal(fresh.net.conv1.weight_quant.threshold, before)  # thresholds follow the weights

    with pytest.raises(QsposError, match="unknown"):
        load_float_weights(build_supernet(cfg), {**state, "head.weight": torch.zeros(1)}, path)
