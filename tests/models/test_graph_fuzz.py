"""Property-based fuzz of the channel analysis (issue 29): small generated CNNs mixing the ops it
models (convs, BatchNorm, residual adds, squeeze-excitation gates, concatenations) with ops it
must pin (splits, slices, views, permutes, one-channel maps). Every sampled path either runs and
computes what its extracted net computes, or the conversion refused beforehand in one line."""

from __future__ import annotations

import os
import random

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from qspos.core.supernet import Supernet
from qspos.errors import QsposError
from qspos.models import convert
from qspos.runtime.config import load_config

FUZZ = settings(max_examples=int(os.environ.get("QSPOS_GRAPH_FUZZ_EXAMPLES", "12")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
SPACE = load_config({"space": {"weight_bits": [4, 16], "act_bits": [16], "width_multipliers": [0.5, 1.0, 1.5],
                               "first": {"w_bits": 16, "a_bits": 16}, "last": {"w_bits": 16, "a_bits": 16}}}).space
SHAPE, CLASSES = (2, 4, 4), 3
OPS = ["conv1", "conv3", "dw", "grouped", "bn", "relu", "save", "add", "sub", "cat", "gate", "one", "chunk",
       "split", "slice", "view", "permute", "pool", "scale", "unbind"]
PROGRAM = st.lists(st.tuples(st.sampled_from(OPS), st.integers(1, 6)), min_size=1, max_size=8)


class Generated(nn.Module):
    """A CNN interpreting ``program`` (op, channels) on a stack of saved tensors, then a Linear
    head; ops that do not fit the current channels are left out when it is built."""

    def __init__(self, program: list[tuple[str, int]]):
        super().__init__()
        self.steps: list[tuple[str, int]] = []
        self.layers = nn.ModuleList()
        c, saved = SHAPE[0], []
        for op, k in program:
            c = self._add(op, k, c, saved)
        self.fc = nn.Linear(c, CLASSES)

    def _add(self, op: str, k: int, c: int, saved: list[int]) -> int:
        """Record ``op`` if it fits ``c`` channels (and the saved ones); the channels after it."""
        layer: nn.Module | None = None
        if op in ("conv1", "conv3"):
            layer, c_out = nn.Conv2d(c, k, 1 if op == "conv1" else 3, padding=int(op == "conv3")), k
        elif op == "dw":
            layer, c_out = nn.Conv2d(c, c, 3, padding=1, groups=c), c
        elif op == "grouped" and c % 2 == 0 and c > 2:
            layer, c_out = nn.Conv2d(c, c, 1, groups=2), c
        elif op == "bn":
            layer, c_out = nn.BatchNorm2d(c), c
        elif op in ("gate", "one"):  # squeeze-excitation / spatial attention
            layer, c_out = nn.Conv2d(c, c if op == "gate" else 1, 1), c
        elif op == "save":
            saved.append(c)
            c_out = c
        elif op in ("add", "sub") and saved and saved[-1] == c:
            c_out = saved.pop()
        elif op == "cat" and saved:
            c_out = c + saved.pop()
        elif op in ("chunk", "unbind") and c % 2 == 0:
            c_out = c // 2
        elif op in ("split", "slice") and c > 1:
            c_out = c - 1 if op == "split" else c // 2
        elif op in ("relu", "view", "permute", "pool", "scale"):
            c_out = c
        else:
            return c
        self.steps.append((op, len(self.layers)))
        if layer is not None:
            self.layers.append(layer)
        return c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        saved = []
        for op, i in self.steps:
            x = self._run(op, i, x, saved)
        return self.fc(x.mean((2, 3)))

    def _run(self, op: str, i: int, x: torch.Tensor, saved: list[torch.Tensor]) -> torch.Tensor:
        if op in ("conv1", "conv3", "dw", "grouped", "bn"):
            return self.layers[i](x)
        if op == "gate":
            return x * torch.sigmoid(self.layers[i](x.mean((2, 3), keepdim=True)))
        if op == "one":
            return x * torch.sigmoid(self.layers[i](x))
        if op == "save":
            saved.append(x)
            return x
        if op in ("add", "sub"):
            return x + saved.pop() if op == "add" else x - saved.pop()
        if op == "cat":
            return torch.cat([x, saved.pop()], 1)
        if op == "chunk":
            a, b = torch.chunk(x, 2, dim=1)
            return a * b
        if op == "unbind":
            a, b = x.unflatten(1, (2, -1)).unbind(1)
            return a + b
        if op == "split":
            return torch.split(x, [1, x.size(1) - 1], dim=1)[1]
        if op == "slice":
            return x[:, : x.size(1) // 2]
        if op == "view":
            return x.reshape(x.size(0), x.size(1), -1).reshape(x.shape)
        if op == "permute":
            return x.permute(0, 1, 3, 2)
        if op == "pool":
            return F.max_pool2d(x, 3, 1, 1)
        if op == "scale":
            return 0.5 * x
        return F.relu(x)


def _supernet(program: list[tuple[str, int]]) -> tuple[nn.Module, Supernet] | None:
    """The model of ``program`` and its supernet (None: nothing to search); the widths pinned
    where the analysis must pin them are what is under test."""
    torch.manual_seed(0)
    model = Generated(program).eval()
    try:
        converted = convert(model, SHAPE, max(SPACE.width_multipliers), SPACE.tie)
        return model, Supernet(converted.net, converted.declaration, SPACE).eval()
    except QsposError as e:  # every layer fixed: the only refusal these models may get
        assert str(e) == "the model has nothing to search: every layer is fixed"
        return None


@FUZZ
@given(PROGRAM, st.integers(0, 2**16))
def test_every_sampled_path_runs_and_computes_its_extracted_net(program, seed):
    built = _supernet(program)
    if built is None:
        return
    model, supernet = built
    x = torch.randn(2, *SHAPE)
    rng = random.Random(seed)
    archs = [*supernet.space.extremes(), supernet.space.sample(rng), supernet.space.sample(rng)]
    with torch.no_grad():
        expected_shape = model(x).shape
        for arch in archs:
            supernet.set_arch(arch)
            got = supernet(x)
            assert got.shape == expected_shape
            torch.testing.assert_close(supernet.extract(arch).eval()(x), got, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("program", [
    [("conv1", 4), ("chunk", 0), ("conv1", 3)],  # issue 29: a chunk of a conv with a width
    [("conv3", 4), ("save", 0), ("conv1", 1), ("sub", 0)],  # a one-channel residual (the denoiser)
    [("conv1", 4), ("conv1", 1), ("save", 0), ("conv1", 1), ("add", 0)],
    [("conv1", 4), ("unbind", 0), ("conv1", 2), ("split", 0), ("conv1", 3)],
])
def test_the_cases_that_crashed_run_on_every_path(program):
    model, supernet = _supernet(program)
    x = torch.randn(2, *SHAPE)
    for arch in supernet.space.extremes():
        supernet.set_arch(arch)
        with torch.no_grad():
            assert supernet(x).shape == model(x).shape
