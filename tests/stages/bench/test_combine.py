"""Several nets' results read as one: nets and budgets listed together, a net not started leaves
the whole partial, and a target asked "on at least one net" is met when one net meets it."""

import pytest

from qspos.stages.bench.combine import ANY_NET, combine
from qspos.stages.bench.ledger import elapsed_seconds

EVERY = f"{ANY_NET} mid"


def _part(net, met, value, partial=False, hours=1.0, started="2026-12-07 10:00:00 UTC"):
    return {"plan": {"net": net}, "partial": partial, "missing": ["0/x"] if partial else [], "commit": "c",
            "summary": [], "comparisons": [], "staircase": None, "wall_seconds": 3600 * hours,
            "invocations": [{"started": started, "wall_seconds": 3600 * hours}],
            "nets": [{"net": net, "kind": "float"}], "budgets": [{"net": net, "name": "mid", "bitops_max": 1}],
            "targets": [{"target": EVERY, "want": ">= +1.0 points at each", "value": value, "met": met,
                         "by": None if value is None else value - 0.01, "note": "n"},
                        {"target": "float test top-1", "want": ">= 93.0 %", "value": 0.9, "met": False, "by": -0.03,
                         "note": "1 seed(s)"}]}


@pytest.mark.parametrize("mets, want", [((True, False), True), ((False, False), False), ((None, False), None),
                                        ((None, True), True)])
def test_a_target_on_at_least_one_net_is_met_when_one_net_meets_it(mets, want):
    res = combine([_part("a", mets[0], 0.02 if mets[0] else -0.01), _part("b", mets[1], 0.015 if mets[1] else 0.0)],
                  ["a", "b"])
    (row,) = [t for t in res["targets"] if t["net"] == "at least one net"]
    assert row["met"] is want and row["target"] == EVERY
    assert [t["net"] for t in res["targets"] if t["target"] == "float test top-1"] == ["a", "b"]  # judged per net


def test_the_combined_results_list_every_net_and_judge_the_whole_wall_time():
    res = combine([_part("a", None, None), _part("b", True, 0.02, hours=15.0)], ["a", "b", "c"], wall_hours=14.0)
    assert res["partial"] and res["not_started"] == ["c"]
    assert [n["net"] for n in res["nets"]] == ["a", "b"] and [b["net"] for b in res["budgets"]] == ["a", "b"]
    (wall,) = [t for t in res["targets"] if t["target"] == "whole benchmark wall time"]
    assert wall["met"] is False and wall["by"] == pytest.approx(-1.0)  # over the limit already, partial or not
    assert "16.00 h summed over pieces" in wall["note"]
    assert not combine([_part("a", True, 0.02)], ["a"], wall_hours=14.0)["partial"]


def test_pieces_that_ran_at_once_count_once_in_the_elapsed_wall_time():
    at_once = combine([_part("a", True, 0.02, hours=10.0), _part("b", True, 0.02, hours=6.0,
                                                                 started="2026-12-07 12:00:00 UTC")],
                      ["a", "b"], wall_hours=14.0)
    (wall,) = [t for t in at_once["targets"] if t["target"] == "whole benchmark wall time"]
    assert wall["value"] == pytest.approx(10.0) and wall["met"] and at_once["wall_seconds"] == 16 * 3600
    spans = [{"started": "2026-12-07 10:00:00 UTC", "wall_seconds": 60.0},
             {"started": "2026-12-07 10:00:30 UTC", "wall_seconds": 60.0},  # overlaps the first by 30 s
             {"started": "2026-12-07 10:00:40 UTC", "wall_seconds": 10.0},  # inside the second
             {"started": "2026-12-07 11:00:00 UTC", "wall_seconds": 5.0}]
    assert elapsed_seconds(spans) == 95.0 and elapsed_seconds(reversed(spans)) == 95.0 and elapsed_seconds([]) == 0
