"""A tiny W2A4 net (an extracted supernet path, no training) written in every format, with the
reference its files are checked against."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from qspos.core.arch import Arch
from qspos.formats.check import Reference, first_batches
from qspos.formats.metadata import describe
from qspos.formats.registry import FORMATS
from qspos.runtime.build import build_supernet
from qspos.runtime.config import Config, load_config
from qspos.runtime.data import load_splits, make_loader
from tests.conftest import _perturb
from tests.helpers import tiny_config


@dataclass
class Written:
    """A net, its files in every format in ``dir`` (format -> file name) and its reference."""

    cfg: Config
    model: nn.Module
    arch: Arch
    dir: Path
    files: dict[str, str]
    ref: Reference
    metadata: dict[str, Any]


def tiny_net(w_bits: int = 2, a_bits: int = 4) -> tuple[Config, nn.Module, Arch]:
    """The tiny config's net at uniform W{w_bits}A{a_bits} (perturbed, so no path is trivial)."""
    cfg = load_config(tiny_config(), ["space.weight_bits=[1,2,4]"])
    torch.manual_seed(0)
    supernet = _perturb(build_supernet(cfg))
    arch = supernet.space.uniform(w_bits, a_bits)
    return cfg, supernet.extract(arch).eval(), arch


def reference(cfg: Config, model: nn.Module, images: int = 160) -> Reference:
    """``model`` on the first ``images`` test images, 32 at a time, with the test loader and 64
    training images to calibrate on; each file timed twice."""
    splits = load_splits(cfg.data, cfg.model)
    loader = make_loader(splits.test, 32, shuffle=False, workers=0)
    calib = next(iter(make_loader(splits.calib, 64, shuffle=False, workers=0)))[0]
    return Reference.of(model, first_batches(loader, images), loader, calib, timing_runs=2)


@pytest.fixture(scope="session")
def written(tmp_path_factory) -> Written:
    """The tiny W2A4 net in every format (tests that change its files work on copies)."""
    cfg, model, arch = tiny_net()
    ref = reference(cfg, model)
    out = tmp_path_factory.mktemp("written")
    metadata = describe(cfg, arch, load_splits(cfg.data, cfg.model).test)
    files = {name: fmt.write(ref, out, metadata) for name, fmt in FORMATS.items()}
    return Written(cfg, model, arch, out, files, ref, metadata)
