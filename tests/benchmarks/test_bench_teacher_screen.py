"""The float-teacher screen (``benchmarks/bench_teacher_screen.py``) at tiny size: both arms, both
fine-tunings, a rerun that skips every finished piece, and results that say what is partial."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from qspos.cli import main

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_teacher_screen as screen  # noqa: E402

TINY = {
    "name": "tiny", "seed": 0,
    "model": {"name": "resnet_small", "num_classes": 4, "in_channels": 1, "input_size": 8,
              "args": {"depth": 8, "widths": [4, 8, 8]}},
    "space": {"weight_bits": [2, 4], "act_bits": [2, 4], "width_multipliers": [0.5, 1.0]},
    "data": {"dataset": "synthetic", "synthetic_size": 64, "val_size": 16, "batch_size": 16, "eval_batch_size": 64},
    "float": {"max_steps": 2}, "train": {"max_steps": 2, "warmup_epochs": 0, "threshold_init_batches": 1},
    "search": {"calib_images": 16}, "finetune": {"max_steps": 1, "warmup_epochs": 0}, "log": {"interval_s": 1000},
}


def test_the_screen_runs_every_arm_once_and_reports_it(tmp_path, monkeypatch):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    assert main(["float", str(cfg), "--out", str(tmp_path / "teacher")]) == 0
    monkeypatch.setattr(screen, "RESULTS", tmp_path / "results")
    argv = ["bench_teacher_screen.py", str(cfg), "--teacher", str(tmp_path / "teacher" / "float" / "model.pt"),
            "--work", str(tmp_path / "work")]
    monkeypatch.setattr(sys, "argv", argv)
    screen.main()
    first = (tmp_path / "results" / "teacher_screen.md").read_text()
    assert "(partial)" not in first and first.count("| labels") == 4
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "work").rglob("result.json")}
    assert len(stamps) == 4
    screen.main()  # everything is finished: nothing is trained again
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    (tmp_path / "work" / "teacher" / "finetune" / "uniform-w2a2-kd" / "result.json").unlink()
    monkeypatch.setattr(sys, "argv", [*argv, "--report-only"])
    screen.main()
    assert "(partial)" in (tmp_path / "results" / "teacher_screen.md").read_text()
