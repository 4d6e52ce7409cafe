"""Shared fixtures: a tiny config and a way to make every path of a supernet matter."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from qspos.core.layers import SearchableLayer
from qspos.runtime.config import Config, load_config

# Test tensors are tiny: with several threads on a shared, busy machine the OpenMP threads spin
# waiting for each other and a small forward takes 10-50x longer than on one thread.
torch.set_num_threads(1)

SMALL_CONFIG = {
    "name": "test",
    "model": {"name": "resnet_small", "num_classes": 10, "in_channels": 1, "input_size": 16,
              "args": {"depth": 8, "widths": [8, 16, 32]}},
    "space": {"weight_bits": [2, 4], "act_bits": [2, 4], "width_multipliers": [0.5, 1.0]},
    "data": {"dataset": "synthetic", "synthetic_size": 64, "val_size": 32, "batch_size": 32},
}


@pytest.fixture
def small_cfg(tmp_path) -> Config:
    """ResNet-8 (widths 8/16/32) on 16x16 synthetic images, space {2,4}x{2,4} x {0.5,1}."""
    return load_config(SMALL_CONFIG, [f"runs_dir={tmp_path / 'runs'}"])


@torch.no_grad()
def _perturb(net: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.uniform_(0.5, 1.5, generator=g)
            m.bias.uniform_(-0.2, 0.2, generator=g)
            m.running_mean.uniform_(-0.1, 0.1, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
        elif isinstance(m, SearchableLayer):
            m.input_quant.threshold.uniform_(0.5, 3.0, generator=g)
    return net


@pytest.fixture
def perturb() -> Callable[..., nn.Module]:
    """Random BN statistics/affine and activation thresholds, so that no path is trivial
    (a fresh ResNet zero-initialises each block's last BN: every block would be its shortcut)."""
    return _perturb
