"""The fold screen (``benchmarks/bench_fold_screen.py``) at tiny size: a seed's net, fine-tuned with
BatchNorm and exported, is fine-tuned again folded from the start, exported, paired with it, and a
rerun trains nothing again."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from qspos.runtime.checkpoint import load_checkpoint
from qspos.runtime.config import load_config
from qspos.stages.export import export
from tests.benchmarks.seed_run import tiny_seed_run

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_fold_screen as screen  # noqa: E402


def test_the_fold_screen_pairs_each_net_with_its_seed_twin(tmp_path, monkeypatch):
    seed, _, arch, _ = tiny_seed_run(tmp_path)
    after = tmp_path / "after"
    export(seed, ["onnx-qcdq"])
    after.mkdir()
    shutil.copy(seed / "export" / "uniform-w2a2" / "summary.json", after / "uniform-w2a2.json")
    monkeypatch.setattr(screen, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(sys, "argv", ["bench_fold_screen.py", str(seed), "--after", str(after), "--nets",
                                      "uniform-w2a2", "--work", str(tmp_path / "work"), "--set", "finetune.lr=0.01"])
    screen.main()
    result = json.loads((tmp_path / "results" / "fold_bn.json").read_text())
    (row,) = result["nets"]
    folded = tmp_path / "work" / "finetune" / "uniform-w2a2" / "model.pt"
    assert "deployment_outputs" in load_checkpoint(folded)  # trained folded, with the screen's --set
    assert load_config(tmp_path / "work" / "config.yaml").finetune.lr == 0.01
    assert row["arch"] == arch.digest() and row["start_qcdq"] == row["start_torch"]  # the file is the net
    assert result["qcdq_start_minus_after"]["n"] == 1
    stamp = folded.stat().st_mtime_ns
    screen.main()
    assert folded.stat().st_mtime_ns == stamp
