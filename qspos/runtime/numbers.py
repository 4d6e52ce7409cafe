"""How numbers read in tables, Markdown and progress lines: the one home of their formats.

Accuracies are fractions in the code and points (%) on the page; costs are counted in bits and
operations and read in M (BitOps, MACs) and KiB (weights). A missing value reads ``-``.
"""

from __future__ import annotations

MISSING = "-"


def points(v: float | None, digits: int = 2, se: float | None = None) -> str:
    """An accuracy fraction in %: ``0.9123`` -> ``91.23``, ``91.23 ± 0.28`` with a standard error."""
    if v is None:
        return MISSING
    return f"{100 * v:.{digits}f}" + ("" if se is None else f" ± {100 * se:.{digits}f}")


def signed_points(v: float | None, digits: int = 2) -> str:
    """A difference of accuracy fractions in points: ``0.0123`` -> ``+1.23``."""
    return MISSING if v is None else f"{100 * v:+.{digits}f}"


def percent(v: float | None) -> str | None:
    """An accuracy fraction as a table cell with its unit: ``0.9123`` -> ``91.23%`` (None stays empty)."""
    return None if v is None else f"{points(v)}%"


def millions(v: float | None, digits: int = 2) -> str:
    """A count (BitOps, MACs) in millions: ``12_345_678`` -> ``12.35``."""
    return MISSING if v is None else f"{v / 1e6:.{digits}f}"


def kib(bits: float | None, digits: int = 1) -> str:
    """A size in bits as KiB: ``81920`` -> ``10.0``."""
    return MISSING if bits is None else f"{bits / 8 / 1024:.{digits}f}"
