"""The fill step after a search: spend what the pick leaves of its budget.

Within one budget the supernet's scores are flat and noisy, so the search's pick often leaves a
part of the budget unspent. Starting from the pick, each round tries every *raise* (one choice
point one step up in weight bits, activation bits or width, the rest kept) that stays in the
budget, and keeps the best-scoring one when its score is not below the pick's by more than the
score's noise; it stops when no raise fits or none is kept. Pure: the caller scores archs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from qspos.core.arch import Arch, Choice
from qspos.core.evolution import Accept
from qspos.core.space import ChoicePoint, Space


@dataclass(frozen=True)
class FillStep:
    """One kept raise: the choice point, its choice before and after, the new arch's score and cost."""

    point: str
    before: Choice
    after: Choice
    score: float
    cost: float

    def to_dict(self) -> dict:
        return {"point": self.point, "before": self.before.to_dict(), "after": self.after.to_dict(),
                "score": self.score, "cost": self.cost}

    @classmethod
    def from_dict(cls, d: dict) -> FillStep:
        return cls(d["point"], Choice.from_dict(d["before"]), Choice.from_dict(d["after"]), d["score"], d["cost"])


def _next(values: Sequence, current) -> object | None:  # noqa: ANN001 - bits or widths
    above = sorted(v for v in values if v > current)
    return above[0] if above else None


def raises_of(point: ChoicePoint, choice: Choice) -> list[Choice]:
    """The choices one step above ``choice`` in ``point``'s domain: the next weight bit-width, the
    next activation bit-width (each only where the pair is in the domain) or the next width."""
    out = []
    w = _next([pw for pw, pa in point.pairs if pa == choice.a_bits], choice.w_bits)
    if w is not None:
        out.append(Choice(w, choice.a_bits, choice.width))
    a = _next([pa for pw, pa in point.pairs if pw == choice.w_bits], choice.a_bits)
    if a is not None:
        out.append(Choice(choice.w_bits, a, choice.width))
    if point.widths is not None and choice.width is not None:
        m = _next(point.widths, choice.width)
        if m is not None:
            out.append(Choice(choice.w_bits, choice.a_bits, m))
    return out


def raises(space: Space, arch: Arch) -> list[tuple[str, Arch]]:
    """Every arch one raise above ``arch``, with the choice point raised."""
    return [(p.name, Arch({**arch, p.name: c})) for p in space.points for c in raises_of(p, arch[p.name])]


def fill(space: Space, start: Arch, start_score: float, score: Callable[[Sequence[Arch]], list[float]],
         accept: Accept, cost: Callable[[Arch], float], noise: float) -> tuple[Arch, list[FillStep]]:
    """The pick raised greedily while it stays in budget (``accept``) and its score stays within
    ``noise`` of ``start_score``; the filled arch and the steps kept, in order. Ties between
    raises go to the higher cost, then to the choice point's order in the space."""
    arch, steps = start, []
    while True:
        options = [(name, a) for name, a in raises(space, arch) if accept(a)]
        if not options:
            return arch, steps
        scores = score([a for _, a in options])
        best = max(range(len(options)), key=lambda i: (scores[i], cost(options[i][1]), -i))
        if scores[best] < start_score - noise:
            return arch, steps
        name, raised = options[best]
        steps.append(FillStep(name, arch[name], raised[name], scores[best], cost(raised)))
        arch = raised
