"""A benchmark's targets come from its targets file and are judged against the finished nets."""

from pathlib import Path

import pytest

from qspos.errors import QsposError
from qspos.stages.bench.records import NetRecord
from qspos.stages.bench.targets import Targets, judge

TARGETS = Path(__file__).resolve().parents[3] / "benchmarks" / "configs" / "accuracy_targets.yaml"


def _net(kind: str, bits: tuple[int, int] | None, top1: float) -> NetRecord:
    return NetRecord(kind, None, bits, 0, "supernet", kind, 1, 1, top1, 100, 0.01, None, None, 1, 1.0, None)


def test_the_targets_file_holds_every_target_and_nothing_else(tmp_path):
    t = Targets.load(TARGETS)
    assert (t.float_top1, t.w4a4_gap, t.kendall_tau, t.seeds) == (0.935, 0.010, 0.5, 3)
    partial = tmp_path / "targets.yaml"
    partial.write_text("float_top1: 0.9\n")
    with pytest.raises(QsposError, match="give exactly the targets"):
        Targets.load(partial)
    with pytest.raises(QsposError, match="not found"):
        Targets.load(tmp_path / "missing.yaml")


def test_each_target_is_met_missed_or_not_yet_measurable():
    nets = [_net("float", None, 0.95), _net("uniform", (4, 4), 0.93)]
    out = {t["target"]: t for t in judge(nets, {"kendall_tau": None, "n": 0}, [], 3600.0, False, 16,
                                         Targets.load(TARGETS))}
    assert out["float test top-1"]["met"] is True and out["float test top-1"]["by"] == pytest.approx(0.015)
    gap = out["uniform W4A4 below float"]
    assert gap["met"] is False and gap["by"] == pytest.approx(-0.01)  # 2 points below float, 1 allowed
    assert out["Kendall tau (supernet val vs fine-tuned test)"]["met"] is None
    assert out["whole benchmark wall time"]["met"] is None  # 1 h so far of a partial benchmark
