"""Statistics of measured accuracies, shared by the search, the report and the benchmarks."""

from __future__ import annotations

import math


def binomial_se(p: float | None, n: int | None) -> float | None:
    """Binomial standard error of an accuracy ``p`` measured on ``n`` images (a caller's score
    is no accuracy: it gets none)."""
    return None if p is None or not n else math.sqrt(p * (1 - p) / n)
