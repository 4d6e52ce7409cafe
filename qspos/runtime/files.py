"""Every file qspos writes is written atomically: to a temp file beside it, synced, then renamed
over the target, so neither a reader nor a run killed mid-write ever sees half a file. Reading
the user's files fails with one clear line."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qspos.core.arch import Arch
from qspos.errors import QsposError

TEMP_SUFFIX = ".tmp"  # a write in progress: ``.NAME.<random>.tmp`` beside its target


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temp path to write ``path``'s new content to; renamed over ``path`` if the block succeeds,
    removed if it fails. A failed write (a full disk, a read-only folder) is a one-line error,
    and the previous file at ``path`` is kept."""
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        tmp = Path(name)
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 would make outputs unreadable to others
        os.close(fd)
        yield tmp
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        raise QsposError(f"cannot write {path}: {e.strerror or e}; the previous file is kept") from None
    except BaseException:
        _remove(tmp)
        raise


def _remove(tmp: Path | None) -> None:
    if tmp is not None:
        tmp.unlink(missing_ok=True)


def stale_temps(folder: str | Path) -> list[Path]:
    """The temp files of :func:`atomic_path` in ``folder``: a write killed mid-way (SIGKILL runs no
    cleanup) leaves one behind, which only the folder's sole writer may remove."""
    return sorted(p for p in Path(folder).glob(f".*.*{TEMP_SUFFIX}") if p.is_file())


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | Path, data: Any) -> None:
    """``data`` as indented, strict JSON (a NaN or infinity is an error, not bare ``NaN``)."""
    write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def read_text(path: str | Path, what: str) -> str:
    """The text of a user's file; a missing or non-UTF-8 file is a one-line error naming ``what``."""
    path = Path(path)
    if not path.is_file():
        raise QsposError(f"{what} not found: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise QsposError(f"{what} {path} is not UTF-8 text") from None


def load_arch(path: str | Path) -> Arch:
    """An arch from a YAML or JSON file (optionally wrapped as ``{arch: {...}}``).

    >>> arch = qspos.load_arch("runs/qs/finetune/w2a2/arch.yaml")  # doctest: +SKIP
    """
    return Arch.from_text(read_text(path, "arch file"), f"arch file {path}")


def save_arch(arch: Arch, path: str | Path) -> None:
    """Write as YAML (``.yaml``/``.yml``) or JSON (anything else), atomically.

    >>> qspos.save_arch(found.best("w2a2"), "w2a2.yaml")  # doctest: +SKIP
    """
    path = Path(path)
    if path.suffix in (".yaml", ".yml"):
        write_text(path, arch.to_yaml())
    else:
        write_json(path, arch.to_dict())
