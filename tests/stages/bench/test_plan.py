"""What a plan makes per budget, and the budgets it names."""

import pytest

from qspos.errors import QsposError
from qspos.stages.bench.analysis import expected
from qspos.stages.bench.plan import Plan
from tests.stages.bench.test_comparison import BUDGETS


def test_random_search_nets_only_at_the_budgets_the_plan_names():
    plan = Plan(seeds=1, parts=("searched", "random", "sensitivity"), random_budgets=("mid",))
    assert plan.kinds("mid") == ["searched", "random", "sensitivity"]
    assert plan.kinds("low") == ["searched", "sensitivity"]
    assert Plan(parts=("float", "searched")).kinds("low") == ["searched"]
    want = {f"0/{k}-{b}" for b in ("low", "mid", "tiny", "small") for k in ("searched", "sensitivity")}
    want |= {"0/random-mid"}
    assert set(expected(plan, BUDGETS)) == want  # no float, uniform or ranking nets in this plan


def test_a_plan_naming_a_budget_the_config_lacks_is_refused():
    Plan(random_budgets=("mid",), rank_band="low").check_budgets(BUDGETS)
    for plan, name in [(Plan(random_budgets=("mid", "w9a9")), "w9a9"), (Plan(rank_band="huge"), "huge")]:
        with pytest.raises(QsposError, match=f"no budget named '{name}' \\(budgets: low, mid, tiny, small\\)"):
            plan.check_budgets(BUDGETS)
