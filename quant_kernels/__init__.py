"""Numerical core of qspos, with no NAS in it: fake quantization, bit packing, integer ops.

Fake-quantization backends (same signature and forward values as :func:`fake_quant`):

* ``"reference"``: built from Brevitas ops; the numerics every other backend matches.
* ``"fused"``: one autograd Function per call, fewest passes over memory in eager mode.
* ``"compiled"``: inductor kernels (``torch.compile``); traceable inside compiled models;
  falls back to ``"fused"`` where compilation is unavailable.
"""

from collections.abc import Callable

from quant_kernels.compiled import fake_quant_compiled, fake_quant_traceable
from quant_kernels.fused import fake_quant_fused
from quant_kernels.reference import fake_quant, int_threshold, scale_of, to_int

FAKE_QUANT_BACKENDS: dict[str, Callable] = {
    "reference": fake_quant,
    "fused": fake_quant_fused,
    "compiled": fake_quant_compiled,
}
# Backends that take the bit-width as a Python number, so that a call reads nothing back; the
# others take it as a tensor (one graph for every bit-width under ``torch.compile``).
PYTHON_BITS_BACKENDS = frozenset({"fused"})


def best_backend(device_type: str) -> str:
    """The fastest backend with these exact numerics for eager training on a device type.

    On the CPU, ``fused`` (benchmarks/results/quant_kernels*.md: 4 passes forward, 4 backward,
    against Brevitas' ops). On CUDA, ``reference`` until benchmarks/gpu_check.py has timed
    ``fused`` there (given a Python bit-width, neither reads anything back to the host).
    ``compiled`` pays off only inside ``torch.compile``, which asks for it explicitly.
    """
    return "reference" if device_type == "cuda" else "fused"


def fake_quant_impl(backend: str) -> Callable:
    """The fake-quantization function of a backend (same signature as :func:`fake_quant`)."""
    try:
        return FAKE_QUANT_BACKENDS[backend]
    except KeyError:
        raise ValueError(f"unknown quantization backend {backend!r}; one of {sorted(FAKE_QUANT_BACKENDS)}") from None


__all__ = [
    "FAKE_QUANT_BACKENDS",
    "PYTHON_BITS_BACKENDS",
    "best_backend",
    "fake_quant",
    "fake_quant_compiled",
    "fake_quant_fused",
    "fake_quant_impl",
    "fake_quant_traceable",
    "int_threshold",
    "scale_of",
    "to_int",
]
