"""What a search found (``search/results.json``), as typed objects every reader uses."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qspos.core.arch import Arch
from qspos.errors import QsposError


@dataclass(frozen=True)
class Candidate:
    """One evaluated arch: its supernet val top-1 (after BN recalibration) and its cost."""

    arch: Arch
    val_top1: float
    macs: int
    bitops: int
    searched_bitops: int
    size_bits: int
    layers: list[dict] = field(default_factory=list)  # the cost model's per-layer report

    @property
    def digest(self) -> str:
        return self.arch.digest()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {"arch": self.arch.to_dict(), "digest": self.digest, **{k: d[k] for k in d if k != "arch"}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Candidate:
        return cls(Arch.from_dict(d["arch"]), d["val_top1"], d["macs"], d["bitops"], d["searched_bitops"],
                   d["size_bits"], list(d.get("layers", [])))


@dataclass(frozen=True)
class UniformBaseline:
    """The uniform-precision net a budget's "uniform W,A" bound refers to."""

    w_bits: int
    a_bits: int
    in_domain: bool  # is it an arch of the space (else it was not evaluated)?
    val_top1: float | None
    bitops: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UniformBaseline:
        return cls(d["w_bits"], d["a_bits"], d["in_domain"], d["val_top1"], d["bitops"])


@dataclass(frozen=True)
class BudgetResult:
    """The search under one budget: its picks, best first (the first one filled, see
    ``qspos.core.fill``, when ``fill`` holds its steps), and its baselines."""

    name: str
    limits: dict[str, list]  # metric -> [min, max] (either may be None)
    spec: dict[str, Any]  # the config entry as written
    best: list[Candidate]
    uniform: UniformBaseline | None
    random_best: Candidate | None  # the random search's best, with as many evaluations
    evaluations: int | None = None  # archs the evolution evaluated under this budget
    random_evaluations: int | None = None  # archs the random search found (fewer under a tight budget)
    fill: list[dict] | None = None  # the fill step's kept raises, in order (None: no fill step ran)

    @property
    def budget_use(self) -> float | None:
        """The pick's share of its first upper bound on a cost it reports (BitOps, size, MACs)."""
        for metric, (_, hi) in self.limits.items():
            if hi and metric in ("bitops", "searched_bitops", "size_bits", "macs") and self.best:
                return getattr(self.best[0], metric) / hi
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "limits": self.limits, "spec": self.spec,
                "best": [c.to_dict() for c in self.best],
                "uniform": self.uniform.to_dict() if self.uniform else None,
                "random_best": self.random_best.to_dict() if self.random_best else None,
                "evaluations": self.evaluations, "random_evaluations": self.random_evaluations,
                "fill": self.fill, "budget_use": self.budget_use}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BudgetResult:
        return cls(d["name"], dict(d["limits"]), dict(d["spec"]), [Candidate.from_dict(c) for c in d["best"]],
                   UniformBaseline.from_dict(d["uniform"]) if d.get("uniform") else None,
                   Candidate.from_dict(d["random_best"]) if d.get("random_best") else None,
                   d.get("evaluations"), d.get("random_evaluations"), d.get("fill"))


@dataclass(frozen=True)
class ParetoPoint:
    arch: Arch
    val_top1: float
    bitops: int
    size_bits: int

    @property
    def digest(self) -> str:
        return self.arch.digest()

    def to_dict(self) -> dict[str, Any]:
        return {"digest": self.digest, "val_top1": self.val_top1, "bitops": self.bitops,
                "size_bits": self.size_bits, "arch": self.arch.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ParetoPoint:
        return cls(Arch.from_dict(d["arch"]), d["val_top1"], d["bitops"], d["size_bits"])


@dataclass
class SearchResult:
    """What ``search/results.json`` holds."""

    budgets: list[BudgetResult]
    pareto: list[ParetoPoint]  # of everything evaluated: val top-1 against BitOps
    evaluations: int
    val_images: int | None = None  # images each candidate's val top-1 was measured on
    method: str = "evolution"  # what picked each budget's arch (search.method)

    def to_dict(self) -> dict[str, Any]:
        return {"budgets": [b.to_dict() for b in self.budgets], "pareto": [p.to_dict() for p in self.pareto],
                "evaluations": self.evaluations, "val_images": self.val_images, "method": self.method}

    def budget(self, name: str) -> BudgetResult:
        for b in self.budgets:
            if b.name == name:
                return b
        raise QsposError(f"no budget named {name!r} in the search results "
                         f"(there are: {', '.join(b.name for b in self.budgets)})")

    def best(self, budget: str, rank: int = 0) -> Arch:
        """The ``rank``-th best arch found under the named budget."""
        best = self.budget(budget).best
        if rank >= len(best):
            raise QsposError(f"pick {rank}: budget {budget} has {len(best)} search result(s)")
        return best[rank].arch

    @classmethod
    def load(cls, path: str | Path) -> SearchResult:
        path = Path(path)
        if not path.is_file():
            raise QsposError(f"no search results at {path}: run 'qspos search' first")
        try:
            d = json.loads(path.read_text())
            return cls([BudgetResult.from_dict(b) for b in d["budgets"]],
                       [ParetoPoint.from_dict(p) for p in d["pareto"]], d["evaluations"], d.get("val_images"),
                       d.get("method", "evolution"))
        except (ValueError, KeyError, TypeError, AttributeError, QsposError):
            raise QsposError(f"{path} is not a qspos search results file") from None


def choice_text(c: dict) -> str:
    """``W2A4 x0.5``: a choice as tables show it."""
    width = c.get("width")
    return f"W{c['w_bits']}A{c['a_bits']}" + (f" x{width:g}" if width is not None else "")
