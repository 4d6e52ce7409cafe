"""qspos: joint mixed-precision and channel search with a single-path one-shot Brevitas supernet.

The package is layered; each layer imports only from those below it::

    qspos.errors   the one error type users see
    qspos.core     archs, spaces, searchable layers, the supernet, costs, budgets (no config, no files)
    qspos.models   the model registry, built-in backbones, conversion of users' models
    qspos.runtime  config, run directory, checkpoints, data, torchrun, logging, the training loop
    qspos.formats  export formats: a writer and a checker each, in one registry
    qspos.results  search results and the Pareto front, as files, tables and plots
    qspos.stages   train, float, search, sensitivity, finetune, evaluate, export, report, run, bench
    qspos.api, qspos.cli

The names below are loaded on first use (PEP 562), so ``import qspos`` costs almost nothing.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from qspos._version import __version__

__all__ = ["__version__", "Arch", "Choice", "ChoicePoint", "Config", "QsposError", "Space", "Supernet", "Task",
           "evaluate", "evolve", "export", "finetune", "init_act_thresholds", "load_arch", "load_config",
           "load_quantized", "recalibrate_bn", "run", "save_arch", "search", "train_float", "train_supernet"]

# Brevitas imports torch's C++-extension helper, which warns about a missing CUDA toolkit on CPU
# machines; that says nothing about qspos, so keep it out of users' terminals.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

_EXPORTS = {
    "Arch": "qspos.core.arch", "Choice": "qspos.core.arch",
    "ChoicePoint": "qspos.core.space", "Space": "qspos.core.space",
    "Supernet": "qspos.api", "evolve": "qspos.api", "load_quantized": "qspos.api",
    "Config": "qspos.runtime.config", "load_config": "qspos.runtime.config",
    "load_arch": "qspos.runtime.files", "save_arch": "qspos.runtime.files",
    "QsposError": "qspos.errors", "recalibrate_bn": "qspos.runtime.evaluate",
    "init_act_thresholds": "qspos.core.calibrate", "Task": "qspos.runtime.task",
    "train_supernet": "qspos.api", "train_float": "qspos.api", "search": "qspos.api", "finetune": "qspos.api",
    "evaluate": "qspos.api", "export": "qspos.api", "run": "qspos.api",
}

if TYPE_CHECKING:
    from qspos.api import (
        Supernet,
        evaluate,
        evolve,
        export,
        finetune,
        load_quantized,
        run,
        search,
        train_float,
        train_supernet,
    )
    from qspos.core.arch import Arch, Choice
    from qspos.core.calibrate import init_act_thresholds
    from qspos.core.space import ChoicePoint, Space
    from qspos.errors import QsposError
    from qspos.runtime.config import Config, load_config
    from qspos.runtime.evaluate import recalibrate_bn
    from qspos.runtime.files import load_arch, save_arch
    from qspos.runtime.task import Task


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'qspos' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
