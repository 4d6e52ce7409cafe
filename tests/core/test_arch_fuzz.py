"""Property-based fuzz of arch parsing and checking: any mapping or text gives an Arch or one
clear QsposError line, and an Arch the space accepts can always be costed."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qspos.core.arch import Arch
from qspos.core.cost import CostModel
from qspos.errors import QsposError
from qspos.runtime.build import build_supernet

FUZZ = settings(max_examples=int(os.environ.get("QSPOS_FUZZ_EXAMPLES", "200")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
NAMES = ["layer1.0", "layer2.0", "layer3.0"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-40, 40), st.floats(), st.text(max_size=6))
CHOICE = st.dictionaries(st.sampled_from(["w_bits", "a_bits", "width", "depth"]), SCALARS, max_size=4)
ARCH = st.dictionaries(st.sampled_from(NAMES + ["layer4.0", ""]), CHOICE | SCALARS, max_size=4)


@pytest.fixture(scope="module")
def costs(request):
    from qspos.runtime.config import load_config
    from tests.conftest import SMALL_CONFIG

    return CostModel(build_supernet(load_config(SMALL_CONFIG)), (1, 16, 16))


def _one_line(e: QsposError) -> None:
    assert str(e) and "\n" not in str(e)


@FUZZ
@given(ARCH)
def test_any_mapping_is_an_arch_or_one_line_and_a_valid_one_costs(costs, data):
    try:
        arch = Arch.from_dict(data)
        costs.space.validate(arch, domain=False)
    except QsposError as e:
        _one_line(e)
        return
    cost = costs.cost(arch)  # whatever passed the checks has a cost
    assert cost.bitops == sum(lc.bitops for lc in cost.layers) and cost.macs > 0


@FUZZ
@given(st.text(max_size=120))
def test_any_text_is_an_arch_or_one_line(text):
    try:
        Arch.from_text(text, "fuzz")
    except QsposError as e:
        _one_line(e)
