from qspos.runtime.numbers import kib, millions, percent, points, signed_points


def test_each_kind_of_number_reads_one_way():
    assert points(0.91234) == "91.23" and points(0.91234, 1) == "91.2" and points(None) == "-"
    assert points(0.9, se=0.0028) == "90.00 ± 0.28"
    assert signed_points(0.0123) == "+1.23" and signed_points(-0.5) == "-50.00" and signed_points(None) == "-"
    assert percent(0.9123) == "91.23%" and percent(None) is None
    assert millions(12_345_678) == "12.35" and millions(12_345_678, 1) == "12.3" and millions(None) == "-"
    assert kib(81920) == "10.0" and kib(None) == "-"
