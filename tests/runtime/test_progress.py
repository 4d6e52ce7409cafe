"""Logs that work outside a terminal: plain progress lines, full-width tables, strict metrics."""

from __future__ import annotations

import json

import pytest

from qspos.runtime import progress
from qspos.runtime.progress import MetricsLog, PlainProgress, progress_bar, read_metrics, table


def test_outside_a_terminal_progress_is_plain_lines_at_an_interval(capsys):
    assert isinstance(progress_bar(), PlainProgress)  # pytest's captured stderr is no terminal
    with PlainProgress(interval_s=3600) as bar:
        task = bar.add_task("supernet", total=10, info="")
        for _ in range(9):
            bar.update(task, advance=1, info="loss 1.0")
        assert capsys.readouterr().err == ""  # within the interval: nothing yet
        bar.update(task, advance=1, info="loss 0.5")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("supernet: 10/10 (100%)  loss 0.5  elapsed ")

    with PlainProgress(interval_s=0) as bar:
        task = bar.add_task("search", total=4, completed=1, info="")
        bar.update(task, completed=2, info="best 50%")
        bar.update(task, advance=1)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split("  ")[0] for line in lines] == ["search: 2/4 (50%)", "search: 3/4 (75%)"]
    assert "best 50%" in lines[0] and "eta " in lines[0]


def test_an_interrupted_task_prints_where_it_stopped(capsys):
    with PlainProgress(interval_s=3600) as bar:
        task = bar.add_task("finetune w2a2", total=100)
        bar.update(task, advance=7)
    assert capsys.readouterr().err.startswith("finetune w2a2: 7/100 (7%)")


def test_tables_are_not_cut_at_80_columns(capsys):
    cell = "x" * 150
    progress.stdout.print(table("wide", ["name", "value"], [["a", cell]]))
    assert cell in capsys.readouterr().out


def test_metrics_are_strict_json_and_attempts_are_marked(tmp_path):
    path = tmp_path / "metrics.jsonl"
    first = MetricsLog(path, "train")
    first.write(step=1, loss=float("nan"), top1=float("inf"), nested={"a": [float("-inf"), 1.0]})
    MetricsLog(path, "search").write(step=1, best=0.5)
    again = MetricsLog(path, "train")  # a restarted or resumed train stage
    again.write(step=1, loss=2.0)
    again.write(step=2, loss=1.5)

    def strict(text: str) -> None:
        raise ValueError(f"non-standard JSON constant {text}")

    rows = [json.loads(line, parse_constant=strict) for line in path.read_text().splitlines()]
    assert rows == read_metrics(path)
    assert rows[1]["loss"] is None and rows[1]["top1"] is None and rows[1]["nested"] == {"a": [None, 1.0]}
    starts = [(r["stage"], r["attempt"]) for r in rows if r.get("event") == "start"]
    assert starts == [("train", 1), ("search", 1), ("train", 2)]
    assert [(r["attempt"], r["step"]) for r in rows if r["stage"] == "train" and "event" not in r] == \
        [(1, 1), (2, 1), (2, 2)]


def test_a_disabled_log_writes_nothing(tmp_path):
    MetricsLog(tmp_path / "m.jsonl", "train", enabled=False).write(step=1)
    assert not (tmp_path / "m.jsonl").exists()


def test_tensorboard_gets_the_same_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = MetricsLog(tmp_path / "metrics.jsonl", "search", tensorboard=tmp_path / "tb")
    log.write(step=1, budget="w2a2", phase="evolution", best_val_top1=0.5)
    log.write(step=2, budget="w2a2", phase="evolution", best_val_top1=0.625)
    log.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    scalars = events.Scalars("search/w2a2/evolution/best_val_top1")
    assert [(s.step, s.value) for s in scalars] == [(1, 0.5), (2, 0.625)]


def test_only_top1_is_shown_as_a_percentage():
    """A caller's PSNR of 15.37 dB once read "1536.95 %"."""
    top1, psnr = progress.ScoreFormat(), progress.ScoreFormat("psnr")
    assert top1.accuracy and top1.text(0.9123) == "91.23%" and top1.number(0.9123) == "91.23"
    assert top1.scaled(0.5) == 50 and top1.unit == " (%)"
    assert not psnr.accuracy and psnr.text(15.3695) == "15.37" and psnr.scaled(15.37) == 15.37 and psnr.unit == ""
    assert psnr.text(None) is None
