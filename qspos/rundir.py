"""Run directories: ``runs/NAME/`` holds the resolved config and every stage's outputs."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from qspos.config import Config, save_config


def resolve_run_dir(cfg: Config, out: str | Path | None = None) -> Path:
    return Path(out) if out is not None else cfg.run_dir


def open_run_dir(cfg: Config, out: str | Path | None = None) -> Path:
    """Create the run directory and write the resolved config (the latest command's) into it."""
    run_dir = resolve_run_dir(cfg, out)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    return run_dir


def fingerprint(cfg: Config, *sections: str) -> str:
    """Digest of the config sections a stage's output depends on (checked on resume and reuse)."""
    d = cfg.to_dict()
    canon = json.dumps({s: d[s] for s in sections}, sort_keys=True)
    return hashlib.sha1(canon.encode()).hexdigest()[:12]


SUPERNET_SECTIONS = ("model", "space")


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically (temp file + rename): readers never see half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    write_text(path, json.dumps(data, indent=2) + "\n")
