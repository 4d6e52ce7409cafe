"""From a config to the networks it names: the supernet, a trained supernet, a fine-tuned net.

Every command rebuilds its networks from the config alone through these functions.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from qspos.core.arch import Arch
from qspos.core.supernet import Supernet
from qspos.errors import QsposError
from qspos.models import Converted, build_model, convert
from qspos.runtime.checkpoint import load_checkpoint, load_model_state, load_state_dict_file
from qspos.runtime.config import Config
from qspos.runtime.distributed import pick_device
from qspos.runtime.rundir import SUPERNET_SECTIONS, fingerprint
from qspos.runtime.task import OBJECT_PREFIX, current
from quant_kernels import best_backend


def quant_backend(cfg: Config, device: torch.device | str | None = None, compiled: bool = False) -> str:
    """``quant.backend``, with ``auto`` resolved for ``device`` (default: the training device);
    ``compiled`` when the step is compiled (the kernels inductor can trace)."""
    if cfg.quant.backend != "auto":
        return cfg.quant.backend
    if compiled:
        return "compiled"
    return best_backend(torch.device(device).type if device is not None else pick_device(cfg.train.device).type)


def build_supernet(cfg: Config, device: torch.device | str | None = None) -> Supernet:
    """The supernet of a config: its model converted at the space's largest width multiplier,
    with the quant backend for ``device`` (see :func:`quant_backend`). What was changed to fit
    the model to the task (stem, head) is in ``supernet.notes``, what each layer got from the
    conversion in ``supernet.layer_entries``."""
    converted, notes = convert_model(cfg)
    supernet = Supernet(converted.net, converted.declaration, cfg.space)
    supernet.notes, supernet.layer_entries = notes, converted.layers
    supernet.set_quant_backend(quant_backend(cfg, device))
    return supernet


def convert_model(cfg: Config) -> tuple[Converted, list[str]]:
    """The config's model (or the running task's, see ``runtime.task``), built and converted,
    and the notes of what fitting it changed.

    A string ``model.args.weights`` names a local float state-dict file, loaded here (nothing is
    downloaded).
    """
    given = current().model
    if given is not None:
        return convert(given, cfg.input_shape, max(cfg.space.width_multipliers), cfg.space.tie), []
    if cfg.model.name.startswith(OBJECT_PREFIX):
        raise QsposError(f"this run's model was passed as an object ({cfg.model.name[len(OBJECT_PREFIX):]}): "
                         "pass the same model again (model=...) to use the run")
    args = dict(cfg.model.args)
    weights = args.pop("weights", None)
    if isinstance(weights, str):
        weights = load_state_dict_file(weights)
    model, notes = build_model(cfg.model.name, cfg.model.num_classes, cfg.model.in_channels, args, weights)
    return convert(model, cfg.input_shape, max(cfg.space.width_multipliers), cfg.space.tie), notes


def load_supernet(cfg: Config, path: str | Path, require_complete: bool = True,
                  device: torch.device | str | None = None) -> Supernet:
    """A supernet of ``cfg`` with the weights of a training checkpoint (``supernet.pt``).

    Refuses a checkpoint whose model/space differ from the config, or (by default) one whose
    training has not finished.
    """
    state = load_checkpoint(path, require=("model",))
    want = fingerprint(cfg, *SUPERNET_SECTIONS)
    if state.get("fingerprint") != want:
        raise QsposError(f"{path} was trained with another model/space config than this one")
    if require_complete and not state.get("complete", False):
        raise QsposError(f"{path} is an unfinished training checkpoint; finish it with 'qspos train --resume'")
    supernet = build_supernet(cfg, device)
    load_model_state(supernet, state["model"], path)
    return supernet.to(device) if device is not None else supernet


def load_finetuned(cfg: Config, path: str | Path) -> tuple[nn.Module, Arch]:
    """A fine-tuned net (``model.pt``) and its arch, rebuilt from the config's backbone."""
    return finetuned_from_state(cfg, load_checkpoint(path, require=("model", "arch")), Path(path))


def finetuned_from_state(cfg: Config, state: dict, path: Path) -> tuple[nn.Module, Arch]:
    """The net of a loaded ``model.pt`` (``path`` names it in errors), in eval mode."""
    if state.get("fingerprint") != fingerprint(cfg, *SUPERNET_SECTIONS):
        raise QsposError(f"{path} holds a net of another model/space config than this one")
    supernet = build_supernet(cfg)
    arch = supernet.space.validate(Arch.from_dict(state["arch"]))
    model = supernet.extract(arch)
    load_model_state(model, state["model"], path)
    return model.eval(), arch
