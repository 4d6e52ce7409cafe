"""The wall-time ledger: a benchmark runs in pieces (invocations, maybe at once on different
cores). Its summed time is what the pieces took one after the other (one core's worth); its
elapsed time counts the hours when pieces ran at once (on the machine's cores) once."""

from __future__ import annotations

import json
import os
import time
from calendar import timegm
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from qspos.runtime.files import write_json
from qspos.stages.bench.plan import BenchDir


def read_ledger(work: str | Path) -> list[dict[str, Any]]:
    path = BenchDir(work).ledger
    return json.loads(path.read_text()) if path.is_file() else []


STARTED = "%Y-%m-%d %H:%M:%S UTC"


def elapsed_seconds(invocations: Iterable[dict[str, Any]]) -> float:
    """Wall-clock seconds during which at least one invocation ran (the union of their spans)."""
    spans = sorted((start := timegm(time.strptime(e["started"], STARTED)), start + e["wall_seconds"])
                   for e in invocations)
    total, covered = 0.0, float("-inf")
    for start, end in spans:
        total += max(0.0, end - max(start, covered))
        covered = max(covered, end)
    return total


class Ledger:
    """Records this invocation's wall time in the work directory's ledger, updated as it runs;
    invocations running at once (pieces on different cores) each keep their own entry."""

    def __init__(self, work: str | Path, command: str, commit: str | None, machine: str):
        self.work, self.path = work, BenchDir(work).ledger
        started = time.strftime(STARTED, time.gmtime())
        self.entry = {"id": f"{started} pid {os.getpid()}", "command": command, "commit": commit,
                      "machine": machine, "started": started, "wall_seconds": 0.0}
        self.t0 = time.perf_counter()

    def update(self) -> None:
        self.entry["wall_seconds"] = round(time.perf_counter() - self.t0, 1)
        others = [e for e in read_ledger(self.work) if e.get("id") != self.entry["id"]]
        write_json(self.path, [*others, self.entry])
