import json
import re

import pytest

from qspos.cli import main
from qspos.core.arch import Arch
from qspos.runtime.build import build_supernet
from qspos.runtime.checkpoint import load_checkpoint
from qspos.runtime.config import load_config
from qspos.runtime.rundir import RunDir
from qspos.stages.bench.allocation import sensitivity_current
from qspos.stages.budgets import search_budgets
from qspos.stages.search import search
from tests.helpers import make_run

BUDGETS = [{"name": "w2a2", "bitops": "uniform 2,2"}, {"name": "w4a4", "bitops": "uniform 4,4"}]


def test_the_sensitivity_command_writes_its_table_and_allocations(tmp_path, perturb, capsys):
    cfg, run_dir = make_run(tmp_path, perturb, budgets=BUDGETS)
    path = tmp_path / "cfg.yaml"
    path.write_text(cfg.to_yaml())
    assert main(["sensitivity", str(path), "--out", str(run_dir)]) == 0
    data = json.loads((run_dir / "search" / "sensitivity.json").read_text())
    assert set(data["allocations"]) == {"w2a2", "w4a4"}
    for drops in data["drops"].values():
        assert len(drops) == 8 and any(d["drop"] == 0.0 for d in drops)  # the top choice loses nothing
    assert (run_dir / "search" / "sensitivity.md").read_text().count("| layer") == 3
    assert (run_dir / "search" / "sensitivity.png").stat().st_size > 0
    assert "drop, one choice point lowered" in capsys.readouterr().out


def test_factored_probes_measure_one_factor_at_a_time(tmp_path, perturb, capsys):
    cfg, run_dir = make_run(tmp_path, perturb, ["search.sensitivity_probes=factored"], budgets=BUDGETS)
    path = tmp_path / "cfg.yaml"
    path.write_text(cfg.to_yaml())
    assert main(["sensitivity", str(path), "--out", str(run_dir)]) == 0
    data = json.loads((run_dir / "search" / "sensitivity.json").read_text())
    assert data["probes"] == "factored" and set(data["allocations"]) == {"w2a2", "w4a4"}
    assert all(len(drops) == 4 for drops in data["drops"].values())  # the top choice and 3 factors lowered
    md = (run_dir / "search" / "sensitivity.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| choice point |"))
    assert "factored probes" in md and header.count("|") == 2 + 4  # only the measured choices: top and 3 lowered
    # progress while it measures: 1 + 3 x 3 probes and 2 allocations (fewer where one is a probe)
    assert re.search(r"sensitivity: 1[12]/12 .*factored probes", capsys.readouterr().err)
    metrics, budgets = search_budgets(cfg, build_supernet(cfg))
    run = RunDir(run_dir)
    assert sensitivity_current(run, metrics, budgets, "factored") and not sensitivity_current(run, metrics, budgets)


@pytest.mark.parametrize("method", ["sensitivity", "random"])
def test_the_search_method_picks_each_budgets_arch(tmp_path, perturb, method):
    cfg, run_dir = make_run(tmp_path, perturb, [f"search.method={method}", "search.fill=false"], budgets=BUDGETS)
    result = search(cfg, run_dir)
    assert result.method == method
    state = load_checkpoint(run_dir / "search" / "state.pt")
    for b in result.budgets:
        bs = state["budgets"][b.name]
        assert bs["evaluated"] == []  # no evolution ran
        pool = bs["sensitivity"] if method == "sensitivity" else bs["random"]
        assert b.best[0].digest in pool
    if method == "sensitivity":
        data = json.loads((run_dir / "search" / "sensitivity.json").read_text())
        assert {b.name: b.best[0].digest for b in result.budgets} == {
            name: a["digest"] for name, a in data["allocations"].items()}


def test_the_allocation_seeds_the_evolutions_first_generation(tmp_path, perturb):
    cfg, run_dir = make_run(tmp_path, perturb, ["search.sensitivity_seed=true"], budgets=BUDGETS)
    search(cfg, run_dir)
    state = load_checkpoint(run_dir / "search" / "state.pt")
    data = json.loads((run_dir / "search" / "sensitivity.json").read_text())
    for name, alloc in data["allocations"].items():
        first = state["budgets"][name]["evaluated"][: cfg.search.population]
        assert alloc["digest"] in first
        assert Arch.from_dict(alloc["arch"]).digest() == alloc["digest"]
    assert load_config(cfg).search.method == "evolution"
