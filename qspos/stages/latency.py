"""``qspos latency CONFIG OUT.json``: measure the per-layer latency table of a config's space on
this machine, for ``latency_ms`` budgets (see :mod:`qspos.core.latency` for what is timed)."""

from __future__ import annotations

import json
from pathlib import Path

from qspos.core.latency import FloatOpTimer, LatencyTable, measure_latency_table
from qspos.errors import QsposError
from qspos.formats.layer_latency import QcdqLayerTimer
from qspos.runtime.build import build_supernet
from qspos.runtime.config import Config
from qspos.runtime.files import read_text, write_text


def load_latency_table(path: str | Path) -> LatencyTable:
    """A table written by :func:`measure_latency`, or a one-line error naming the file."""
    text = read_text(path, "latency table")
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    return LatencyTable.from_dict(data if isinstance(data, dict) else {}, f"latency table {path}")


def save_latency_table(table: LatencyTable, path: str | Path) -> None:
    write_text(path, json.dumps(table.to_dict(), indent=1))


ENGINES = ("torch", "onnxruntime")


def measure_latency(cfg: Config, out: str | Path, reps: int = 5, batch_size: int = 1,
                    engine: str = "torch") -> LatencyTable:
    """Time every layer setting of ``cfg``'s space here and write the table to ``out``: as float
    torch ops (``torch``), or as the export's QCDQ layers in onnxruntime's optimised session, one
    thread (``onnxruntime``: what the deployed file costs)."""
    if engine not in ENGINES:
        raise QsposError(f"latency: engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    timer = FloatOpTimer(reps) if engine == "torch" else QcdqLayerTimer(reps)
    table = measure_latency_table(build_supernet(cfg), cfg.input_shape, reps=reps, batch_size=batch_size, timer=timer)
    save_latency_table(table, out)
    return table
