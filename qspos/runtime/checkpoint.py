"""Checkpoints: written atomically (temp file + rename), loaded with ``weights_only=True``."""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from brevitas import config as brevitas_config
from torch import nn

from qspos.errors import QsposError
from qspos.runtime.files import atomic_path

ZIP_MAGIC = b"PK\x03\x04"  # how every torch.save file begins


def atomic_save(obj: Any, path: str | Path) -> None:
    """Save so that a crash mid-write never leaves a truncated file at ``path``."""
    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:  # torch's writer reports a full disk as a RuntimeError
            raise OSError(f"torch.save failed: {(str(e).splitlines() or ['?'])[0]}") from None


def load_checkpoint(path: str | Path, require: tuple[str, ...] = ()) -> dict:
    """A checkpoint written by qspos (a dict of tensors and plain values), loaded with
    ``weights_only=True``; anything else (a missing, empty or foreign file, pickled code, a dict
    without the ``require`` d keys) is a one-line error naming the file; a damaged one (cut short
    by a copy or a full disk) says so, and what to do."""
    path = Path(path)
    if not path.is_file():
        raise QsposError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is the same user error
        if _damaged(path, e):
            raise QsposError(f"cannot read checkpoint {path}: the file is damaged (cut short or corrupted); "
                             "restore a good copy, or delete it and rerun the command that wrote it") from None
        why = (str(e).splitlines() or [type(e).__name__])[0]  # a zero-byte file's error has no message
        raise QsposError(f"cannot read checkpoint {path}: {why or type(e).__name__}") from None
    if not isinstance(state, dict):
        raise QsposError(f"{path} is not a qspos checkpoint: it holds a {type(state).__name__}, not a dict")
    missing = [k for k in require if k not in state]
    if missing:
        raise QsposError(f"{path} is not a qspos checkpoint of this kind: no {missing[0]!r} in it")
    return state


def _damaged(path: Path, error: Exception) -> bool:
    """Is ``path`` a torch file whose archive is broken (torch then reports ``[Errno 22] Invalid
    argument`` or its zip reader's internals), rather than another kind of file?"""
    with path.open("rb") as f:
        torch_file = f.read(len(ZIP_MAGIC)) == ZIP_MAGIC
    return torch_file and (isinstance(error, OSError) or "PytorchStreamReader" in str(error))


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A float model's weights: a state dict file, or a checkpoint holding one under ``model``."""
    state = load_checkpoint(path)
    if isinstance(state.get("model"), Mapping):
        state = state["model"]
    odd = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if odd is not None:
        raise QsposError(f"{path} is not a state dict: {odd!r} holds a {type(state[odd]).__name__}, not a tensor")
    return dict(state)


def load_model_state(model: nn.Module, state: Mapping[str, Any], source: str | Path) -> None:
    """Load ``state`` into ``model`` in place: the one way every stage restores weights.

    Brevitas would re-initialise each quantizer on a state-dict load
    (``REINIT_ON_STATE_DICT_LOAD``), replacing the learned threshold parameters by new objects an
    optimiser built before the load never updates, and dropping the fused kernels; here the
    existing parameters receive the values instead. A state that does not fit is a one-line error
    naming ``source``.
    """
    if not hasattr(state, "_metadata"):  # a plain dict (float.npz, a weights file) holds the model's own
        state = OrderedDict(state)  # formats: modules that check their format's version on load (MNASNet) need it
        state._metadata = model.state_dict()._metadata
    reinit = brevitas_config.REINIT_ON_STATE_DICT_LOAD
    brevitas_config.REINIT_ON_STATE_DICT_LOAD = False
    try:
        keys = model.load_state_dict(state, strict=False)
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        why = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else (lines or [repr(e)])[0]
        raise QsposError(f"{source} does not fit this model: {why}") from None
    finally:
        brevitas_config.REINIT_ON_STATE_DICT_LOAD = reinit
    if keys.missing_keys or keys.unexpected_keys:
        parts = [f"{label} key(s) {', '.join(found[:3])}{', ...' if len(found) > 3 else ''}"
                 for label, found in (("missing", keys.missing_keys), ("unexpected", keys.unexpected_keys)) if found]
        raise QsposError(f"{source} does not fit this model: {'; '.join(parts)}")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global RNGs (the states :func:`rng_state` saves)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
