"""The corpus of bad input (tests/corpus/): every config, arch file and checkpoint in it gets one
line that names the problem (``qspos: error: ...``), exit code 2, no traceback, and leaves the
run directory as it was."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from qspos.cli import main

CORPUS = Path(__file__).parent / "corpus"
BASE = yaml.safe_load((CORPUS / "base.yaml").read_text())
BAD_CONFIGS = sorted((CORPUS / "configs").glob("*.yaml"))
BAD_ARCHS = sorted((CORPUS / "archs").glob("*.yaml"))
BAD_CHECKPOINTS = sorted((CORPUS / "checkpoints").glob("*.pt"))
# what a bad checkpoint is reported as, by kind (the path of the file is in every message)
CHECKPOINT_ERRORS = {
    "empty": "cannot read checkpoint", "garbage": "cannot read checkpoint", "pickled_code": "cannot read checkpoint",
    "list": "is not a qspos checkpoint: it holds a list", "tensor": "is not a qspos checkpoint: it holds a Tensor",
    "no_model": "is not a qspos checkpoint of this kind|is not a state dict",
    "missing_key": "does not fit this model: missing key",
    "truncated": "cannot read checkpoint .*: the file is damaged .*restore a good copy, or delete it",
}


def _expected(path: Path) -> str:
    first = path.read_bytes().splitlines()[0].decode("utf-8")
    assert first.startswith("# expect: "), path
    return first.removeprefix("# expect: ")


def _merge(base: dict, part: dict) -> dict:
    out = dict(base)
    for k, v in part.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def _config_file(bad: Path, tmp_path: Path) -> Path:
    """The base config with the bad file's one defect; the file itself when the defect is the file."""
    try:
        part = yaml.safe_load(bad.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError):
        return bad
    if not isinstance(part, dict):
        return bad
    path = tmp_path / bad.name
    path.write_text(yaml.safe_dump(_merge(BASE, part)))
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _fails_on_one_line(argv: list[str], capsys, expected: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    last = err.rstrip("\n").splitlines()[-1]
    assert last.startswith("qspos: error: ") and re.search(expected, last), last
    return last


@pytest.fixture(scope="module")
def base_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "base.yaml"
    path.write_text(yaml.safe_dump(BASE))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory, base_file) -> Path:
    """A finished run of the base config (train, search, finetune, export of packed weights)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["run", str(base_file), "--out", str(out), "--set", "export.formats=[packed]"]) == 0
    return out


@pytest.mark.parametrize("bad", BAD_CONFIGS, ids=[p.stem for p in BAD_CONFIGS])
def test_a_bad_config_is_refused_before_any_work(bad, tmp_path, capsys):
    out = tmp_path / "run"
    _fails_on_one_line(["run", str(_config_file(bad, tmp_path)), "--out", str(out)], capsys, _expected(bad))
    assert not out.exists() or _snapshot(out) == {}


@pytest.mark.parametrize("bad", BAD_CONFIGS, ids=[p.stem for p in BAD_CONFIGS])
def test_a_bad_config_leaves_a_finished_run_alone(bad, finished, tmp_path, capsys):
    """Resuming a finished run with a bad config: refused, although every stage is done (the
    message may name an earlier problem: e.g. that the finished supernet is of another model)."""
    run = shutil.copytree(finished, tmp_path / "run")
    before = _snapshot(run)
    argv = ["run", str(_config_file(bad, tmp_path)), "--out", str(run), "--resume"]
    _fails_on_one_line(argv, capsys, f"{_expected(bad)}|was written for another model/config|cannot resume")
    assert _snapshot(run) == before


@pytest.mark.parametrize("bad", BAD_ARCHS, ids=[p.stem for p in BAD_ARCHS])
def test_a_bad_arch_file_is_one_line(bad, base_file, finished, tmp_path, capsys):
    _fails_on_one_line(["cost", str(base_file), "--arch", str(bad), "--json"], capsys, _expected(bad))
    run = shutil.copytree(finished, tmp_path / "run")
    before = _snapshot(run)
    _fails_on_one_line(["finetune", str(base_file), "--out", str(run), "--arch", str(bad)], capsys, _expected(bad))
    assert _snapshot(run) == before


def _missing_key(finished: Path, name: str, tmp_path: Path) -> Path:
    state = torch.load(finished / name, weights_only=True)
    state["model"].pop(next(iter(state["model"])))
    path = tmp_path / "missing_key.pt"
    torch.save(state, path)
    return path


def _truncated(finished: Path, name: str, tmp_path: Path) -> Path:
    """A run's real checkpoint cut short (torch reads one of its size as ``[Errno 22]``)."""
    data = (finished / name).read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    return path


def _places(finished: Path, base: Path) -> dict:
    """Where a checkpoint is read: (file to replace, the command that reads it, files to drop first)."""
    arch = finished / "finetune" / "w3a3" / "arch.yaml"
    return {
        "supernet": ("supernet.pt", ["search", str(base)], ["search"]),
        "search_state": ("search/state.pt", ["search", str(base), "--resume"], ["search/results.json"]),
        "train_state": ("finetune/w3a3/train.pt", ["finetune", str(base), "--resume"],
                        ["finetune/w3a3/model.pt", "finetune/w3a3/result.json"]),
        "model_eval": ("finetune/w3a3/model.pt", ["eval", str(base), "--checkpoint", "{file}"], []),
        "model_export": ("finetune/w3a3/model.pt", ["export", "{run}", "--format", "packed"], []),
        "float": ("float.pt", ["finetune", str(base), "--arch", str(arch), "--set", "finetune.init=float",
                               "--set", "finetune.float_checkpoint={file}"], []),
    }


PLACES = ["supernet", "search_state", "train_state", "model_eval", "model_export", "float"]
CASES = [(kind.stem, place) for kind in BAD_CHECKPOINTS for place in PLACES] + [
    ("missing_key", place) for place in ("supernet", "model_eval", "model_export")] + [  # a model state dict
    ("truncated_real", place) for place in PLACES if place != "float"]  # the run's own file, cut short


@pytest.mark.parametrize("kind, place", CASES, ids=[f"{k}-{p}" for k, p in CASES])
def test_a_bad_checkpoint_is_one_line_wherever_it_is_read(kind, place, finished, base_file, tmp_path, capsys):
    rel, argv, drop = _places(finished, base_file)[place]
    if kind == "missing_key":
        source = _missing_key(finished, rel, tmp_path)
    elif kind == "truncated_real":
        source = _truncated(finished, rel, tmp_path)
    else:
        source = CORPUS / "checkpoints" / f"{kind}.pt"
    run = shutil.copytree(finished, tmp_path / "run")
    for name in drop:
        target = run / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    shutil.copyfile(source, run / rel)
    before = _snapshot(run)
    argv = [a.format(file=run / rel, run=run) for a in argv]
    if argv[0] not in ("eval", "export"):
        argv += ["--out", str(run)]
    line = _fails_on_one_line(argv, capsys, CHECKPOINT_ERRORS[kind.removesuffix("_real")])
    assert Path(rel).name in line
    assert _snapshot(run) == before
