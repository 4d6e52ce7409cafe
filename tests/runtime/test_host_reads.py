"""A supernet training step reads nothing back to the host (DESIGN: "A training step reads
nothing back to the host"; on a GPU each read would be a device sync).

Counted on the CPU by patching every ``Tensor`` method that hands a value to Python, for the
whole step: ``set_arch`` of the sampled path (it only writes buffers), forward, loss, backward and
the masked optimiser step on the path's active parts. Logging reads the meters at its interval
only (``runtime.trainer``), so it is not part of a step.
"""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from qspos.runtime.build import build_supernet
from qspos.runtime.config import load_config
from qspos.runtime.optim import MaskedSGD, param_groups
from tests.conftest import SMALL_CONFIG
from tests.helpers import count_host_reads


def test_the_counter_sees_reads():
    t = torch.tensor(2.0)
    with count_host_reads() as counts:
        int(t), float(t), bool(t), t.item(), t.tolist(), t.cpu(), [0, 1, 2][torch.tensor(1)]
    assert counts == {"__int__": 1, "__float__": 1, "__bool__": 1, "item": 1, "tolist": 1, "cpu": 1,
                      "__index__": 1}


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_a_supernet_training_step_reads_nothing_back(backend, tmp_path):
    cfg = load_config(SMALL_CONFIG, [f"runs_dir={tmp_path}"])
    torch.manual_seed(0)
    supernet = build_supernet(cfg).train()
    supernet.set_quant_backend(backend)
    opt = MaskedSGD(param_groups(supernet, weight_decay=1e-4), lr=0.1, momentum=0.9, nesterov=True)
    criterion = nn.CrossEntropyLoss()
    x, y = torch.randn(8, *cfg.input_shape), torch.randint(0, 10, (8,))
    rng = random.Random(0)
    archs = [supernet.space.sample(rng) for _ in range(3)]
    per_step = []
    for arch in archs:
        with count_host_reads() as counts:
            supernet.set_arch(arch)
            loss = criterion(supernet(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step(supernet.active_slices())
        per_step.append(dict(counts))
    assert per_step == [{}, {}, {}]
