"""The width rounding rule and the sliced BatchNorm."""

import torch
from torch import nn

from qspos.core.layers.sliced import SlicedBatchNorm2d, channels


def test_channels_rounding_rule():
    assert channels(64, None) == 64
    assert channels(64, 0.5) == 32 and channels(64, 1.5) == 96
    assert channels(10, 0.25) == 2  # round(2.5) -> 2 (half to even)
    assert channels(1, 0.1) == 1  # never zero


def test_sliced_batchnorm_shares_statistics_and_converts():
    bn = SlicedBatchNorm2d(8)
    bn.train()
    bn(torch.randn(16, 3, 4, 4) + 5)
    assert (bn.running_mean[:3] > 0.3).all() and torch.count_nonzero(bn.running_mean[3:]) == 0
    bn.set_channels(3)
    static = bn.to_static().eval()
    bn.eval()
    assert type(static) is nn.BatchNorm2d and static.num_features == 3
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(static(x), bn(x))


def test_loading_a_state_dict_restores_the_active_batchnorm_channels():
    src, dst = SlicedBatchNorm2d(8), SlicedBatchNorm2d(8)
    src.set_channels(3)
    dst.load_state_dict(src.state_dict())
    assert dst.active_slices()[dst.weight] == (slice(3),)
    assert dst.to_static().num_features == 3
