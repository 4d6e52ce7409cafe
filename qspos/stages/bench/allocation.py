"""The benchmark's sensitivity nets: each budget's sensitivity allocation (``qspos sensitivity``)
on a seed's trained supernet, measured once and reused while it still answers the budgets, so a
resumed benchmark does not measure the supernet again."""

from __future__ import annotations

import json
from collections.abc import Sequence

from qspos.core.arch import Arch
from qspos.core.budget import Budget
from qspos.core.metrics import ArchMetrics
from qspos.core.sensitivity import Probes
from qspos.errors import QsposError
from qspos.runtime.rundir import RunDir
from qspos.stages.bench.plan import net_name
from qspos.stages.finetune import Target


def _allocations(run: RunDir) -> dict:
    return json.loads(run.sensitivity_json.read_text()).get("allocations", {})


def sensitivity_current(run: RunDir, metrics: ArchMetrics, budgets: Sequence[Budget], probes: Probes = "joint") -> bool:
    """Does the run's ``sensitivity.json`` answer ``budgets``: written after the supernet it measured
    (a retrained supernet makes it stale) with these ``probes``, one allocation per budget, each in
    the space and inside its budget as the cost model reads it now?"""
    path = run.sensitivity_json
    if not path.is_file() or path.stat().st_mtime_ns < run.supernet.stat().st_mtime_ns:
        return False
    table = json.loads(path.read_text())
    if table.get("probes", "joint") != probes:
        return False
    allocs = table.get("allocations", {})
    try:
        archs = {b.name: metrics.space.validate(Arch.from_dict(allocs[b.name]["arch"])) for b in budgets}
    except (KeyError, QsposError):
        return False
    return all(b.accepts(metrics(archs[b.name])) for b in budgets)


def allocation_targets(run: RunDir, budgets: Sequence[Budget]) -> list[Target]:
    """``sensitivity-<budget>`` for every budget: its allocation and its supernet score, as the
    run's ``sensitivity.json`` holds them."""
    allocs = _allocations(run)
    return [Target(net_name("sensitivity", b.name), Arch.from_dict(allocs[b.name]["arch"]), allocs[b.name]["val_top1"])
            for b in budgets]
