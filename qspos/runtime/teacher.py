"""The float teacher: the net a user starts from, and the soft targets it teaches with.

A teacher is found, in this order, as ``float.checkpoint`` (a float state dict: a user's
pretrained net), the run's own ``float/model.pt`` (``qspos float``), the float weights the model
is built from (``model.args.weights``), or the caller's model object (the Python API). It gives
the supernet its first weights (``train.init: teacher``) and its logits to supernet training and
fine-tuning (``distill: teacher``). It is frozen: eval mode, no gradient, in no optimiser.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qspos.errors import QsposError
from qspos.runtime.build import float_model
from qspos.runtime.checkpoint import load_checkpoint, load_model_state, load_state_dict_file
from qspos.runtime.config import Config, OptimConfig
from qspos.runtime.rundir import RunDir, fingerprint
from qspos.runtime.task import NO_TASK, Task


def float_fingerprint(cfg: Config) -> str:
    """The identity of a float net of this config's model (``float/model.pt`` carries it)."""
    return f"{fingerprint(cfg, 'model')}-float"


def teacher_state(cfg: Config, run: RunDir, given: nn.Module | None = None) -> tuple[dict[str, Tensor] | None, str]:
    """The teacher's float state dict and where it comes from (see the module doc); the state is
    None for the caller's ``given`` model, whose own weights are the teacher."""
    if cfg.float.checkpoint:
        return load_state_dict_file(cfg.float.checkpoint), f"float.checkpoint ({cfg.float.checkpoint})"
    if run.float_net.done:
        saved = load_checkpoint(run.float_net.model, require=("model",))
        if saved.get("fingerprint") != float_fingerprint(cfg):
            raise QsposError(f"{run.float_net.model} is a float net of another model than this config's: "
                             "train the teacher again in another --out, or set float.checkpoint")
        return load_state_dict_file(run.float_net.model), str(run.float_net.model)
    weights = cfg.model.args.get("weights")
    if isinstance(weights, str):
        return load_state_dict_file(weights), f"model.args.weights ({weights})"
    if given is not None:
        return None, "the model object passed"
    raise QsposError(f"no float teacher for this run: train one with 'qspos float CONFIG --out {run.path}', "
                     "or name a pretrained one with float.checkpoint (a state dict of the model)")


def needs_teacher(cfg: Config) -> bool:
    """Does this config start from or learn from a float teacher?"""
    return cfg.train.init == "teacher" or "teacher" in (cfg.train.distill, cfg.finetune.distill)


def trains_teacher(cfg: Config, given: nn.Module | None = None) -> bool:
    """Is the teacher the run's own ``float/`` (trained, or copied from ``float.checkpoint``), not
    the weights the model is built from or the caller's ``given`` model?"""
    built_from = isinstance(cfg.model.args.get("weights"), str) or given is not None
    return bool(cfg.float.checkpoint) or not built_from


def teacher_digest(model: nn.Module) -> str:
    """A digest of the teacher's weights: a resumed training must learn from the same teacher."""
    h = hashlib.sha1()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


@dataclass(frozen=True)
class Teacher:
    """A frozen float net and how a student learns from its logits (``distill_*`` settings)."""

    model: nn.Module
    temperature: float
    weight: float
    source: str
    digest: str

    def loss(self, x: Tensor, student_logits: Tensor, labels: Tensor, label_smoothing: float) -> Tensor:
        """The distillation loss of a batch (the teacher's forward runs here, without gradient)."""
        with torch.no_grad():
            teacher_logits = self.model(x)
        return distill_loss(student_logits, teacher_logits, labels, self.temperature, self.weight, label_smoothing)


def distill_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float,
                 weight: float, label_smoothing: float = 0.0) -> Tensor:
    """Hinton et al.'s knowledge distillation: ``weight`` · T² · KL(teacher_T ‖ student_T) plus
    (1 − ``weight``) · cross-entropy on the labels; T² keeps the soft term's gradient at the
    scale of the hard one's whatever the temperature."""
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits.float() / t, dim=1), F.log_softmax(teacher_logits.float() / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)
    if weight == 1.0:
        return soft
    hard = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    return weight * soft + (1.0 - weight) * hard


def load_teacher(cfg: Config, run: RunDir, optim: OptimConfig, device: torch.device | str,
                 task: Task = NO_TASK) -> Teacher:
    """The run's teacher (see the module doc; ``task``: the caller's objects) on ``device``,
    frozen, with ``optim``'s distillation settings."""
    if task.loss is not None:
        raise QsposError("distill: teacher learns from class logits, which a caller's own loss does not "
                         "give: set distill to none, or distil inside your loss")
    state, source = teacher_state(cfg, run, task.model)
    model = float_model(cfg, task.model)
    if state is not None:
        load_model_state(model, state, source)
    model.eval().requires_grad_(False).to(device)
    return Teacher(model, optim.distill_temperature, optim.distill_weight, source, teacher_digest(model))


def teacher_of(cfg: Config, run: RunDir, optim: OptimConfig, device: torch.device | str,
               task: Task = NO_TASK) -> Teacher | None:
    """The teacher when ``optim`` distils from one, else None."""
    return load_teacher(cfg, run, optim, device, task) if optim.distill == "teacher" else None

