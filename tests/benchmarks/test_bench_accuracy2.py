"""The accuracy benchmark's second edition (``benchmarks/bench_accuracy2.py``) end to end at tiny
size, as CI runs it: two nets (a ResNet and torchvision's MobileNetV2), one per invocation, the
state that a fresh clone continues from, and the combined results judged across the nets."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))  # the scripts import what they share (_screen)
BUDGETS = [{"name": "w2a2", "bitops": "uniform 2,2"}, {"name": "mid", "bitops": "uniform 2,4"}]
COMMON = {
    "seed": 0, "space": {"weight_bits": [2, 4], "act_bits": [2, 4], "width_multipliers": [0.5, 1.0]},
    "data": {"dataset": "synthetic", "synthetic_size": 64, "val_size": 16, "batch_size": 16, "eval_batch_size": 64},
    "train": {"max_steps": 2, "warmup_epochs": 0, "threshold_init_batches": 1},
    "search": {"budgets": BUDGETS, "population": 4, "iterations": 1, "topk": 2, "mutation_count": 2,
               "crossover_count": 2, "max_tries": 200, "calib_images": 16, "val_images": 16},
    "finetune": {"max_steps": 2, "warmup_epochs": 0}, "log": {"interval_s": 1000},
}
MODELS = {
    "resnet14": {"name": "resnet_small", "num_classes": 4, "in_channels": 1, "input_size": 8,
                 "args": {"depth": 8, "widths": [4, 8, 8]}},
    "mobilenet_v2": {"name": "torchvision:mobilenet_v2", "num_classes": 4, "in_channels": 1, "input_size": 16,
                     "args": {"width_mult": 0.25}},
}


def _script(tmp_path: Path):
    """The benchmark script as a module, its nets' configs swapped for tiny ones."""
    spec = importlib.util.spec_from_file_location("bench_accuracy2", ROOT / "benchmarks" / "bench_accuracy2.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for net, model in MODELS.items():
        path = tmp_path / f"{net}.yaml"
        path.write_text(yaml.safe_dump({"name": f"tiny_{net}", "model": model, **COMMON}))
        module.NETS[net] = path
    module.RANKING["resnet14"]["rank_archs"] = 2  # a tiny search evaluates few archs inside the w2a2 band
    return module


def _run(monkeypatch, module, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", ["bench_accuracy2.py", *args])
    module.main()


def test_two_nets_in_pieces_combined_and_continued_from_the_state(tmp_path, monkeypatch):
    module, work, out = _script(tmp_path), tmp_path / "work", tmp_path / "out"
    where = ["--work", str(work), "--out", str(out), "--seeds", "1"]
    with pytest.raises(SystemExit, match="seed 1 is not one of the plan's seeds 0..0"):
        _run(monkeypatch, module, *where, "--nets", "resnet14", "--seed", "1")
    _run(monkeypatch, module, *where, "--nets", "resnet14", "--seed", "0")
    res = json.loads((out / "results.json").read_text())
    assert res["partial"] and res["not_started"] == ["mobilenet_v2"]
    r14 = json.loads((out / "resnet14" / "results.json").read_text())
    assert not r14["partial"], r14["missing"]
    kinds = sorted((n["kind"], n["budget"]) for n in r14["nets"] if n["kind"] not in ("uniform", "rank"))
    assert kinds == [("float", None), ("random", "mid"), ("random", "w2a2"), ("searched", "mid"),
                     ("searched", "w2a2"), ("sensitivity", "mid"), ("sensitivity", "w2a2")]
    assert sorted(n["bits"] for n in r14["nets"] if n["kind"] == "uniform") == [[2, 2], [2, 4], [4, 2]]
    ranked = [n for n in r14["nets"] if n["kind"] == "rank"]
    (w2a2,) = [b for b in r14["budgets"] if b["name"] == "w2a2"]
    assert len(ranked) == 2 and r14["ranking"]["band"] == "w2a2"
    assert all(0.9 * w2a2["bitops_max"] <= n["bitops"] <= w2a2["bitops_max"] for n in ranked)  # inside the band
    state = out / "resnet14" / "state"
    assert len(list(state.rglob("result.json"))) == len(r14["nets"])
    checkpoints = sorted(str(p.relative_to(state)) for p in state.rglob("*.pt"))
    assert checkpoints == ["seed0/search/state.pt", "seed0/supernet.pt"]  # the seed's, not the nets'
    supernet = (state / "seed0/supernet.pt").read_bytes()

    shutil.rmtree(work)  # a fresh clone: the committed results and state only
    _run(monkeypatch, module, *where, "--resume")
    assert not list((work / "resnet14").rglob("model.pt"))  # every ResNet net measured: nothing retrained
    assert (work / "resnet14/seed0/supernet.pt").read_bytes() == supernet
    res = json.loads((out / "results.json").read_text())
    assert not res["partial"] and {n["net"] for n in res["nets"]} == {b["net"] for b in res["budgets"]} == set(MODELS)
    for n in res["nets"]:
        assert {"net", "kind", "budget", "bits", "seed", "bitops", "test_top1", "arch"} <= set(n)
        assert 0 <= n["test_top1"] <= 1 and n["bitops"] > 0
    assert [b["name"] for b in res["budgets"]] == ["w2a2", "mid", "w2a2", "mid"]
    targets = {(t["net"], t["target"]): t for t in res["targets"]}
    assert ("at least one net", "searched - best uniform, every budget up to mid") in targets
    assert targets[("resnet14", "float test top-1")]["want"] == ">= 93.5 %"
    assert targets[("mobilenet_v2", "float test top-1")]["want"] == ">= 93.0 %"
    assert targets[("all nets", "whole benchmark wall time")]["met"] is True  # complete, well under 14 h
    md = (out / "results.md").read_text()
    assert "PARTIAL" not in md and "### resnet14" in md and "### mobilenet_v2" in md
    for net in MODELS:
        assert (out / net / "accuracy.png").stat().st_size > 0
        assert "## Against the uniform staircase" in (out / net / "results.md").read_text()
