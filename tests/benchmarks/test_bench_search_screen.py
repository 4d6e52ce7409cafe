"""The search-lever screen (``benchmarks/bench_search_screen.py``) at tiny size: every arm searches a
copy of one supernet and fine-tunes its pick, a rerun trains nothing again, and a missing net makes
the results partial."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from qspos.cli import main

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_search_screen as screen  # noqa: E402

from tests.benchmarks.test_bench_accuracy import TINY  # noqa: E402


def test_the_search_screen_runs_every_arm_once_and_reports_it(tmp_path, monkeypatch):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    assert main(["train", str(cfg), "--out", str(tmp_path / "trained")]) == 0
    monkeypatch.setattr(screen, "RESULTS", tmp_path / "results")
    argv = ["bench_search_screen.py", str(cfg), "--supernet", str(tmp_path / "trained" / "supernet.pt"),
            "--budget", "w2a2", "--work", str(tmp_path / "work")]
    monkeypatch.setattr(sys, "argv", argv)
    screen.main()
    text = (tmp_path / "results" / "search_screen.md").read_text()
    default, more = list(screen.ARMS)[:3], list(screen.ARMS)[3:]  # --arms: the first three by default
    assert "(partial)" not in text and all(arm in text for arm in default) and not any(arm in text for arm in more)
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "work").rglob("result.json")}
    assert len(stamps) == len(default)
    screen.main()
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    next(iter(stamps)).unlink()
    monkeypatch.setattr(sys, "argv", [*argv, "--report-only"])
    screen.main()
    assert "(partial)" in (tmp_path / "results" / "search_screen.md").read_text()
