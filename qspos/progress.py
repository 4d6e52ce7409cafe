"""Progress bars, tables and the metrics log shared by every long stage."""

from __future__ import annotations

import json
import sys
import time
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

console = Console(stderr=True)


def progress_bar(enabled: bool = True) -> Progress:
    """A rich progress bar with a free-text ``info`` field (loss, top-1, img/s ...)."""
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
        refresh_per_second=2 if sys.stderr.isatty() else 0.2,
    )


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` (stage, step, time and values)."""

    def __init__(self, path: str | Path | None, stage: str, enabled: bool = True):
        self.path = Path(path) if path is not None and enabled else None
        self.stage = stage

    def write(self, **values: Any) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        row = {"stage": self.stage, "time": round(time.time(), 3), **values}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    t = Table(title=title)
    for c in columns:
        t.add_column(c, justify="right" if c[:1].isalpha() and c not in ("name", "layer", "arch") else "left")
    for r in rows:
        t.add_row(*[_fmt(v) for v in r])
    return t


def percent(v: float | None) -> str | None:
    """An accuracy fraction as a table cell: ``0.9123`` -> ``91.23%`` (None stays empty)."""
    return None if v is None else f"{100 * v:.2f}%"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)
