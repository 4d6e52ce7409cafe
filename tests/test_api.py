"""The Python API: the stages as functions taking a dict (or Config), returning result objects."""

from __future__ import annotations

import importlib

import qspos
from qspos.stages.evaluate import EvalResult
from qspos.stages.export import ExportResult
from qspos.stages.finetune import FinetuneResult
from qspos.stages.run import RunResult
from qspos.stages.search import SearchResult
from qspos.stages.train import TrainResult
from tests.helpers import tiny_config


def test_stages_take_a_dict_and_return_result_objects(tmp_path):
    cfg = tiny_config(population=6, iterations=1, mutation_count=3, crossover_count=3)
    cfg["data"]["batch_size"] = 16
    cfg.update(train={"epochs": 1, "warmup_epochs": 0}, finetune={"max_steps": 2})
    run_dir = tmp_path / "run"

    trained = qspos.train_supernet(cfg, run_dir)
    assert isinstance(trained, TrainResult) and (run_dir / "config.yaml").is_file()
    found = qspos.search(cfg, run_dir)
    assert isinstance(found, SearchResult) and [b.name for b in found.budgets] == ["w3a3"]
    (net,) = qspos.finetune(cfg, run_dir)
    assert isinstance(net, FinetuneResult) and net.name == "w3a3" and net.arch == found.best("w3a3")
    evaluated = qspos.evaluate(cfg, net.dir / "model.pt")
    assert isinstance(evaluated, EvalResult) and evaluated.test_top1 == net.test_top1
    (exported,) = qspos.export(run_dir, ["packed"])
    assert isinstance(exported, ExportResult) and exported.packed_bytes > 0

    again = qspos.run(qspos.load_config(cfg), run_dir, resume=True)  # everything done: all skipped
    assert isinstance(again, RunResult) and again.train is None
    assert [r.to_dict() for r in again.finetune] == [net.to_dict()]
    assert again.report is not None and again.report.is_file()


def test_stage_names_on_the_package_are_functions_and_the_submodules_still_import():
    assert all(callable(getattr(qspos, n)) for n in ("train_supernet", "search", "finetune", "export", "run"))
    assert importlib.import_module("qspos.stages.search").SearchResult is SearchResult
