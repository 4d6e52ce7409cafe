import json

import pytest

from qspos.errors import QsposError
from qspos.runtime.files import atomic_path, load_arch, save_arch, write_json, write_text
from tests.core.test_arch import ARCH, ARCH_DIGEST


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_save_load_round_trip(tmp_path, suffix):
    path = tmp_path / f"arch{suffix}"
    save_arch(ARCH, path)
    loaded = load_arch(path)
    assert loaded == ARCH
    assert loaded.digest() == ARCH_DIGEST
    assert "width" not in loaded["layer2.0.conv2"].to_dict()  # no width: the key is left out
    if suffix == ".json":
        assert json.loads(path.read_text()) == ARCH.to_dict()


def test_load_accepts_a_search_result_entry(tmp_path):
    path = tmp_path / "entry.json"
    path.write_text(json.dumps({"arch": ARCH.to_dict(), "digest": ARCH_DIGEST, "val_top1": 0.9}))
    assert load_arch(path) == ARCH


@pytest.mark.parametrize("text, message", [
    ("layer1.0: {w_bits: 2}", "missing key 'a_bits'"),
    ("layer1.0: {w_bits: 2, a_bits: 4, depth: 3}", "unknown key"),
    ("layer1.0: {w_bits: 2.5, a_bits: 4}", "layer1.0].w_bits"),
    ("layer1.0: {w_bits: true, a_bits: 4}", "w_bits"),
    ("layer1.0: {w_bits: 2, a_bits: 4, width: wide}", "width"),
    ("[1, 2]", "must be a mapping"),
    ("layer1.0: {w_bits: [", "not valid YAML"),
])
def test_load_bad_files(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(QsposError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_arch(path)


def test_load_missing_file(tmp_path):
    with pytest.raises(QsposError, match="not found"):
        load_arch(tmp_path / "nope.yaml")


def test_load_non_utf8_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("layer1.0: {w_bits: 2, a_bits: 4}  # d\xe9j\xe0\n".encode("latin-1"))
    with pytest.raises(QsposError, match="not UTF-8"):
        load_arch(path)


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "out.json"
    write_json(path, {"a": 1})
    with pytest.raises(ZeroDivisionError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise ZeroDivisionError
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    with pytest.raises(ValueError):
        write_json(path, {"a": float("nan")})  # strict JSON: no bare NaN
    assert json.loads(path.read_text()) == {"a": 1}


def test_writes_are_readable_by_others(tmp_path):
    write_text(tmp_path / "t.txt", "x")
    assert (tmp_path / "t.txt").stat().st_mode & 0o044  # not mkstemp's 0600


def test_a_full_disk_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch):
    import errno
    import os

    import torch

    from qspos.runtime.checkpoint import atomic_save

    path = tmp_path / "ckpt.pt"
    atomic_save({"step": 1}, path)

    def full(_fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(QsposError, match=r"cannot write .*ckpt.pt: No space left on device; the previous file is kept"):
        atomic_save({"step": 2}, path)
    monkeypatch.undo()

    def failing_save(*_args, **_kw):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(QsposError, match="cannot write .*torch.save failed: .*PytorchStreamWriter failed"):
        atomic_save({"step": 3}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_a_folder_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    import errno
    import os
    import tempfile

    def denied(*_args, **_kw):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(tempfile, "mkstemp", denied)  # what a read-only folder does (root may write anywhere)
    with pytest.raises(QsposError, match="cannot write .*x.txt: Permission denied"):
        write_text(tmp_path / "x.txt", "x")
