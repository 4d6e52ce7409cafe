"""The fault suite: a stage killed (SIGKILL) and resumed ends with every tensor and every result
file of an uninterrupted run; SIGINT and SIGTERM stop cleanly and keep what was saved; a full
disk is one line and keeps the previous checkpoint."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from qspos.cli import main
from tests.helpers import tiny_config

ROOT = Path(__file__).resolve().parents[1]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # as conftest.py does in-process
VOLATILE = {"dir", "train_seconds", "checkpoint", "time"}  # where a run is and how long it took


def _config(tmp_path: Path) -> Path:
    """Tiny, but with enough steps and generations (and checkpoints) to be killed in the middle."""
    cfg = tiny_config(population=6, iterations=4, mutation_count=3, crossover_count=3)
    cfg["data"].update(synthetic_size=320, batch_size=16)
    cfg.update(train={"epochs": 3, "warmup_epochs": 0, "lr": 0.05, "checkpoint_every": 2},
               finetune={"max_steps": 30, "checkpoint_every": 2}, export={"formats": ["packed"]})
    path = tmp_path / "faults.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    """(config, run directory) of one uninterrupted ``qspos run``."""
    folder = tmp_path_factory.mktemp("reference")
    cfg, out = _config(folder), folder / "run"
    assert main(["run", str(cfg), "--out", str(out)]) == 0
    return cfg, out


def _default_sigint() -> None:
    """A job started in the background (``cmd &``) inherits SIGINT ignored, and Python then keeps
    it ignored; the child gets the default so that the tests do not depend on how pytest runs."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "qspos", *args], cwd=ROOT, env=ONE_THREAD, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=_default_sigint)


def _when(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    """Wait until ``ready()``; fail if the process ends first (it must be stopped mid-work)."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"finished before it could be stopped:\n{proc.communicate()[0][-3000:]}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def _kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> tuple[int, str]:
    proc.send_signal(sig)
    out = proc.communicate(timeout=60)[0]
    return proc.returncode, out


def _same(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        keys = set(a) - VOLATILE
        assert keys == set(b) - VOLATILE, where
        for k in keys:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _same_run(ref: Path, other: Path, only: tuple[str, ...] = ()) -> list[str]:
    """Every file of ``ref`` (below ``only`` when given) equals the one in ``other``: tensors
    exactly, JSON apart from paths and times; returns the files compared."""
    compared = []
    for path in sorted(p for p in ref.rglob("*") if p.is_file()):
        rel = str(path.relative_to(ref))
        if rel == "metrics.jsonl" or (only and not rel.startswith(only)):
            continue
        mine = other / rel
        assert mine.is_file(), f"{rel} is missing after the resume"
        if path.suffix == ".pt":
            _same(torch.load(path, weights_only=True), torch.load(mine, weights_only=True), rel)
        elif path.suffix == ".json":
            _same(json.loads(path.read_text()), json.loads(mine.read_text()), rel)
        elif path.suffix in (".md", ".yaml"):
            assert path.read_text().replace(str(ref), "RUN") == mine.read_text().replace(str(other), "RUN"), rel
        else:
            assert path.read_bytes() == mine.read_bytes(), rel
        compared.append(rel)
    return compared


def _partial(reference, tmp_path, *keep: str) -> tuple[Path, Path]:
    """A copy of the reference run holding only ``keep`` (the outputs of the stages before)."""
    cfg, ref = reference
    out = tmp_path / "run"
    out.mkdir()
    for name in ("config.yaml", *keep):
        src = ref / name
        (shutil.copytree if src.is_dir() else shutil.copyfile)(src, out / name)
    return cfg, out


def test_train_killed_and_resumed(reference, tmp_path):
    cfg, out = _partial(reference, tmp_path)
    proc = _start("train", str(cfg), "--out", str(out))
    _when(proc, lambda: (out / "supernet.pt").exists())
    _kill(proc)
    assert not torch.load(out / "supernet.pt", weights_only=True)["complete"]
    assert main(["train", str(cfg), "--out", str(out), "--resume"]) == 0
    assert _same_run(reference[1], out, ("supernet.pt",)) == ["supernet.pt"]


def test_search_killed_and_resumed(reference, tmp_path):
    cfg, out = _partial(reference, tmp_path, "supernet.pt")
    proc = _start("search", str(cfg), "--out", str(out))
    _when(proc, lambda: (out / "search" / "state.pt").exists())
    _kill(proc)
    assert not (out / "search" / "results.json").exists()
    assert main(["search", str(cfg), "--out", str(out), "--resume"]) == 0
    assert len(_same_run(reference[1], out, ("search/",))) == 4  # state, results, Pareto table and plot


def test_finetune_killed_and_resumed(reference, tmp_path):
    cfg, out = _partial(reference, tmp_path, "supernet.pt", "search")
    proc = _start("finetune", str(cfg), "--out", str(out))
    _when(proc, lambda: (out / "finetune" / "w3a3" / "train.pt").exists())
    _kill(proc)
    assert not (out / "finetune" / "w3a3" / "model.pt").exists()
    assert main(["finetune", str(cfg), "--out", str(out), "--resume"]) == 0
    assert len(_same_run(reference[1], out, ("finetune/",))) == 5  # model, train state, result, arch, layers


@pytest.mark.parametrize("moment", ["supernet.pt", "search/state.pt", "finetune/w3a3/train.pt"])
def test_run_killed_and_resumed(reference, tmp_path, moment):
    cfg, out = reference[0], tmp_path / "run"
    proc = _start("run", str(cfg), "--out", str(out))
    _when(proc, lambda: (out / moment).exists())
    _kill(proc)
    assert not (out / "report.md").exists()
    assert main(["run", str(cfg), "--out", str(out), "--resume"]) == 0
    compared = _same_run(reference[1], out)
    assert {"supernet.pt", "search/results.json", "finetune/w3a3/model.pt", "report.md"} <= set(compared)


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_signal_stops_cleanly_and_keeps_the_checkpoint(reference, tmp_path, sig, code, word):
    cfg, out = _partial(reference, tmp_path)
    proc = _start("train", str(cfg), "--out", str(out))
    _when(proc, lambda: (out / "supernet.pt").exists())
    returncode, log = _kill(proc, sig)
    assert returncode == code, log[-3000:]
    assert f"qspos: {word}; what was saved is kept: rerun with --resume" in log and "Traceback" not in log
    assert not torch.load(out / "supernet.pt", weights_only=True)["complete"]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_full_disk_is_one_line_and_the_last_checkpoint_stays(reference, tmp_path, monkeypatch, capsys):
    cfg, out = _partial(reference, tmp_path)
    calls = {"n": 0}
    real_fsync = os.fsync

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] > 3:  # config.yaml and two checkpoints fit; then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert main(["train", str(cfg), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("qspos: error: cannot write ") and "No space left on device; the previous file is kept" in err
    state = torch.load(out / "supernet.pt", weights_only=True)
    assert state["step"] == 4 and not state["complete"]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
