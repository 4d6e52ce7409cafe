import json
import os
import random
import subprocess
import sys

import pytest
import yaml

from qspos.cli import main as cli_main
from qspos.core.arch import Arch
from qspos.core.budget import parse_budgets
from qspos.core.cost import CostModel
from qspos.core.evolution import breed, random_archs
from qspos.core.metrics import ArchMetrics
from qspos.errors import QsposError
from qspos.runtime.build import build_supernet, load_supernet
from qspos.runtime.checkpoint import load_checkpoint
from qspos.runtime.config import load_config
from qspos.runtime.evaluate import CandidateEvaluator
from qspos.stages.search import SearchResult, search
from tests.helpers import make_run, tiny_config

TWO_BUDGETS = [
    {"name": "small", "bitops": "uniform 2,2", "size_bytes": {"max": 700}},
    {"bitops": {"max": "uniform 4,4", "min": "uniform 3,3"}},
]


class Killed(Exception):
    """Stands for the process being killed mid-generation."""


def _metrics_for(cfg, run_dir):
    supernet = load_supernet(cfg, run_dir / "supernet.pt")
    return ArchMetrics(CostModel(supernet, cfg.input_shape))


def test_every_candidate_meets_its_budget_and_results_have_the_contract_format(tmp_path, perturb):
    cfg, run_dir = make_run(tmp_path, perturb, budgets=TWO_BUDGETS, random_baseline=True, iterations=2, floor=None)
    result = search(cfg, run_dir)

    metrics = _metrics_for(cfg, run_dir)
    budgets = parse_budgets(cfg.search.budgets, metrics)
    state = load_checkpoint(run_dir / "search" / "state.pt")  # weights_only loading works
    for b in budgets:
        bs = state["budgets"][b.name]
        candidates = bs["evaluated"] + bs["random"]
        assert len(bs["random"]) == len(bs["evaluated"]) > cfg.search.population  # same evaluations
        for d in candidates:
            assert b.accepts(metrics(Arch.from_dict(state["archs"][d])))
    assert result.evaluations == len(state["cache"])

    data = json.loads((run_dir / "search" / "results.json").read_text())
    assert set(data) == {"budgets", "pareto", "evaluations", "val_images", "method"}
    assert data["val_images"] == cfg.search.val_images  # what each val top-1 was measured on
    assert SearchResult.load(run_dir / "search" / "results.json") == result
    small, ranged = data["budgets"]
    assert ranged["name"] == "bitops-w4a4_bitops-min-w3a3"
    assert set(small) == {"name", "limits", "spec", "best", "uniform", "random_best", "evaluations",
                          "random_evaluations", "fill", "budget_use"}
    assert small["evaluations"] == small["random_evaluations"] == len(state["budgets"]["small"]["evaluated"])
    assert small["limits"]["size_bytes"] == [None, 700.0] and small["spec"] == TWO_BUDGETS[0]
    best = small["best"]
    assert 1 <= len(best) <= cfg.search.topk
    assert [e["val_top1"] for e in best] == sorted((e["val_top1"] for e in best), reverse=True)
    entry_keys = {"arch", "digest", "val_top1", "macs", "bitops", "searched_bitops", "size_bits", "layers"}
    assert set(best[0]) == entry_keys and set(small["random_best"]) == entry_keys
    assert {"name", "w_bits", "a_bits", "bitops"} <= set(best[0]["layers"][0])
    assert Arch.from_dict(best[0]["arch"]).digest() == best[0]["digest"] == result.best("small").digest()
    # uniform 2,2 is in the domain: its own top-1 is the baseline; uniform 4,4 is too
    uniform22 = metrics.space.uniform(2, 2).digest()
    assert small["uniform"]["in_domain"] and small["uniform"]["val_top1"] == state["cache"][uniform22]
    assert small["uniform"]["bitops"] == small["limits"]["bitops"][1]
    assert ranged["uniform"]["w_bits"] == 4 and ranged["uniform"]["val_top1"] is not None

    front = data["pareto"]
    assert {"digest", "val_top1", "bitops", "size_bits", "arch"} == set(front[0])
    assert all(a["bitops"] < b["bitops"] and a["val_top1"] < b["val_top1"] for a, b in zip(front, front[1:]))
    best_any = max(state["cache"].values())
    assert front[-1]["val_top1"] == best_any
    assert (run_dir / "search" / "pareto.png").stat().st_size > 1000
    assert "| BitOps (G) |" in (run_dir / "search" / "pareto.md").read_text()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in rows} == {"search"}
    assert [r["attempt"] for r in rows if r.get("event") == "start"] == [1]
    assert {r["phase"] for r in rows if "event" not in r} == {"evolution", "random", "done"}


def test_breeding_keeps_archs_legal_new_and_in_budget(tmp_path, perturb):
    cfg = load_config(tiny_config(), [f"runs_dir={tmp_path}"])
    space = build_supernet(cfg).space
    metrics = ArchMetrics(CostModel(build_supernet(cfg), cfg.input_shape))
    (budget,) = parse_budgets([{"bitops": "uniform 3,3"}], metrics)
    accept = lambda a: budget.accepts(metrics(a))  # noqa: E731
    rng = random.Random(0)
    seen: set[str] = set()
    parents = random_archs(space, rng, accept, seen, 4, 100)
    for _ in range(5):
        before = set(seen)
        children = breed(space, parents, rng, accept, seen, cfg.search)
        assert len({c.digest() for c in children}) == len(children) <= cfg.search.population
        for c in children:
            space.validate(c)
            assert accept(c) and c.digest() not in before
        parents = children[:3] or parents
    # a space nearly used up gives fewer archs instead of failing
    assert len(random_archs(space, rng, accept, seen, 10_000, 50)) < 10_000


def test_random_baseline_under_named_budgets_only_and_a_resume_adds_the_rest(tmp_path, perturb):
    budgets = [{"name": "a", "bitops": "uniform 3,3"}, {"name": "b", "size_bits": "uniform 4,2"}]
    cfg, run_dir = make_run(tmp_path, perturb, budgets=budgets, random_baseline=["b"], iterations=2)
    first = search(cfg, run_dir)
    assert [x.random_best is not None for x in first.budgets] == [False, True]
    before = load_checkpoint(run_dir / "search" / "state.pt")["budgets"]
    assert before["a"]["random"] is None and len(before["b"]["random"]) == len(before["b"]["evaluated"])
    # the random baseline's budgets are not part of the saved search's settings: a resume adds them
    again = search(load_config(cfg, ["search.random_baseline=true"]), run_dir, resume=True)
    after = load_checkpoint(run_dir / "search" / "state.pt")["budgets"]
    assert after["a"]["evaluated"] == before["a"]["evaluated"] and after["b"] == before["b"]
    assert len(after["a"]["random"]) == len(after["a"]["evaluated"])
    assert [x.best for x in again.budgets] == [x.best for x in first.budgets]


def test_resume_gives_the_same_result(tmp_path, perturb, monkeypatch):
    budgets = [{"name": "a", "bitops": "uniform 3,3"}, {"name": "b", "size_bits": "uniform 4,2"}]
    cfg, run_dir = make_run(tmp_path / "full", perturb, budgets=budgets, random_baseline=True)
    full = search(cfg, run_dir)

    cfg2, run_dir2 = make_run(tmp_path / "killed", perturb, budgets=budgets, random_baseline=True)
    calls, resuming = [], False
    real = CandidateEvaluator.evaluate

    def dying(self, arch):
        calls.append(arch)
        if len(calls) == 30 and not resuming:
            raise Killed
        return real(self, arch)

    monkeypatch.setattr(CandidateEvaluator, "evaluate", dying)
    with pytest.raises(Killed):
        search(cfg2, run_dir2)
    with pytest.raises(QsposError, match="pass --resume"):
        search(cfg2, run_dir2)
    with pytest.raises(QsposError, match="another config"):
        search(load_config(cfg2, ["search.mutation_prob=0.5"]), run_dir2, resume=True)
    with pytest.raises(QsposError, match="another config"):  # ranked by another score: another search
        search(load_config(cfg2, ["score=psnr"]), run_dir2, resume=True)
    calls.clear()
    resuming = True
    resumed = search(cfg2, run_dir2, resume=True)
    assert resumed == full
    assert 0 < len(calls) < full.evaluations  # finished generations were not evaluated again
    assert (run_dir / "search" / "results.json").read_text() == (run_dir2 / "search" / "results.json").read_text()


def test_infeasible_budget_and_missing_supernet(tmp_path, perturb):
    cfg, run_dir = make_run(tmp_path, perturb, budgets=[{"bitops": 1000}])
    with pytest.raises(QsposError, match=r"search.budgets\[0\].bitops: no arch meets bitops <= 1000; "
                                         r"the cheapest arch has \d+"):
        search(cfg, run_dir)
    with pytest.raises(QsposError, match="no trained supernet"):
        search(cfg, tmp_path / "elsewhere")


def test_a_budget_rejection_sampling_cannot_hit_starts_from_its_extreme_arch(tmp_path, perturb):
    cfg, run_dir = make_run(tmp_path, perturb, budgets=[{"bitops": "uniform 2,2"}])
    smallest, cheapest = _metrics_for(cfg, run_dir).extreme("bitops")
    cfg, run_dir = make_run(tmp_path, perturb, budgets=[{"name": "sliver", "bitops": smallest}],
                            max_tries=3, random_baseline=True)
    result = search(cfg, run_dir)
    (b,) = result.budgets
    assert b.best[0].bitops == smallest and b.evaluations >= 1
    assert b.random_evaluations is not None and b.random_evaluations < b.evaluations  # recorded, not hidden


def test_cli_search_reports_errors(tmp_path, perturb, capsys):
    cfg, run_dir = make_run(tmp_path, perturb, budgets=[{"bitops": 1000}])
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert cli_main(["search", str(path), "--out", str(run_dir)]) == 2
    assert "qspos: error: search.budgets[0].bitops: no arch meets" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path, perturb):
    cfg, run_dir = make_run(tmp_path / "one", perturb, random_baseline=True)
    one = search(cfg, run_dir)
    cfg2, run_dir2 = make_run(tmp_path / "two", perturb, random_baseline=True)
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(cfg2.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "qspos", "search", str(path), "--out", str(run_dir2)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = SearchResult.load(run_dir2 / "search" / "results.json")
    assert two == one


def test_the_search_spends_its_budget_inside_the_band(tmp_path, perturb):
    """With the default floor (0.9), every arch the evolution and the random search evaluate lies
    in [0.9 x bound, bound]: none wanders below the budget."""
    cfg, run_dir = make_run(tmp_path, perturb, budgets=[{"name": "w4a4", "bitops": "uniform 4,4"}],
                            random_baseline=True, iterations=2)
    assert cfg.search.floor == 0.9
    search(cfg, run_dir)
    metrics = _metrics_for(cfg, run_dir)
    hi = metrics(metrics.space.uniform(4, 4))["bitops"]
    state = load_checkpoint(run_dir / "search" / "state.pt")
    digests = state["budgets"]["w4a4"]["evaluated"] + state["budgets"]["w4a4"]["random"]
    costs = [metrics(Arch.from_dict(state["archs"][d]))["bitops"] for d in digests]
    assert costs and all(0.9 * hi <= c <= hi for c in costs)
    (b,) = SearchResult.load(run_dir / "search" / "results.json").budgets
    fill = state["budgets"]["w4a4"]["fill"]
    assert b.best[0].digest == fill["pick"] and b.fill == fill["steps"]  # the filled pick comes first
    assert 0.9 <= b.budget_use <= 1 and b.budget_use == b.best[0].bitops / hi
    for step in b.fill:  # each kept raise stayed in budget, within the pick's noise
        assert step["cost"] <= hi
