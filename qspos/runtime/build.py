"""From a config to the networks it names: the supernet, a trained supernet, a fine-tuned net.

Every command rebuilds its networks from the config alone through these functions.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from qspos.core import supernet as core
from qspos.core.arch import Arch
from qspos.core.backbone import SpaceDeclaration
from qspos.core.calibrate import init_act_thresholds
from qspos.core.cost import Cost, CostModel
from qspos.core.fold import deployment_net
from qspos.errors import QsposError
from qspos.models import Converted, LayerEntry, build_model, convert
from qspos.runtime.checkpoint import load_checkpoint, load_model_state, load_state_dict_file
from qspos.runtime.config import Config, SpaceConfig, load_config
from qspos.runtime.distributed import pick_device
from qspos.runtime.rundir import SUPERNET_SECTIONS, fingerprint
from qspos.runtime.task import OBJECT_PREFIX
from quant_kernels import best_backend


def quant_backend(cfg: Config, device: torch.device | str | None = None, compiled: bool = False) -> str:
    """``quant.backend``, with ``auto`` resolved for ``device`` (default: the training device);
    ``compiled`` when the step is compiled (the kernels inductor can trace)."""
    if cfg.quant.backend != "auto":
        return cfg.quant.backend
    if compiled:
        return "compiled"
    return best_backend(torch.device(device).type if device is not None else pick_device(cfg.train.device).type)


class Supernet(core.Supernet):
    """A supernet made from any model, with the input shape its costs are traced at. One class
    for the stages (:func:`build_supernet`) and a custom loop (``qspos.Supernet.from_model``), so
    a supernet of either kind works with all of the API (``qspos.evolve``, ``cost``)::

        sn = qspos.Supernet.from_model(model, {"weight_bits": [2, 4], "act_bits": [4],
                                               "width_multipliers": [0.5, 1.0]}, input_shape=(3, 32, 32),
                                       calib=itertools.islice(train_loader, 4))   # thresholds calibrated
        arch = sn.space.sample(random.Random(0))
        sn.set_arch(arch)                        # one single path; train it as any module
        sn.cost(arch).bitops                     # arithmetic, no forward
        net = sn.extract(arch)                   # the standalone Brevitas net of that path
    """

    def __init__(self, net: nn.Module, declaration: SpaceDeclaration, space_cfg: core.SpaceSpec,
                 input_shape: tuple[int, int, int], layer_entries: list[LayerEntry] | None = None,
                 notes: list[str] | None = None):
        super().__init__(net, declaration, space_cfg)
        self.input_shape = tuple(input_shape)
        self.layer_entries = layer_entries or []  # what each layer got from the conversion
        self.notes = notes or []  # what fitting a configured model to the task changed (stem, head)
        self._costs: CostModel | None = None

    @classmethod
    def from_model(cls, model: nn.Module, space: Mapping | SpaceConfig, input_shape: tuple[int, int, int], *,
                   calib: Iterable | None = None, device: torch.device | str = "cpu") -> Supernet:
        """``model`` converted from its graph, spanning ``space`` (the config's ``space`` section:
        a dict or a ``SpaceConfig``), for inputs of ``input_shape`` (C, H, W), on ``device`` with
        the quant backend the stages' ``quant.backend: auto`` picks there.

        ``model`` is left untouched; its weights are the supernet's start (a pretrained model
        starts pretrained). With ``calib`` (``(input, target)`` batches, e.g. a few of your
        training loader's), the activation thresholds are calibrated as ``qspos train`` does
        (:func:`~qspos.core.calibrate.init_act_thresholds`); without it they start at 1.0.

        >>> sn = qspos.Supernet.from_model(net, {"pairs": [[4, 4]]}, (3, 32, 32), calib=batches)  # doctest: +SKIP
        """
        if len(tuple(input_shape)) != 3 or not all(isinstance(n, int) and n > 0 for n in input_shape):
            raise QsposError(f"input_shape: give one image's (channels, height, width), e.g. (3, 32, 32); "
                             f"got {tuple(input_shape)}")
        space_cfg = space if isinstance(space, SpaceConfig) else load_config({"space": dict(space)}).space
        converted = convert(model, tuple(input_shape), max(space_cfg.width_multipliers), space_cfg.tie,
                            space_cfg.batchnorm == "per_bits")
        supernet = cls(converted.net, converted.declaration, space_cfg, input_shape, converted.layers).to(device)
        supernet.set_quant_backend(best_backend(torch.device(device).type))
        if calib is not None:
            init_act_thresholds(supernet, calib, device)
        return supernet

    def cost(self, arch: Arch) -> Cost:
        """MACs, BitOps and size of ``arch``, per layer (shapes traced once, on first use).

        >>> sn.cost(sn.space.uniform(4, 4)).bitops  # doctest: +SKIP
        """
        if self._costs is None:
            self._costs = CostModel(self, self.input_shape)
        return self._costs.cost(arch)


def build_supernet(cfg: Config, device: torch.device | str | None = None, given: nn.Module | None = None) -> Supernet:
    """The supernet of a config: its model (or the caller's ``given`` one) converted at the
    space's largest width multiplier, with the quant backend for ``device`` (see
    :func:`quant_backend`). What was changed to fit the model to the task (stem, head) is in
    ``supernet.notes``, what each layer got from the conversion in ``supernet.layer_entries``."""
    converted, notes = convert_model(cfg, given)
    supernet = Supernet(converted.net, converted.declaration, cfg.space, cfg.input_shape, converted.layers, notes)
    supernet.set_quant_backend(quant_backend(cfg, device))
    return supernet


def convert_model(cfg: Config, given: nn.Module | None = None) -> tuple[Converted, list[str]]:
    """The config's model (or the caller's ``given`` one, see ``runtime.task``), built and
    converted, and the notes of what fitting it changed.

    A string ``model.args.weights`` names a local float state-dict file, loaded here (nothing is
    downloaded).
    """
    if given is not None:
        return _converted(cfg, given), []
    if cfg.model.name.startswith(OBJECT_PREFIX):
        raise QsposError(f"this run's model was passed as an object ({cfg.model.name[len(OBJECT_PREFIX):]}): "
                         "pass the same model again (model=...) to use the run")
    args = dict(cfg.model.args)
    weights = args.pop("weights", None)
    if isinstance(weights, str):
        weights = load_state_dict_file(weights)
    model, notes = build_model(cfg.model.name, cfg.model.num_classes, cfg.model.in_channels, args, weights)
    return _converted(cfg, model), notes


def _converted(cfg: Config, model: nn.Module) -> Converted:
    s = cfg.space
    return convert(model, cfg.input_shape, max(s.width_multipliers), s.tie, s.batchnorm == "per_bits")


def load_supernet(cfg: Config, path: str | Path, require_complete: bool = True,
                  device: torch.device | str | None = None, given: nn.Module | None = None) -> Supernet:
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
    supernet = build_supernet(cfg, device, given)
    load_model_state(supernet, state["model"], path)
    return supernet.to(device) if device is not None else supernet


def load_finetuned(cfg: Config, path: str | Path, given: nn.Module | None = None) -> tuple[nn.Module, Arch]:
    """A fine-tuned net (``model.pt``) and its arch, rebuilt from the config's backbone (or the
    caller's ``given`` model)."""
    return finetuned_from_state(cfg, load_checkpoint(path, require=("model", "arch")), Path(path), given)


def finetuned_from_state(cfg: Config, state: dict, path: Path,
                         given: nn.Module | None = None) -> tuple[nn.Module, Arch]:
    """The net of a loaded ``model.pt`` (``path`` names it in errors), in eval mode: a net trained
    in its deployment form (``finetune.fold_bn: start``) is rebuilt in that form."""
    if state.get("fingerprint") != fingerprint(cfg, *SUPERNET_SECTIONS):
        raise QsposError(f"{path} holds a net of another model/space config than this one")
    supernet = build_supernet(cfg, given=given)
    arch = supernet.space.validate(Arch.from_dict(state["arch"]))
    model = supernet.extract(arch)
    if "deployment_outputs" in state:
        model = deployment_net(model, None, list(state["deployment_outputs"]))
    load_model_state(model, state["model"], path)
    return model.eval(), arch


def float_model(cfg: Config, given: nn.Module | None = None) -> nn.Module:
    """The config's backbone as a plain float network (fresh weights drawn from ``cfg.seed``),
    or a copy of the caller's ``given`` model with its own weights."""
    torch.manual_seed(cfg.seed)
    if given is not None:
        return copy.deepcopy(given)
    args = {k: v for k, v in cfg.model.args.items() if k != "weights"}  # trained from scratch
    return build_model(cfg.model.name, cfg.model.num_classes, cfg.model.in_channels, args)[0]


_FLOAT_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


@torch.no_grad()
def load_float_weights(supernet: Supernet, state: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """Copy a float backbone's weights (a state dict with the same module names, e.g. torchvision's
    ResNet-18 for ``resnet18``, or the float teacher's) into the supernet, each tensor into the
    leading slice of the max-width one, then set every weight threshold from the new weights."""
    own = {k: v for k, v in supernet.net.state_dict().items()
           if "_quant." not in k and k.rsplit(".", 1)[-1] in _FLOAT_KEYS}
    unknown = sorted(set(state) - set(own))
    missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
    if unknown or missing:
        raise QsposError(f"{source} is not a float state_dict of this model: "
                         f"missing {missing[:3]}, unknown {unknown[:3]}")
    for key, value in state.items():
        dst = own[key]
        if value.dim() != dst.dim() or any(a > b for a, b in zip(value.shape, dst.shape)):
            raise QsposError(f"{source}: {key} has shape {tuple(value.shape)}, the model's is {tuple(dst.shape)}")
        dst[tuple(slice(n) for n in value.shape)].copy_(value)
    for _, layer in supernet.layer_items():
        layer.init_weight_thresholds()
