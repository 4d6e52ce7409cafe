"""Checkpoints: written atomically (temp file + rename), loaded with ``weights_only=True``."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qspos.errors import QsposError
from qspos.runtime.files import atomic_path


def atomic_save(obj: Any, path: str | Path) -> None:
    """Save so that a crash mid-write never leaves a truncated file at ``path``."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise QsposError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is the same user error
        why = (str(e).splitlines() or [type(e).__name__])[0]  # a zero-byte file's error has no message
        raise QsposError(f"cannot read checkpoint {path}: {why}") from None


def rng_state() -> dict:
    """Python, NumPy and torch RNG states in a form ``weights_only`` loading accepts."""
    py = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def python_rng_state(rng: random.Random) -> list:
    s = rng.getstate()
    return [s[0], list(s[1]), s[2]]


def set_python_rng_state(rng: random.Random, state: list) -> None:
    rng.setstate((state[0], tuple(state[1]), state[2]))
