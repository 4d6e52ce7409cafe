"""The "compiled" backend: inductor kernels when available, the fused eager path otherwise."""

from __future__ import annotations

import warnings

import pytest
import torch

import quant_kernels.compiled as compiled
from quant_kernels import fake_quant


@pytest.fixture
def fresh_kernel(monkeypatch):
    monkeypatch.setattr(compiled, "_static_kernels", {})
    monkeypatch.setattr(compiled, "_dynamic_kernels", {})
    monkeypatch.setattr(compiled, "_compile_failed", False)


def _check_against_reference(bits: float, signed: bool, narrow: bool, per_channel: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 4, 3, 3) * 2
    t = torch.rand(6, 1, 1, 1) + 0.5 if per_channel else torch.tensor(1.7)
    outs = []
    for impl in (fake_quant, compiled.fake_quant_compiled):
        xg, tg = x.clone().requires_grad_(), t.clone().requires_grad_()
        y = impl(xg, tg, torch.tensor(bits), signed, narrow, signed and narrow)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        outs.append((y.detach(), xg.grad, tg.grad))
    (y_ref, gx_ref, gt_ref), (y, gx, gt) = outs
    assert torch.equal(y, y_ref)
    torch.testing.assert_close(gx, gx_ref)
    torch.testing.assert_close(gt, gt_ref, rtol=1e-4, atol=1e-4)


def _compile_raising(message: str):
    """A stand-in for ``torch.compile`` whose compiled functions raise ``RuntimeError(message)``."""
    def compile_(*args, **kwargs):
        def fail(*a, **k):
            raise RuntimeError(message)
        return fail
    return compile_


def test_falls_back_to_fused_when_compile_fails(fresh_kernel, monkeypatch):
    monkeypatch.setattr(torch, "compile", _compile_raising("no C++ compiler"))
    with pytest.warns(RuntimeWarning, match="falling back"):
        _check_against_reference(4.0, False, False, per_channel=False)
    assert compiled._compile_failed
    _check_against_reference(3.0, True, True, per_channel=True)  # no second warning, still right


@pytest.mark.slow
def test_inductor_kernel_matches_reference(fresh_kernel, monkeypatch):
    """Compiles (a minute on 2 cores): every configuration compiled (none over Dynamo's
    recompile limit, which would fall back), bit-exact forward for every bit-width."""
    monkeypatch.setattr(torch._dynamo.config, "fail_on_recompile_limit_hit", True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to the fused path would warn
        for signed, narrow in [(True, True), (True, False), (False, False)]:
            for per_channel in (False, True):
                for bits in (1.0, 2.0, 5.0, 8.0):
                    if bits == 1.0 and not narrow:
                        continue
                    _check_against_reference(bits, signed, narrow, per_channel)
    assert len(compiled._static_kernels) == 6 and not compiled._dynamic_kernels and not compiled._compile_failed


def test_shapes_past_the_static_limit_share_a_dynamic_kernel(fresh_kernel, monkeypatch):
    compiles = []

    def record(fn, fullgraph, dynamic):
        compiles.append(dynamic)
        return fn  # the traceable function itself: same values, no compiler needed

    monkeypatch.setattr(torch, "compile", record)
    monkeypatch.setattr(compiled, "STATIC_KERNELS", 2)
    t, bits = torch.tensor(1.0), torch.tensor(4.0)
    for n in (3, 4, 5, 6, 3, 6):
        x = torch.rand(n, 2)
        assert torch.equal(compiled.fake_quant_compiled(x, t, bits, False, False), fake_quant(x, t, bits, False, False))
    assert compiles == [False, False, None]  # shapes 3 and 4 own kernels, 5 and 6 share one
    assert len(compiled._static_kernels) == 2 and len(compiled._dynamic_kernels) == 1


def test_bad_input_raises_without_disabling_compilation(fresh_kernel, monkeypatch):
    monkeypatch.setattr(torch, "compile", _compile_raising("shape mismatch"))
    with pytest.raises(RuntimeError, match="size of tensor"):
        compiled.fake_quant_compiled(torch.ones(3, 2), torch.ones(4, 1), torch.tensor(4.0), False, False)
    assert not compiled._compile_failed
