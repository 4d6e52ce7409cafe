"""What a search saves after every generation (``search/state.pt``), as typed objects.

On disk it is plain values (``torch.load(weights_only=True)`` reads it): the shared evaluation
cache and arch table, and per budget the keys ``evaluated`` and ``random`` (always), the
evolution's ``generation``, ``population`` and ``rng`` (once it started), ``sensitivity`` and
``fill`` (once they ran).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qspos.core.arch import Arch
from qspos.core.evolution import EvolutionState
from qspos.core.fill import FillStep
from qspos.errors import QsposError
from qspos.runtime.checkpoint import load_checkpoint, python_rng_state, set_python_rng_state

STATE_VERSION = 1


@dataclass
class Filled:
    """The fill step's outcome under one budget: the arch it ended at and its kept raises."""

    pick: str
    steps: list[FillStep]


@dataclass
class BudgetState:
    """One budget's part of a search."""

    evolution: EvolutionState | None = None  # None until the evolution starts
    random: list[str] | None = None  # the random search's archs (None until it ran)
    sensitivity: list[str] | None = None  # the sensitivity allocation's arch
    fill: Filled | None = None

    @property
    def evaluated(self) -> list[str]:
        """The archs the evolution evaluated, in order."""
        return list(self.evolution.evaluated) if self.evolution is not None else []

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"evaluated": self.evaluated, "random": self.random}
        if self.evolution is not None:
            evo = self.evolution
            d.update(generation=evo.generation, population=[a.to_dict() for a in evo.population],
                     rng=python_rng_state(evo.rng))
        if self.sensitivity is not None:
            d["sensitivity"] = self.sensitivity
        if self.fill is not None:
            d["fill"] = {"pick": self.fill.pick, "steps": [s.to_dict() for s in self.fill.steps]}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], archs: dict[str, Arch]) -> BudgetState:
        evolution = None
        if "rng" in d:
            rng = random.Random()
            set_python_rng_state(rng, d["rng"])
            evolution = EvolutionState(rng, [Arch.from_dict(a) for a in d["population"]], d["generation"],
                                       {digest: archs[digest] for digest in d["evaluated"]})
        fill = d.get("fill")
        return cls(evolution, d.get("random"), d.get("sensitivity"),
                   Filled(fill["pick"], [FillStep.from_dict(s) for s in fill["steps"]]) if fill else None)


@dataclass
class SearchState:
    """A search's state: the evaluation cache shared by every budget, and each budget's part."""

    fingerprint: str  # what the search depends on (``search.state_fingerprint``)
    cache: dict[str, float] = field(default_factory=dict)  # score by digest
    archs: dict[str, Arch] = field(default_factory=dict)  # every arch met, by digest
    budgets: dict[str, BudgetState] = field(default_factory=dict)

    def budget(self, name: str) -> BudgetState:
        """The state of the named budget (a new one if it has none yet)."""
        return self.budgets.setdefault(name, BudgetState())

    def to_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "fingerprint": self.fingerprint, "cache": self.cache,
                "archs": {d: a.to_dict() for d, a in self.archs.items()},
                "budgets": {name: b.to_dict() for name, b in self.budgets.items()}}

    @classmethod
    def load(cls, path: Path, fingerprint: str | None = None) -> SearchState:
        """The state saved at ``path``; with ``fingerprint``, refused unless a search of that
        fingerprint saved it (a resume must not mix two searches)."""
        d = load_checkpoint(path, require=("version", "fingerprint", "cache", "archs", "budgets"))
        if d["version"] != STATE_VERSION or fingerprint not in (None, d["fingerprint"]):
            raise QsposError(f"{path} was saved by a search with another config (model, space, data or "
                             "search settings); rerun without --resume into another --out")
        archs = {digest: Arch.from_dict(a) for digest, a in d["archs"].items()}
        return cls(d["fingerprint"], d["cache"], archs,
                   {name: BudgetState.from_dict(b, archs) for name, b in d["budgets"].items()})
