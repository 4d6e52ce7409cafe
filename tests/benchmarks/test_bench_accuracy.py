"""The accuracy benchmark (``benchmarks/bench_accuracy.py``, ``qspos bench``) end to end at tiny
size: a first piece trains some nets, a resumed one adds the rest without redoing any, and the
results (JSON, Markdown, plots) say what is partial. Plus the statistics it reports."""

from __future__ import annotations

import json
import runpy
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from qspos.cli import main
from qspos.errors import QsposError
from qspos.runtime.config import load_config
from qspos.stages.bench import BenchDir, Plan, kendall_tau, run_bench, spearman_rho, spread, top_k_overlap

ROOT = Path(__file__).resolve().parents[2]

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
    first = run_bench(cfg, work, out, Plan(seeds=1, parts=("float", "uniform"), rank_archs=3, uniform_bits=(2, 8)),
                      command="piece 1")
    assert first["partial"] and "0/searched-w2a2" in first["missing"]
    kinds = sorted((n["kind"], n["bits"]) for n in first["nets"])
    assert kinds == [("float", None), ("uniform", 2), ("uniform", 8)]
    w8 = next(n for n in first["nets"] if n["bits"] == 8)
    assert w8["init"] == "float" and w8["bitops"] > next(n for n in first["nets"] if n["bits"] == 2)["bitops"]
    assert "PARTIAL" in (out / "results.md").read_text()
    done = _finished(work)
    assert len(done) == 6  # float, uniform-w2a2, uniform-w8a8: result.json + model.pt each

    with pytest.raises(QsposError, match="--resume"):
        run_bench(cfg, work, out, Plan(seeds=1))

    plan = Plan(seeds=1, rank_archs=3, uniform_bits=(2, 8))
    res = run_bench(cfg, work, out, plan, resume=True, command="piece 2")
    assert {k: v for k, v in _finished(work).items() if k in done} == done  # nothing redone
    assert not res["partial"] and not res["missing"], res["missing"]
    assert {n["kind"] for n in res["nets"]} == {"float", "uniform", "searched", "random", "rank"}
    for n in res["nets"]:
        assert 0 <= n["test_top1"] <= 1 and n["se"] > 0 and n["bitops"] > 0 and n["seed"] == 0
    assert res["ranking"]["n"] == 3 and [i["command"] for i in res["invocations"]] == ["piece 1", "piece 2"]
    assert all(r["test_top1_std"] is None for r in res["summary"])  # one seed: no std
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["nets"] == res["nets"] and on_disk["commit"] == res["commit"]
    assert {t["target"] for t in on_disk["targets"]} >= {"float test top-1", "evolution - random search at w2a2"}
    md = (out / "results.md").read_text()
    assert "PARTIAL" not in md and "uniform W8A8" in md and "piece 2" in md
    (count,) = [c for c in on_disk["searches"] if c["budget"] == "w2a2"]
    assert count["seed"] == 0 and count["evaluations"] >= count["random_evaluations"] > 0
    assert f"- w2a2: s0: {count['evaluations']} / {count['random_evaluations']}" in md
    assert (out / "accuracy.png").stat().st_size > 0 and (out / "ranking.png").stat().st_size > 0
    diag = {d["kind"]: d for d in on_disk["diagnosis"]}
    assert set(diag) == {"uniform", "searched", "random", "rank"} and "## Diagnosis" in md
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
    assert main(["bench", str(tmp_path / "tiny.yaml"), "--out", str(work), "--seeds", "1", "--report-only"]) == 0
    assert json.loads((work / "results.json").read_text())["nets"] == res["nets"]
    assert _finished(work) == again and len(json.loads(BenchDir(work).ledger.read_text())) == 3


def test_results_alone_continue_a_benchmark_on_a_fresh_machine(tmp_path):
    """The committed state (result files, no checkpoints) copied into an empty work directory is a
    benchmark to continue: measured nets stay as they are, only the missing one is trained."""
    cfg = load_config(TINY)
    work, fresh, out = tmp_path / "work", tmp_path / "fresh", tmp_path / "out"
    plan = Plan(seeds=1, parts=("float", "uniform", "searched"), uniform_bits=(2, 8))
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
    assert res["missing"] == ["0/random-w2a2", "0/rank x16"]  # not in this plan

    trained = _finished(fresh)  # all measured: not even the supernet is needed
    (fresh / "seed0/supernet.pt").unlink()
    run_bench(cfg, fresh, out, plan, resume=True)
    assert _finished(fresh) == trained and not (fresh / "seed0/supernet.pt").exists()


def test_bad_requests_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(QsposError, match="unknown part 'floats'"):
        Plan(parts=("floats",))
    with pytest.raises(QsposError, match="init"):
        Plan(init="float")
    monkeypatch.setattr(sys, "argv", ["bench_accuracy.py", str(tmp_path / "missing.yaml"), "--work",
                                      str(tmp_path / "w"), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(ROOT / "benchmarks" / "bench_accuracy.py"), run_name="__main__")
    assert str(e.value).count("\n") == 0 and "config file not found" in str(e.value)
    assert not (tmp_path / "o").exists() and not (tmp_path / "w").exists()


def test_rank_statistics():
    x = [1, 2, 3, 4, 5]
    assert kendall_tau(x, x) == 1 and spearman_rho(x, x) == pytest.approx(1)
    assert kendall_tau(x, x[::-1]) == -1 and spearman_rho(x, x[::-1]) == pytest.approx(-1)
    # one swapped pair of 10: tau = (9 - 1) / 10
    assert kendall_tau(x, [2, 1, 3, 4, 5]) == pytest.approx(0.8)
    # tau-b with the first two tied in y: 2 concordant pairs, 1 tie, sqrt(2 * 3) below
    assert kendall_tau([1, 2, 3], [1, 1, 2]) == pytest.approx(2 / (3 * 2) ** 0.5)
    assert spearman_rho([1, 2, 3], [1, 1, 2]) == pytest.approx(0.8660254)
    assert top_k_overlap([5, 4, 3, 2, 1], [5, 3, 4, 1, 2], 2) == 0.5
    assert spread(list(range(100)), 5) == [0, 25, 50, 74, 99] and spread([1, 2], 5) == [1, 2]
