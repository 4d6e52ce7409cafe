"""The uniform staircase and each mixed-precision net's distance to it, worked out by hand."""

import pytest

from qspos.stages.bench.staircase import accuracy_at, against_staircase, bitops_for, staircase

M = 1_000_000


def _row(kind, top1, bitops, bits=None, budget=None):
    return {"kind": kind, "budget": budget, "bits": bits, "n": 3, "test_top1_mean": top1, "bitops_mean": bitops}


SUMMARY = [_row("float", 0.93, 0), _row("uniform", 0.80, 40 * M, [1, 2]), _row("uniform", 0.85, 80 * M, [2, 2]),
           _row("uniform", 0.84, 90 * M, [1, 4]), _row("uniform", 0.90, 180 * M, [3, 3]),
           _row("searched", 0.87, 100 * M, budget="mid"), _row("sensitivity", 0.82, 79 * M, budget="w2a2"),
           _row("searched", 0.95, 170 * M, budget="w3a3"), _row("random", 0.70, 30 * M, budget="low")]


def test_the_staircase_keeps_the_uniform_nets_no_cheaper_one_matches():
    steps = staircase(SUMMARY)
    assert [s["bits"] for s in steps] == [[1, 2], [2, 2], [3, 3]]  # W1A4 is dearer and worse than W2A2
    assert accuracy_at(steps, 100 * M) == 0.85 and accuracy_at(steps, 80 * M) == 0.85  # at the step counts
    assert accuracy_at(steps, 39 * M) is None
    assert bitops_for(steps, 0.86) == 180 * M and bitops_for(steps, 0.85) == 80 * M and bitops_for(steps, 0.91) is None


def test_each_net_gains_accuracy_at_equal_bitops_or_saves_bitops_at_equal_accuracy():
    nets = {(n["kind"], n["budget"]): n for n in against_staircase(SUMMARY)["nets"]}
    mid = nets[("searched", "mid")]  # 87 % at 100 M: the staircase has 85 % there, and 87 % only at 180 M
    assert mid["accuracy_gained"] == pytest.approx(0.02) and mid["bitops_saved"] == pytest.approx(1 - 100 / 180)
    low = nets[("sensitivity", "w2a2")]  # 82 % at 79 M: 80 % there; 85 % (W2A2, 80 M) is the first as accurate
    assert low["accuracy_gained"] == pytest.approx(0.02) and low["bitops_saved"] == pytest.approx(1 - 79 / 80)
    top = nets[("searched", "w3a3")]
    assert top["bitops_saved"] is None and top["accuracy_gained"] == pytest.approx(0.10)  # beyond every uniform net
    cheap = nets[("random", "low")]
    assert cheap["accuracy_gained"] is None and cheap["bitops_saved"] == pytest.approx(1 - 30 / 40)
    assert len(nets) == 4  # float and uniform rows are not measured against the staircase
