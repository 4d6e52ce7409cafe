"""The run directory: one place for every path, the config recorded atomically."""

from __future__ import annotations

import pytest

from qspos.errors import QsposError
from qspos.runtime.config import load_config
from qspos.runtime.rundir import RunDir


def test_paths_and_what_is_in_use(tmp_path, small_cfg):
    run = RunDir.of(small_cfg)
    assert run.path == small_cfg.run_dir and RunDir.of(small_cfg, tmp_path).path == tmp_path
    assert RunDir.of(small_cfg, run) is run
    assert run.in_use() == [] and run.finetuned() == []
    net = run.net("w2a2")
    assert (net.model.name, net.result.name, net.train_checkpoint.name) == ("model.pt", "result.json", "train.pt")
    assert not net.started and not net.done
    net.path.mkdir(parents=True)
    net.train_checkpoint.write_bytes(b"")
    assert net.started and not net.done and run.in_use() == ["finetune"]
    net.model.write_bytes(b"")
    net.result.write_text("{}")
    assert net.done and [n.name for n in run.finetuned()] == ["w2a2"]
    assert run.export_summary("w2a2") == run.path / "export" / "w2a2" / "summary.json"


def test_config_is_recorded_atomically_and_read_back(tmp_path, small_cfg):
    run = RunDir(tmp_path / "r")
    with pytest.raises(QsposError, match="not a run directory"):
        run.read_config()
    run.record_config(small_cfg)
    assert run.read_config() == small_cfg
    changed = load_config(small_cfg, ["train.lr=0.5"])
    run.record_config(changed)
    assert run.read_config() == changed
    assert sorted(p.name for p in run.path.iterdir()) == ["config.yaml"]  # no temp file left


def test_search_finished_needs_every_output(tmp_path):
    run = RunDir(tmp_path)
    run.search.mkdir()
    for name in ("state.pt", "results.json", "pareto.md"):
        assert not run.search_finished()
        (run.search / name).write_text("")
    assert not run.search_finished()
    run.pareto_png.write_bytes(b"")
    assert run.search_finished()
