"""The search's saved state: typed in memory, plain values on disk, the same after a round trip."""

import random

import pytest

from qspos.core.arch import Choice
from qspos.core.evolution import EvolutionState
from qspos.core.fill import FillStep
from qspos.core.space import ChoicePoint, Space
from qspos.errors import QsposError
from qspos.runtime.checkpoint import atomic_save, load_checkpoint
from qspos.stages.search_state import Filled, SearchState


def _state() -> SearchState:
    space = Space(ChoicePoint(f"b{i}", ((2, 2), (4, 4)), (0.5, 1.0)) for i in range(3))
    rng = random.Random(0)
    a, b, c = (space.sample(rng) for _ in range(3))
    state = SearchState("fp", cache={a.digest(): 0.5, b.digest(): 0.7}, archs={x.digest(): x for x in (a, b, c)})
    state.budget("small").evolution = EvolutionState(rng, [c], 1, {a.digest(): a, b.digest(): b})
    state.budget("small").fill = Filled(b.digest(), [FillStep("b0", Choice(2, 2, 0.5), Choice(4, 4, 0.5), 0.7, 9.0)])
    state.budget("other").random = [a.digest()]
    return state


def test_a_saved_state_loads_as_it_was(tmp_path):
    state = _state()
    atomic_save(state.to_dict(), tmp_path / "state.pt")
    loaded = SearchState.load(tmp_path / "state.pt", "fp")
    assert loaded.to_dict() == state.to_dict()
    evo, again = state.budgets["small"].evolution, loaded.budgets["small"].evolution
    assert again.rng.random() == evo.rng.random()  # the breeding goes on where it stopped
    assert loaded.budgets["small"].evaluated == list(evo.evaluated)
    assert loaded.budgets["other"].evolution is None and loaded.budgets["other"].evaluated == []


def test_the_file_holds_plain_values_under_the_documented_keys(tmp_path):
    atomic_save(_state().to_dict(), tmp_path / "state.pt")
    d = load_checkpoint(tmp_path / "state.pt")  # weights_only
    assert set(d) == {"version", "fingerprint", "cache", "archs", "budgets"}
    assert set(d["budgets"]["small"]) == {"evaluated", "random", "generation", "population", "rng", "fill"}
    assert set(d["budgets"]["other"]) == {"evaluated", "random"}


def test_a_state_of_another_search_is_refused(tmp_path):
    atomic_save(_state().to_dict(), tmp_path / "state.pt")
    with pytest.raises(QsposError, match="another config"):
        SearchState.load(tmp_path / "state.pt", "other fingerprint")
    assert SearchState.load(tmp_path / "state.pt").fingerprint == "fp"  # no fingerprint given: any search's
