"""The run directory: one place for every path, the config recorded atomically, what defines a
run's data, and one command at a time (an OS lock)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import socket
import subprocess
import sys

import pytest

from qspos.cli import main
from qspos.errors import QsposError
from qspos.runtime.config import DataConfig, load_config
from qspos.runtime.rundir import IMPLIED, LOCK, RunDir, data_identity, fingerprint, hold

# holds the run directory argv[1] until killed
HOLDER = "import sys, time\nfrom qspos.runtime.rundir import hold\nwith hold(sys.argv[1]):\n" \
         "    print('held', flush=True)\n    time.sleep(600)\n"


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


def test_every_data_setting_defines_a_run_but_those_that_change_no_result(small_cfg):
    """One list for every stage's resume: a data setting is in unless declared to change nothing."""
    base = data_identity(small_cfg)
    assert set(base) == {f"data.{f.name}" for f in dataclasses.fields(DataConfig)} - {"data.workers", "data.download"}
    for change in ("data.mean=[0.5]", "data.std=[0.5]", "data.root=elsewhere"):
        assert data_identity(load_config(small_cfg, [change])) != base, change
    same = load_config(small_cfg, ["data.workers=2", "data.download=true"])
    assert fingerprint(same, "model", "data") == fingerprint(small_cfg, "model", "data")


@pytest.mark.parametrize("section, key, other", [("search", "sensitivity_probes", "factored"),
                                                  ("finetune", "fold_bn", "start"), ("space", "batchnorm", "per_bits")])
def test_a_setting_added_later_at_its_implied_value_leaves_saved_fingerprints_alone(small_cfg, section, key, other):
    """A run saved before e.g. ``search.sensitivity_probes`` existed measured joint probes: at that
    value the digest is the one computed without the key; another value makes another run."""
    d = {**small_cfg.to_dict(), "data": data_identity(small_cfg)}
    assert d[section].pop(key) == IMPLIED[section, key]
    before = hashlib.sha1(json.dumps({section: d[section]}, sort_keys=True).encode()).hexdigest()[:12]
    assert fingerprint(small_cfg, section) == before
    assert fingerprint(load_config(small_cfg, [f"{section}.{key}={other}"]), section) != before


def _holder(path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.stdout.readline() == "held\n"
    return proc


def test_a_second_command_is_refused_naming_the_holder_until_a_sigkill_frees_it(tmp_path, small_cfg, capsys,
                                                                                monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    config = run / "config.yaml"  # a run directory: export reads it before anything else
    config.write_text(small_cfg.to_yaml())
    holder = _holder(run)
    try:
        who = f"PID {holder.pid} on host {socket.gethostname()}"
        with pytest.raises(QsposError, match=re.escape(who)), hold(run):
            pass
        for command in ("train", "search", "finetune", "float", "run"):
            assert main([command, str(config), "--out", str(run)]) == 2, command
            err = capsys.readouterr().err
            assert err.startswith("qspos: error: ") and err.count("\n") == 1 and who in err, err
        assert main(["export", str(run)]) == 2 and who in capsys.readouterr().err
        monkeypatch.setenv("RANK", "1")  # another rank of a torchrun job: its rank 0 holds the directory
        with hold(run):
            pass
        monkeypatch.delenv("RANK")
    finally:
        holder.kill()
        holder.wait()
    with hold(run):  # the OS dropped the killed holder's lock; its lock file is taken over
        assert (run / LOCK).read_text() == f"PID {os.getpid()} on host {socket.gethostname()}\n"
    assert list(run.iterdir()) == [config]


def test_hold_is_reentrant_and_a_refused_command_leaves_no_trace(tmp_path):
    run = tmp_path / "new" / "run"
    with hold(run), RunDir(run).hold():  # qspos run holds it across its stages
        assert (run / LOCK).is_file()
    assert not run.exists()  # created by the lock and nothing written: gone
    mine = tmp_path / "mine"
    mine.mkdir()
    with hold(mine):
        (mine / "config.yaml").write_text("")
    assert [p.name for p in mine.iterdir()] == ["config.yaml"]


def test_claiming_a_run_directory_removes_the_temp_files_of_killed_writes(tmp_path):
    run = tmp_path / "run"
    stale = [run / ".supernet.pt.k3j2x_1a.tmp", run / "search" / ".state.pt.a1b2c3d4.tmp",
             run / "finetune" / "w2a2" / ".train.pt.zz9y8x7w.tmp"]
    nested = run / "variants" / "w8a8"  # a benchmark's run directory inside another: its holder cleans it
    kept = [run / "supernet.pt", run / ".hidden", run / "notes.tmp", nested / LOCK, nested / ".model.pt.q1w2e3r4.tmp"]
    for p in stale + kept:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half a file")
    with hold(run):
        assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
