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

from tests.benchmarks.test_bench_accuracy import TINY as ACCURACY_TINY  # noqa: E402

# the accuracy benchmark's tiny config, with a float recipe and without the search
TINY = {**{k: v for k, v in ACCURACY_TINY.items() if k != "search"}, "float": {"max_steps": 2},
        "search": {"calib_images": 16}, "finetune": {"max_steps": 1, "warmup_epochs": 0}}


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


def test_the_in_place_arm_trains_with_the_sandwich_rule(tmp_path, monkeypatch):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    assert main(["float", str(cfg), "--out", str(tmp_path / "teacher")]) == 0
    monkeypatch.setattr(screen, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(sys, "argv", ["bench_teacher_screen.py", str(cfg), "--teacher",
                                      str(tmp_path / "teacher" / "float" / "model.pt"), "--work",
                                      str(tmp_path / "work"), "--arms", "inplace-eqtime", "--name", "inplace"])
    screen.main()
    text = (tmp_path / "results" / "inplace.md").read_text()
    assert "(partial)" not in text and text.count("| inplace-eqtime |") == 2
    recorded = yaml.safe_load((tmp_path / "work" / "inplace-eqtime" / "config.yaml").read_text())
    assert recorded["train"]["distill"] == "inplace" and recorded["train"]["init"] == "teacher"
