"""The results page reads each kind of number one way, and leaves out what was not asked for."""

from qspos.stages.bench.markdown import markdown

PROVENANCE = {"command": "qspos bench c.yaml", "commit": "abc", "machine": "m", "date": "today"}


def _results(targets: list) -> dict:
    row = {"kind": "uniform", "budget": None, "bits": [4, 4], "n": 1, "test_top1_mean": 0.9123, "test_top1_std": None,
           "bitops_mean": 12_345_678, "size_bits_mean": 81920, "per_seed": [{"seed": 0, "test_top1": 0.9123,
                                                                             "se": 0.0028}]}
    return {"partial": False, "missing": [], "plan": {"init": "supernet", "seeds": 1}, "summary": [row],
            "targets": targets, "ranking": {"n": 0, "kendall_tau": None}, "wall_seconds": 3600.0,
            "invocations": [{}]}


def test_the_accuracy_table_and_no_targets_section_without_targets():
    md = markdown(_results([]), PROVENANCE)
    assert "| uniform W4A4 | 12.3 | 10.0 | 1 | 91.23 | s0: 91.23 ± 0.28 |" in md
    assert "## Targets" not in md and "1.00 h over 1 invocation(s)" in md


def test_each_budget_reads_against_its_best_fitting_uniform_net_and_the_sensitivity_allocation():
    comparison = {"budget": "mid", "bitops_max": 100e6, "best_uniform": [2, 4],
                  "searched_minus_uniform": {"mean": 0.07 / 3, "std": 0.011547, "seeds": 3},
                  "searched_minus_sensitivity": {"mean": -0.005, "std": None, "seeds": 1},
                  "budget_use": {"searched": {"mean": 0.96, "min": 0.95, "max": 0.97, "seeds": 3},
                                 "sensitivity": None}}
    md = markdown({**_results([]), "comparisons": [comparison]}, PROVENANCE)
    assert "| mid | 100.0 | W2A4 | +2.33 ± 1.15 (3) | -0.50 (1) | 96.0 % (95.0–97.0) | - |" in md
    assert "## Per budget" not in markdown(_results([]), PROVENANCE)


def test_targets_read_in_points_hours_or_as_a_correlation():
    targets = [{"target": "float test top-1", "want": ">= 93.5 %", "value": 0.94, "met": True, "by": 0.005,
                "note": "1 seed(s)"},
               {"target": "whole benchmark wall time", "want": "<= 4 h", "value": 1.0, "met": None, "by": 3.0,
                "note": "so far; partial"},
               {"target": "Kendall tau", "want": ">= 0.5", "value": None, "met": None, "by": None, "note": "0 archs"}]
    md = markdown(_results(targets), PROVENANCE)
    assert "| float test top-1 | >= 93.5 % | 94.00 | met (1 seed(s)) | +0.50 |" in md
    assert "| 1.00 h | not yet measurable (so far; partial) | +3.00 h |" in md
    assert "| Kendall tau | >= 0.5 | - | not yet measurable (0 archs) | - |" in md


def test_the_staircase_section_says_when_no_uniform_net_is_measured_yet():
    net = {"kind": "searched", "budget": "mid", "bitops": 99e6, "test_top1": 0.9, "accuracy_gained": None,
           "bitops_saved": None}
    md = markdown({**_results([]), "staircase": {"steps": [], "nets": [net]}}, PROVENANCE)
    assert "at or below each BitOps count (no uniform net measured yet)." in md and "()" not in md
    assert "| searched @ mid | 99.0 | 90.00 | - | - |" in md


def test_an_arch_fine_tuned_twice_in_a_seed_is_reported_with_its_spread():
    repeat = {"seed": 0, "digest": "5110ff4ebb26", "nets": ["searched-w2a2", "rank-5110ff4ebb26"],
              "test_top1": [0.8976, 0.9022], "spread": 0.0046}
    md = markdown({**_results([]), "repeats": [repeat]}, PROVENANCE)
    assert "- s0 `5110ff4ebb26`: searched-w2a2 89.76 and rank-5110ff4ebb26 90.22: spread 0.46 points" in md
    assert "fine-tuned twice" not in markdown(_results([]), PROVENANCE)


def test_each_seeds_overall_ranking_is_one_line():
    overall = [{"seed": 0, "n": 27, "kendall_tau": 0.62, "spearman_rho": 0.783},
               {"seed": 1, "n": 1, "kendall_tau": None, "spearman_rho": None}]
    ranking = {"n": 0, "kendall_tau": None, "overall": overall}
    md = markdown({**_results([]), "ranking": ranking}, PROVENANCE)
    assert "whole BitOps range): s0: τ = 0.620, ρ = 0.783 (27 nets)." in md
