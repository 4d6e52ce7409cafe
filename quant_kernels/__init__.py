"""Numerical core of qspos, with no NAS in it: fake quantization, bit packing, integer ops."""

from collections.abc import Callable

from quant_kernels.reference import fake_quant, int_threshold, scale_of, to_int

FAKE_QUANT_BACKENDS: dict[str, Callable] = {"reference": fake_quant}


def fake_quant_impl(backend: str) -> Callable:
    """The fake-quantization function of a backend (same signature as :func:`fake_quant`)."""
    try:
        return FAKE_QUANT_BACKENDS[backend]
    except KeyError:
        raise ValueError(f"unknown quantization backend {backend!r}; one of {sorted(FAKE_QUANT_BACKENDS)}") from None


__all__ = ["FAKE_QUANT_BACKENDS", "fake_quant", "fake_quant_impl", "int_threshold", "scale_of", "to_int"]
