"""Threshold calibration: a starting clipping threshold per activation bit-width."""

import torch

from qspos.core.calibrate import init_act_thresholds, mse_threshold
from qspos.runtime.build import build_supernet
from qspos.runtime.data import load_splits, make_loader
from tests.helpers import train_config


def test_activation_thresholds_of_every_bit_width_are_initialised():
    cfg = train_config()
    supernet = build_supernet(cfg)
    buffers = {n: b.clone() for n, b in supernet.named_buffers()}
    loader = make_loader(load_splits(cfg.data, cfg.model).calib, 32, shuffle=False)
    init_act_thresholds(supernet, [next(iter(loader))], torch.device("cpu"))
    for name, layer in supernet.layer_items():
        t = layer.input_quant.threshold.detach()[:, 0]
        assert (t != 1.0).all() and (t > 0).all(), name
        if len(t) > 1:  # more bits: less clipping pays off
            assert t[0] <= t[-1], name
    for n, b in supernet.named_buffers():
        assert torch.equal(b, buffers[n]), f"{n} was not restored"


def test_mse_threshold_clips_less_with_more_bits():
    x = torch.randn(50_000).abs()
    t2, t8 = mse_threshold(x, 2, False, False), mse_threshold(x, 8, False, False)
    assert t2 < t8 <= float(x.max())


