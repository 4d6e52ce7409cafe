"""Typed search results: what results.json holds, read back as the same objects."""

from __future__ import annotations

import json

import pytest

from qspos.core.arch import Choice
from qspos.errors import QsposError
from qspos.results.search_results import BudgetResult, Candidate, ParetoPoint, SearchResult, UniformBaseline
from qspos.runtime.build import build_supernet


def _result(space) -> SearchResult:
    a, b = space.uniform(4, 4), space.extremes()[0]
    best = [Candidate(a, 0.9, 10, 640, 600, 80, [{"name": "fc"}]), Candidate(b, 0.8, 5, 20, 16, 10)]
    return SearchResult(
        [BudgetResult("w3a3", {"bitops": [None, 700]}, {"bitops": "uniform 3,3"}, best,
                      UniformBaseline(3, 3, False, None, 360), best[1]),
         BudgetResult("small", {"bitops": [None, 100]}, {"bitops": 100}, best[1:], None, None)],
        [ParetoPoint(b, 0.8, 20, 10), ParetoPoint(a, 0.9, 640, 80)], 2)


def test_round_trip_through_json(tmp_path, small_cfg):
    space = build_supernet(small_cfg).space
    result = _result(space)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(result.to_dict()))
    loaded = SearchResult.load(path)
    assert loaded == result
    assert loaded.best("w3a3") == space.uniform(4, 4) and loaded.best("w3a3", 1) == space.extremes()[0]
    entry = loaded.to_dict()["budgets"][0]["best"][0]
    assert entry["digest"] == space.uniform(4, 4).digest() and entry["arch"]["layer1.0"] == Choice(4, 4, 1.0).to_dict()


def test_errors_name_what_is_missing(tmp_path, small_cfg):
    result = _result(build_supernet(small_cfg).space)
    with pytest.raises(QsposError, match="no budget named 'w9a9'.*there are: w3a3, small"):
        result.best("w9a9")
    with pytest.raises(QsposError, match="pick 1: budget small has 1 search result"):
        result.best("small", 1)
    with pytest.raises(QsposError, match="run 'qspos search' first"):
        SearchResult.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text('{"budgets": [{"name": "x"}], "pareto": [], "evaluations": 0}')
    with pytest.raises(QsposError, match="not a qspos search results file"):
        SearchResult.load(tmp_path / "bad.json")
