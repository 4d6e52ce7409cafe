"""The accuracy benchmark (``benchmarks/bench_accuracy.py``, ``qspos bench``) end to end at tiny
size: a first piece trains some nets, a resumed one adds the rest without redoing any, and the
results (JSON, Markdown, plots) say what is partial, judged against the benchmark's targets file."""

from __future__ import annotations

import json
import os
import runpy
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from qspos.cli import main
from qspos.core.budget import parse_budgets
from qspos.errors import QsposError
from qspos.runtime.build import build_supernet
from qspos.runtime.config import load_config
from qspos.runtime.rundir import RunDir
from qspos.stages.bench import BenchDir, Plan, Targets, run_bench, spread
from qspos.stages.bench.allocation import sensitivity_current
from qspos.stages.bench.plan import uniform_pairs
from qspos.stages.budgets import search_budgets

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))  # the scripts import what they share (_screen)
TARGETS = Targets.load(ROOT / "benchmarks" / "configs" / "accuracy_targets.yaml")

# ResNet-8 (widths 4/8/8) on 8x8 synthetic images; W8A8 is outside the space (a one-arch variant)
TINY = {
    "name": "tiny", "seed": 0,
    "model": {"name": "resnet_small", "num_classes": 4, "in_channels": 1, "input_size": 8,
              "args": {"depth": 8, "widths": [4, 8, 8]}},
    "space": {"weight_bits": [2, 4], "act_bits": [2, 4], "width_multipliers": [0.5, 1.0]},
    "data": {"dataset": "synthetic", "synthetic_size": 64, "val_size": 16, "batch_size": 16, "eval_batch_size": 64},
    "train": {"max_steps": 2, "warmup_epochs": 0, "threshold_init_batches": 1},
    "search": {"budgets": [{"name": "w2a2", "bitops": "uniform 2,2"}], "population": 4, "iterations": 2, "topk": 2,
               "mutation_count": 2, "crossover_count": 2, "max_tries": 200, "calib_images": 16, "val_images": 16},
    "finetune": {"max_steps": 2, "warmup_epochs": 0},
    "log": {"interval_s": 1000},
}


def _finished(work: Path) -> dict[str, int]:
    """Every finished net's files with their modification times."""
    return {str(p.relative_to(work)): p.stat().st_mtime_ns for p in work.rglob("*")
            if p.name in ("result.json", "model.pt")}


def test_bench_in_pieces_never_redoes_a_net(tmp_path):
    cfg = load_config(TINY)
    work, out = tmp_path / "work", tmp_path / "out"
    pairs = ((2, 2), (8, 8))
    first = run_bench(cfg, work, out, Plan(seeds=1, parts=("float", "uniform"), rank_archs=3, uniform=pairs),
                      command="piece 1")
    assert not first["partial"] and not first["missing"]  # complete, as far as its plan goes
    kinds = sorted((n["kind"], n["bits"]) for n in first["nets"])
    assert kinds == [("float", None), ("uniform", [2, 2]), ("uniform", [8, 8])]
    w8 = next(n for n in first["nets"] if n["bits"] == [8, 8])
    assert w8["init"] == "float" and w8["bitops"] > next(n for n in first["nets"] if n["bits"] == [2, 2])["bitops"]
    done = _finished(work)
    plan = Plan(seeds=1, rank_archs=3, uniform=pairs)
    report = run_bench(cfg, work, out, plan, report_only=True)  # the whole benchmark's view: trains nothing
    assert report["partial"] and "0/searched-w2a2" in report["missing"] and _finished(work) == done
    assert "PARTIAL" in (out / "results.md").read_text()
    assert len(done) == 6  # float, uniform-w2a2, uniform-w8a8: result.json + model.pt each

    with pytest.raises(QsposError, match="--resume"):
        run_bench(cfg, work, out, Plan(seeds=1))

    res = run_bench(cfg, work, out, plan, resume=True, command="piece 2", targets=TARGETS)
    assert {k: v for k, v in _finished(work).items() if k in done} == done  # nothing redone
    assert not res["partial"] and not res["missing"], res["missing"]
    assert {n["kind"] for n in res["nets"]} == {"float", "uniform", "searched", "random", "sensitivity", "rank"}
    for n in res["nets"]:
        assert 0 <= n["test_top1"] <= 1 and n["se"] > 0 and n["bitops"] > 0 and n["seed"] == 0
    assert res["ranking"]["n"] == 3 and [i["command"] for i in res["invocations"]] == ["piece 1", "piece 2"]
    assert all(r["test_top1_std"] is None for r in res["summary"])  # one seed: no std
    on_disk = json.loads((out / "results.json").read_text())
    _second_edition_schema(on_disk, work)
    assert on_disk["nets"] == res["nets"] and on_disk["commit"] == res["commit"]
    assert {t["target"] for t in on_disk["targets"]} >= {"float test top-1", "evolution - random search at w2a2"}
    md = (out / "results.md").read_text()
    assert "PARTIAL" not in md and "uniform W8A8" in md and "piece 2" in md
    (count,) = [c for c in on_disk["searches"] if c["budget"] == "w2a2"]
    assert count["seed"] == 0 and count["evaluations"] >= count["random_evaluations"] > 0
    assert f"- w2a2: s0: {count['evaluations']} / {count['random_evaluations']}" in md
    assert (out / "accuracy.png").stat().st_size > 0 and (out / "ranking.png").stat().st_size > 0
    diag = {d["kind"]: d for d in on_disk["diagnosis"]}
    assert set(diag) == {"uniform", "searched", "sensitivity", "random", "rank"} and "## Diagnosis" in md
    searched = next(n for n in res["nets"] if n["kind"] == "searched")
    assert diag["searched"]["search_minus_val_before"] == pytest.approx(
        searched["search_val_top1"] - searched["val_top1_before"])
    assert diag["searched"]["finetune_val_gain"] == pytest.approx(searched["val_top1"] - searched["val_top1_before"])
    assert 0 < diag["searched"]["budget_use"] <= 1 and diag["uniform"]["budget_use"] is None  # within its budget

    again = _finished(work)  # a resumed, finished benchmark trains nothing
    run_bench(cfg, work, out, plan, resume=True)
    assert _finished(work) == again

    # the command line reads the same work directory and only rewrites the results
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    assert main(["bench", str(tmp_path / "tiny.yaml"), "--out", str(work), "--seeds", "1", "--report-only",
                 "--uniform", "2,2", "--uniform", "8,8", "--net", "resnet8"]) == 0
    rewritten = json.loads((work / "results.json").read_text())
    assert [{**n, "net": "tiny"} for n in rewritten["nets"]] == res["nets"]
    assert {n["net"] for n in rewritten["nets"]} == {b["net"] for b in rewritten["budgets"]} == {"resnet8"}
    assert _finished(work) == again and len(json.loads(BenchDir(work).ledger.read_text())) == 3
    _sensitivity_is_measured_once(cfg, work, out)


def _second_edition_schema(res: dict, work: Path) -> None:
    """Every net and budget carries the net's label (the config's name by default), the uniform
    nets their (W, A) pair, the sensitivity nets their budget's allocation; each budget its
    best-fitting uniform net."""
    for n in res["nets"]:
        assert {"net", "kind", "budget", "bits", "seed", "bitops", "test_top1", "arch"} <= set(n) and n["net"] == "tiny"
        assert (n["bits"] is not None) == (n["kind"] == "uniform")
        assert (n["budget"] is not None) == (n["kind"] in ("searched", "random", "sensitivity"))
    w2 = next(n for n in res["nets"] if n["name"] == "uniform-w2a2")
    assert res["budgets"] == [{"net": "tiny", "name": "w2a2", "uniform": [2, 2], "bitops_max": w2["bitops"]}]
    alloc = json.loads((work / "seed0/search/sensitivity.json").read_text())["allocations"]["w2a2"]
    (sens,) = [n for n in res["nets"] if n["kind"] == "sensitivity"]
    assert (sens["name"], sens["budget"], sens["arch"]) == ("sensitivity-w2a2", "w2a2", alloc["arch"])
    assert sens["search_val_top1"] == alloc["val_top1"]
    (c,) = res["comparisons"]
    assert c["best_uniform"] == [2, 2] and c["searched_minus_uniform"]["seeds"] == 1  # W8A8 is over the bound
    searched = next(n for n in res["nets"] if n["kind"] == "searched")
    assert c["searched_minus_uniform"]["mean"] == pytest.approx(searched["test_top1"] - w2["test_top1"])
    assert c["searched_minus_sensitivity"]["mean"] == pytest.approx(searched["test_top1"] - sens["test_top1"])
    assert c["budget_use"]["sensitivity"]["mean"] == pytest.approx(sens["bitops"] / w2["bitops"])


def _sensitivity_is_measured_once(cfg, work: Path, out: Path) -> None:
    """A sensitivity net to redo reuses the allocation measured on the seed's supernet; a retrained
    supernet or other budgets make that allocation stale."""
    run, table = RunDir(work / "seed0"), work / "seed0/search/sensitivity.json"
    measured_at = table.stat().st_mtime_ns
    (run.net("sensitivity-w2a2").result).unlink()
    res = run_bench(cfg, work, out, Plan(seeds=1, parts=("sensitivity",)), resume=True)
    assert table.stat().st_mtime_ns == measured_at and run.net("sensitivity-w2a2").result.is_file()
    assert [n["kind"] for n in res["nets"]].count("sensitivity") == 1
    metrics, budgets = search_budgets(cfg, build_supernet(cfg))
    assert sensitivity_current(run, metrics, budgets)
    assert not sensitivity_current(run, metrics, parse_budgets([{"name": "w4a4", "bitops": "uniform 4,4"}], metrics))
    os.utime(run.supernet, ns=(measured_at + 10**9, measured_at + 10**9))
    assert not sensitivity_current(run, metrics, budgets)


def test_the_uniform_nets_are_every_pair_some_budget_needs():
    """Each budget's bound (not its floor) decides which uniform pairs of the space it needs; an
    explicit list wins, a pair outside the space included."""
    metrics = search_budgets(load_config(TINY), build_supernet(load_config(TINY)))[0]

    def pairs(*entries: dict) -> list[tuple[int, int]]:
        return uniform_pairs(Plan(), metrics, parse_budgets(list(entries), metrics, floor=0.9))

    assert pairs({"name": "w2a2", "bitops": "uniform 2,2"}) == [(2, 2)]
    assert pairs({"name": "w2a2", "bitops": "uniform 2,2"}, {"name": "mid", "bitops": "uniform 2,4"}) == [
        (2, 2), (2, 4), (4, 2)]  # W2A4 and W4A2 cost the same here
    assert pairs({"name": "w4a4", "bitops": "uniform 4,4"}) == [(2, 2), (2, 4), (4, 2), (4, 4)]  # under the floor too
    assert uniform_pairs(Plan(uniform=((8, 8),)), metrics, []) == [(8, 8)]


def test_results_alone_continue_a_benchmark_on_a_fresh_machine(tmp_path):
    """The committed state (result files, no checkpoints) copied into an empty work directory is a
    benchmark to continue: measured nets stay as they are, only the missing one is trained."""
    cfg = load_config(TINY)
    work, fresh, out = tmp_path / "work", tmp_path / "fresh", tmp_path / "out"
    plan = Plan(seeds=1, parts=("float", "uniform", "searched"), uniform=((2, 2), (8, 8)))
    run_bench(cfg, work, out, plan)
    for f in work.rglob("*"):
        if f.is_file() and f.suffix != ".pt":
            (fresh / f.relative_to(work)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, fresh / f.relative_to(work))
    (fresh / "seed0/finetune/searched-w2a2/result.json").unlink()
    kept = _finished(fresh)
    assert len(kept) == 3 and not list(fresh.rglob("*.pt"))

    res = run_bench(cfg, fresh, out, plan, resume=True)
    assert {k: v for k, v in _finished(fresh).items() if k in kept} == kept  # nothing measured is redone
    assert sorted(p.parent.name for p in fresh.rglob("model.pt")) == ["searched-w2a2"]
    assert (fresh / "seed0/supernet.pt").is_file() and len(res["nets"]) == 4
    assert res["missing"] == [] and not res["partial"]  # random, sensitivity and ranking are not in this plan

    trained = _finished(fresh)  # all measured: not even the supernet is needed
    (fresh / "seed0/supernet.pt").unlink()
    run_bench(cfg, fresh, out, plan, resume=True)
    assert _finished(fresh) == trained and not (fresh / "seed0/supernet.pt").exists()


def test_a_committed_state_continues_a_seed_on_its_own_supernet_and_search(tmp_path):
    """With ``state``, the supernet and the search's checkpoint travel with the results: a fresh
    machine fine-tunes the missing net from them instead of training and searching again (a
    supernet retrained on another CPU would be another one)."""
    cfg = load_config(TINY)
    work, fresh, out, state = tmp_path / "work", tmp_path / "fresh", tmp_path / "out", tmp_path / "state"
    plan = Plan(seeds=1, parts=("float", "uniform", "searched"), uniform=((2, 2),))
    run_bench(cfg, work, out, plan, state=state)
    assert (state / "seed0/supernet.pt").is_file() and (state / "seed0/search/state.pt").is_file()
    assert not [p for p in state.rglob("*.pt") if "finetune" in p.parts]
    (state / "seed0/finetune/searched-w2a2/result.json").unlink()
    supernet, search = (state / "seed0/supernet.pt").read_bytes(), (state / "seed0/search/state.pt").read_bytes()

    run_bench(cfg, fresh, out, plan, resume=True, state=state)
    assert sorted(p.parent.name for p in fresh.rglob("model.pt")) == ["searched-w2a2"]
    assert (fresh / "seed0/supernet.pt").read_bytes() == supernet
    assert (fresh / "seed0/search/state.pt").read_bytes() == search
    starts = [json.loads(line) for line in (fresh / "seed0/metrics.jsonl").read_text().splitlines()]
    assert sum(e.get("stage") == "train" and e.get("event") == "start" for e in starts) == 1  # the first piece's


def test_bad_requests_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(QsposError, match="unknown part 'floats'"):
        Plan(parts=("floats",))
    with pytest.raises(QsposError, match="init"):
        Plan(init="float")
    with pytest.raises(QsposError, match="w_bits, a_bits"):
        Plan(uniform=((2, 0),))
    monkeypatch.setattr(sys, "argv", ["bench_accuracy.py", str(tmp_path / "missing.yaml"), "--work",
                                      str(tmp_path / "w"), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(ROOT / "benchmarks" / "bench_accuracy.py"), run_name="__main__")
    assert str(e.value).count("\n") == 0 and "config file not found" in str(e.value)
    assert not (tmp_path / "o").exists() and not (tmp_path / "w").exists()


def test_the_ranking_sample_spreads_over_the_cost_range():  # the rank statistics: tests/core/test_stats.py
    assert spread(list(range(100)), 5) == [0, 25, 50, 74, 99] and spread([1, 2], 5) == [1, 2]
