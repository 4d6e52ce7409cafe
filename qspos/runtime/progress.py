"""Progress, tables and the metrics log shared by every long stage.

In a terminal, long work shows a rich progress bar. Elsewhere (CI, ``nohup``, a cluster job's log
file) it prints a plain progress line every ``interval_s`` seconds and when a task ends, and
tables are printed at full width instead of being cut at 80 columns.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from qspos.runtime.numbers import percent, points

_WIDE = 400  # columns of a console that is not a terminal: wide enough for any of our tables


# (the streams are looked up at each print, so redirecting sys.stdout/stderr later still works)
console = Console(stderr=True, width=None if sys.stderr.isatty() else _WIDE)  # progress and notes
stdout = Console(width=None if sys.stdout.isatty() else _WIDE)  # results: the tables a command prints


def progress_bar(enabled: bool = True, interval_s: float = 30.0) -> Progress | PlainProgress:
    """A progress display with a free-text ``info`` field (loss, top-1, img/s ...): a rich bar
    in a terminal, plain lines every ``interval_s`` seconds elsewhere."""
    if enabled and not console.is_terminal:
        return PlainProgress(interval_s)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
        transient=False,
        refresh_per_second=2,
    )


@dataclass
class _Task:
    description: str
    total: float
    completed: float
    info: str
    start_completed: float
    t0: float
    printed: float  # when the last line of this task was printed
    printed_at: float  # ... and how far it was then
    finished: bool = False


class PlainProgress:
    """The part of rich's ``Progress`` API the stages use, printing one line per update that is
    ``interval_s`` after the last, and one when a task completes."""

    def __init__(self, interval_s: float = 30.0):
        self.interval_s = interval_s
        self.tasks: list[_Task] = []

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        for task in self.tasks:  # where an unfinished task stopped, unless that was just printed
            if not task.finished and task.completed != task.printed_at:
                self._print(task)

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields: Any) -> int:
        now = time.monotonic()
        self.tasks.append(_Task(description, total or 0, completed, str(fields.get("info", "")), completed, now, now,
                                completed))
        return len(self.tasks) - 1

    def update(self, task_id: int, *, advance: float = 0, completed: float | None = None,
               total: float | None = None, info: str | None = None, **_: Any) -> None:
        task = self.tasks[task_id]
        if total is not None:
            task.total = total
        if completed is not None:
            task.completed = completed
        task.completed += advance
        if info is not None:
            task.info = info
        if task.finished:
            return
        if task.total and task.completed >= task.total:
            task.finished = True
            self._print(task)
        elif time.monotonic() - task.printed >= self.interval_s:
            self._print(task)

    def _print(self, task: _Task) -> None:
        now = time.monotonic()
        task.printed, task.printed_at = now, task.completed
        elapsed = now - task.t0
        done = task.completed - task.start_completed
        eta = ""
        if task.total and 0 < done and task.completed < task.total:
            eta = f"  eta {_clock(elapsed / done * (task.total - task.completed))}"
        pct = f" ({100 * task.completed / task.total:.0f}%)" if task.total else ""
        info = f"  {task.info}" if task.info else ""
        console.print(f"{task.description}: {task.completed:g}/{task.total:g}{pct}{info}  "
                      f"elapsed {_clock(elapsed)}{eta}", highlight=False, markup=False)


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class MetricsLog:
    """Appends one strict-JSON object per line to ``metrics.jsonl`` (stage, attempt, time, values).

    The first write of a log marks a new attempt of its stage (``{"event": "start", "attempt":
    N}``), and every row carries its attempt, so the rows of a restarted or resumed stage are
    never mistaken for those of the first try. Non-finite numbers are written as null. With
    ``tensorboard`` (a folder), the numeric values also go to TensorBoard, tagged
    ``stage/key`` and stepped by ``step``.
    """

    def __init__(self, path: str | Path | None, stage: str, enabled: bool = True,
                 tensorboard: str | Path | None = None):
        self.path = Path(path) if path is not None and enabled else None
        self.stage = stage
        self.attempt: int | None = None
        self._tb_dir = Path(tensorboard) if tensorboard is not None and enabled else None
        self._tb: Any = None

    def write(self, **values: Any) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.attempt is None:
            self.attempt = 1 + sum(1 for row in read_metrics(self.path)
                                   if row.get("stage") == self.stage and row.get("event") == "start")
            self._append({"stage": self.stage, "event": "start", "attempt": self.attempt,
                          "time": round(time.time(), 3)})
        self._append({"stage": self.stage, "attempt": self.attempt, "time": round(time.time(), 3), **values})
        if self._tb_dir is not None:
            self._tensorboard(values)

    def _append(self, row: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(_finite(row), allow_nan=False) + "\n")

    def _tensorboard(self, values: dict[str, Any]) -> None:
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter  # the 'tensorboard' extra

            self._tb = SummaryWriter(str(self._tb_dir))
        step = values.get("step")
        prefix = "/".join(str(values[k]) for k in ("budget", "phase") if k in values)
        for key, v in values.items():
            if key != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                self._tb.add_scalar(f"{self.stage}/{prefix + '/' if prefix else ''}{key}", v, step)
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` (empty when there is none)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    t = Table(title=title)
    for c in columns:
        t.add_column(c, justify="right" if c[:1].isalpha() and c not in ("name", "layer", "arch") else "left")
    for r in rows:
        t.add_row(*[_fmt(v) for v in r])
    return t


TOP1 = "top-1"  # the default score: top-1 accuracy


@dataclass(frozen=True)
class ScoreFormat:
    """How the score of a run (``Config.score``) reads in tables, progress lines and plots.

    Top-1 is a fraction, shown in % (with a binomial standard error where the images are known).
    A caller's score is shown as it is under its own name: it may be PSNR in dB or a negative
    loss, which no percentage or binomial error describes.
    """

    name: str = TOP1

    @property
    def accuracy(self) -> bool:
        return self.name == TOP1

    @property
    def unit(self) -> str:
        return " (%)" if self.accuracy else ""

    def scaled(self, v: float) -> float:
        """``v`` as tables and plots show it: in % for top-1, as it is otherwise."""
        return 100 * v if self.accuracy else v

    def number(self, v: float) -> str:
        """``v`` under a header that gives the unit: ``91.23`` (top-1 in %), ``15.37``."""
        return points(v) if self.accuracy else f"{v:.4g}"

    def text(self, v: float | None) -> str | None:
        """A table cell (None stays empty): ``91.23%``, or ``15.37`` for a caller's score."""
        if v is None:
            return None
        return percent(v) if self.accuracy else self.number(v)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)
