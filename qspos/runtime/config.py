"""YAML config into typed, validated dataclasses. Every error names the offending key."""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from qspos.core.budget import check_budget_entries
from qspos.errors import QsposError
from qspos.runtime.files import read_text

# ---------------------------------------------------------------------------- sections


@dataclass
class ModelConfig:
    name: str = "resnet_small"
    num_classes: int = 10
    in_channels: int = 1
    input_size: int = 28
    args: dict[str, Any] = field(default_factory=dict)  # extra factory arguments, e.g. depth


@dataclass
class FixedBits:
    """Bits of a fixed (not searched) layer; null keeps that operand in float (counts 32)."""

    w_bits: int | None = 8
    a_bits: int | None = 8


@dataclass
class SpaceConfig:
    pairs: list[list[int]] | None = None  # explicit (w_bits, a_bits) pairs, as in the paper
    weight_bits: list[int] | None = None  # or the product weight_bits x act_bits
    act_bits: list[int] | None = None
    width_multipliers: list[float] = field(default_factory=lambda: [1.0])
    tie: Literal["block", "layer"] = "block"
    first: FixedBits = field(default_factory=FixedBits)
    last: FixedBits = field(default_factory=FixedBits)
    # per_bits: each BatchNorm after a searched layer keeps one affine transform per weight
    # bit-width of that layer (switchable BN, as Any-Precision DNNs and AdaBits); shared: one
    # (statistics are shared either way: every measured path gets its own by recalibration)
    batchnorm: Literal["shared", "per_bits"] = "shared"


@dataclass
class QuantConfig:
    # the quant_kernels backend, all with the same values: auto (the fastest for the device: fused
    # on CPU, reference on CUDA) | fused | reference | compiled
    backend: Literal["auto", "fused", "reference", "compiled"] = "auto"


@dataclass
class DataConfig:
    # objects: the Python caller passed its datasets (the run records that it needs them again)
    dataset: Literal["fashion_mnist", "cifar10", "cifar100", "imagefolder", "synthetic", "objects"] = "fashion_mnist"
    root: str | None = None  # default: the Debian package's folder for Fashion-MNIST
    download: bool = False  # let torchvision download a missing dataset
    val_size: int = 5000  # held out from the training split; the search only sees it
    split_seed: int = 0
    batch_size: int = 256  # global: split over the processes under torchrun
    eval_batch_size: int = 512
    workers: int = 0
    augment: bool = True
    train_subset: int | None = None  # use only this many training images (quick runs)
    synthetic_size: int = 2048  # images per split for the synthetic dataset
    # per-channel normalisation; null: the dataset's own (ImageNet's for RGB image folders)
    mean: list[float] | None = None
    std: list[float] | None = None


@dataclass
class LoopSettings:
    """How a training loop runs, not what it computes: a resume may change these. Every other
    setting of a training section is its recipe, which a resume must match."""

    log_every: int = 20
    checkpoint_every: int = 200
    amp: bool = True  # used on CUDA only
    channels_last: bool = True  # used on CUDA only
    device: str = "auto"


LOOP_SETTINGS = frozenset(f.name for f in dataclasses.fields(LoopSettings))


@dataclass
class OptimConfig(LoopSettings):
    """What every training loop (supernet training, fine-tuning, the float teacher) is configured
    by: its recipe, and the loop settings it inherits."""

    epochs: float = 10.0
    max_steps: int | None = None  # stop after this many steps (overrides epochs when smaller)
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4  # on conv/linear weights only (not thresholds, BN or biases)
    schedule: Literal["cosine", "linear"] = "cosine"
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    # teacher: learn from the float teacher's logits as well as the labels (knowledge distillation):
    # loss = distill_weight * T^2 * KL(teacher_T || student_T) + (1 - distill_weight) * cross-entropy
    distill: Literal["none", "teacher"] = "none"
    distill_temperature: float = 2.0
    distill_weight: float = 0.5


@dataclass
class TrainConfig(OptimConfig):
    init: Literal["scratch", "teacher"] = "scratch"  # teacher: the supernet starts from the float teacher's weights
    sampling: Literal["uniform", "budget"] = "uniform"  # budget: uniform among archs in the range
    sampling_budget: dict[str, Any] = field(default_factory=dict)
    threshold_init_batches: int = 4
    # inplace: BigNAS's sandwich rule (in-place distillation): each step trains the largest path on
    # the labels, then the smallest and inplace_paths sampled paths on its logits (the distill_*
    # settings), and updates once; teacher: every sampled path learns from the float teacher
    distill: Literal["none", "teacher", "inplace"] = "none"
    inplace_paths: int = 2
    # torch.compile the training step: max-width compute with channel masks, one graph for every
    # path (quant.backend auto then means compiled)
    compile: bool = False


@dataclass
class FinetuneConfig(OptimConfig):
    epochs: float = 5.0
    lr: float = 0.05  # quickstart, 1 epoch: +3 to +4 points of val top-1 where 0.01 lost 0.4 to 1
    weight_decay: float = 5e-5
    warmup_epochs: float = 0.0
    init: Literal["supernet", "scratch", "float"] = "supernet"
    float_checkpoint: str | None = None  # init: float: state_dict of the float backbone (same names)
    pick: int | None = None  # fine-tune each budget's N-th best arch (0-based) instead of its best
    baselines: bool = False  # also fine-tune each budget's uniform arch, for the report's comparison
    # where BatchNorm is folded into the convs (qspos.core.fold): after fine-tuning, by the export
    # (exact on the weight codes; the int32 biases and 8-bit conv outputs round), or at its start,
    # so that the net trained and measured is the one deployed (BN statistics frozen at their
    # recalibrated values, as PyTorch's ConvBn QAT modules do once they freeze them)
    fold_bn: Literal["after", "start"] = "after"


@dataclass
class FloatConfig(OptimConfig):
    """The float teacher (``qspos float``): its own recipe, long enough to converge, or a
    pretrained state dict that is the teacher as it is."""

    epochs: float = 15.0
    lr: float = 0.1
    warmup_epochs: float = 0.5
    checkpoint: str | None = None  # a float state dict of the backbone: the teacher, not trained again


@dataclass
class SearchConfig:
    budgets: list[dict[str, Any]] = field(default_factory=list)
    # what picks each budget's arch: the paper's evolution, the random search, or the sensitivity
    # allocation (per choice point drops, then an exact knapsack: qspos.core.sensitivity)
    method: Literal["evolution", "random", "sensitivity"] = "evolution"
    sensitivity_seed: bool = False  # the sensitivity allocation joins the evolution's first generation
    # what the sensitivity table measures per choice point: every choice (joint), or one factor
    # (weight bits, activation bits, width) lowered at a time, a choice's drop the sum of its factors'
    sensitivity_probes: Literal["joint", "factored"] = "joint"
    # each budget's band: min = floor x max for every bound without its own min (a budget entry's
    # own floor wins; null: no floor), so the search spends its budget
    floor: float | None = 0.9
    population: int = 50
    iterations: int = 20
    topk: int = 10
    mutation_prob: float = 0.1
    mutation_count: int = 25
    crossover_count: int = 25
    max_tries: int = 100_000  # uniform samples in a row before giving up on one more arch in a budget
    calib_images: int = 2048  # BN recalibration images from the training split
    val_images: int | None = None  # None: the whole held-out validation split
    # random search with as many evaluations, as a baseline: under every budget, none, or the named
    # ones (each costs as much as its evolution; two budgets answer "does evolution beat it")
    random_baseline: bool | list[str] = True
    # after the evolution, raise the pick one choice at a time while it stays in the budget and its
    # score within its noise (qspos.core.fill): the search spends what the pick leaves
    fill: bool = True
    latency_table: str | None = None  # JSON from 'qspos latency CONFIG OUT.json' (latency_ms budgets)
    device: str = "auto"
    seed: int = 0


# the export formats, spelled once for the config and the command line (``qspos.formats.registry``
# holds a writer and a checker under each name)
ExportFormat = Literal["onnx-qcdq", "qonnx", "packed"]
EXPORT_FORMATS: tuple[str, ...] = typing.get_args(ExportFormat)


@dataclass
class ExportConfig:
    formats: list[ExportFormat] = field(default_factory=lambda: list(EXPORT_FORMATS))
    check_batch: int = 256  # images whose ONNX logits are compared with PyTorch's
    timing_runs: int = 20  # runs of the optimised QCDQ and float files timed at batch 1 and 64 (0: none)


@dataclass
class LogConfig:
    interval_s: float = 30.0  # a plain progress line this often when stderr is not a terminal
    tensorboard: bool = False  # also write metrics.jsonl's scalars to RUN_DIR/tensorboard/ (extra 'tensorboard')


@dataclass
class Config:
    name: str = "run"
    seed: int = 0
    runs_dir: str = "runs"
    # what every *_top1 result holds: top-1 accuracy, or the name of a Python caller's score
    # (recorded by the API, so tables and the report name it and show it as it is)
    score: str = "top-1"
    model: ModelConfig = field(default_factory=ModelConfig)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    data: DataConfig = field(default_factory=DataConfig)
    float: FloatConfig = field(default_factory=FloatConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """The resolved config as YAML (what a run directory's ``config.yaml`` holds)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.model.in_channels, self.model.input_size, self.model.input_size)


# ---------------------------------------------------------------------------- loading


def load_config(
    source: str | Path | Mapping | Config | None = None, overrides: list[str] | None = None
) -> Config:
    """A Config from a YAML path, a dict or a Config, with ``key.sub=value`` overrides applied.

    >>> cfg = qspos.load_config("configs/quickstart.yaml", ["train.epochs=1", "data.batch_size=64"])  # doctest: +SKIP
    """
    if isinstance(source, Config):
        data = source.to_dict()
    elif isinstance(source, Mapping):
        data = copy.deepcopy(dict(source))  # overrides must not write into the caller's dict
    elif source is None:
        data = {}
    else:
        data = _read_yaml(Path(source))
    for item in overrides or []:
        _apply_override(data, item)
    cfg = _build(Config, data, "")
    _validate(cfg)
    return cfg


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(read_text(path, "config file"))
    except yaml.YAMLError as e:
        raise QsposError(f"config {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise QsposError(f"config {path}: top level must be a mapping")
    return data


def _apply_override(data: dict, item: str) -> None:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise QsposError(f"--set expects key=value, got {item!r}")
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise QsposError(f"--set {key}: {part} is not a section")
    try:
        node[parts[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError:
        node[parts[-1]] = raw


def load_search_settings(data: Mapping) -> SearchConfig:
    """A ``search`` section on its own (the low-level API's evolution), checked as in a config."""
    s = _build(SearchConfig, dict(data), "search")
    _validate_search(s)
    return s


def _build(tp: Any, value: Any, key: str) -> Any:
    """Check ``value`` against type ``tp`` (dataclass, Optional, list, dict, Literal, scalars)."""
    where = key or "config"
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise QsposError(f"{where}: expected a mapping, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - names, key=str)
        if unknown:
            raise QsposError(f"{_join(key, _key_text(unknown[0]))}: unknown key (known: {', '.join(sorted(names))})")
        return tp(**{k: _build(hints[k], v, _join(key, k)) for k, v in value.items()})
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise QsposError(f"{where}: must not be null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _build(arg, value, key)
            except QsposError as e:
                errors.append(str(e))
        raise QsposError(errors[0])
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise QsposError(f"{where}: {value!r} is not one of {', '.join(map(str, allowed))}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise QsposError(f"{where}: expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp)
        return [_build(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise QsposError(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, str) and _FLOAT_TEXT.match(value):
        value = float(value)  # YAML 1.1 reads 5e-5 (no dot) as a string
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise QsposError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp in (int, str, bool) and type(value) is tp:
        return value
    raise QsposError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_FLOAT_TEXT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _key_text(key: Any) -> str:
    """A key as an error shows it: as written when it is plain text, else quoted (one line)."""
    return key if isinstance(key, str) and key.isprintable() and key.strip() == key and key else repr(key)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _check_bits(bits: int | None, key: str, allow_none: bool = False) -> None:
    if bits is None and allow_none:
        return
    if bits is None or not 1 <= bits <= 16:
        raise QsposError(f"{key}: bit-width {bits} is outside 1-16")


def _validate_optim(o: OptimConfig, section: str) -> None:
    """Ranges of the optimiser settings shared by supernet training and fine-tuning."""
    checks = [
        ("epochs", o.epochs > 0, "must be positive"),
        ("max_steps", o.max_steps is None or o.max_steps > 0, "must be positive or null"),
        ("lr", o.lr > 0, "must be positive"),
        ("momentum", 0 <= o.momentum < 1, "must be in [0, 1)"),
        ("weight_decay", o.weight_decay >= 0, "must be >= 0"),
        ("warmup_epochs", o.warmup_epochs >= 0, "must be >= 0"),
        ("label_smoothing", 0 <= o.label_smoothing < 1, "must be in [0, 1)"),
        ("log_every", o.log_every > 0, "must be positive"),
        ("checkpoint_every", o.checkpoint_every > 0, "must be positive"),
        ("distill_temperature", o.distill_temperature > 0, "must be positive"),
        ("distill_weight", 0 <= o.distill_weight <= 1, "must be in [0, 1]"),
    ]
    for key, ok, why in checks:
        if not ok:
            raise QsposError(f"{section}.{key}: {why}, got {getattr(o, key)!r}")


def _validate(cfg: Config) -> None:
    _validate_space(cfg.space)
    positive = {
        "model.num_classes": cfg.model.num_classes,
        "model.in_channels": cfg.model.in_channels,
        "model.input_size": cfg.model.input_size,
        "data.batch_size": cfg.data.batch_size,
        "data.eval_batch_size": cfg.data.eval_batch_size,
    }
    for key, v in positive.items():
        if v <= 0:
            raise QsposError(f"{key}: must be positive, got {v}")
    if cfg.data.train_subset is not None and cfg.data.train_subset <= 0:
        raise QsposError(f"data.train_subset: must be positive or null, got {cfg.data.train_subset}")
    if cfg.data.synthetic_size <= 0:
        raise QsposError(f"data.synthetic_size: must be positive, got {cfg.data.synthetic_size}")
    for key in ("float.device", "train.device", "finetune.device", "search.device"):
        section, name = key.split(".")
        device = getattr(getattr(cfg, section), name)
        if not _DEVICE.match(device):
            raise QsposError(f"{key}: {device!r} is not a device (auto, cpu, cuda, cuda:N or mps)")
    for key in ("mean", "std"):
        values = getattr(cfg.data, key)
        if values is not None and len(values) != cfg.model.in_channels:
            raise QsposError(f"data.{key}: give one value per input channel ({cfg.model.in_channels}), got {values}")
    if cfg.data.std is not None and any(s <= 0 for s in cfg.data.std):
        raise QsposError(f"data.std: every value must be positive, got {cfg.data.std}")
    if cfg.data.val_size < 0:
        raise QsposError(f"data.val_size: must be >= 0, got {cfg.data.val_size}")
    if cfg.data.workers < 0:
        raise QsposError(f"data.workers: must be >= 0, got {cfg.data.workers}")
    _validate_optim(cfg.float, "float")
    _validate_optim(cfg.train, "train")
    _validate_optim(cfg.finetune, "finetune")
    if cfg.float.distill != "none":
        raise QsposError(f"float.distill: the float teacher learns from the labels only, got {cfg.float.distill!r}")
    if cfg.train.inplace_paths < 0:
        raise QsposError(f"train.inplace_paths: must be >= 0, got {cfg.train.inplace_paths}")
    if cfg.train.threshold_init_batches < 0:
        raise QsposError(f"train.threshold_init_batches: must be >= 0, got {cfg.train.threshold_init_batches}")
    if cfg.train.sampling == "budget" and not cfg.train.sampling_budget:
        raise QsposError("train.sampling_budget: sampling 'budget' needs a budget, e.g. {bitops: uniform 3,3}")
    _validate_finetune(cfg.finetune)
    if cfg.export.check_batch <= 0:
        raise QsposError(f"export.check_batch: must be positive, got {cfg.export.check_batch}")
    if not cfg.export.formats or len(set(cfg.export.formats)) != len(cfg.export.formats):
        raise QsposError(f"export.formats: give one or more distinct formats, got {cfg.export.formats}")
    if not cfg.log.interval_s > 0:
        raise QsposError(f"log.interval_s: must be positive, got {cfg.log.interval_s!r}")
    _validate_search(cfg.search)


def _validate_space(s: SpaceConfig) -> None:
    if s.pairs is not None and (s.weight_bits is not None or s.act_bits is not None):
        raise QsposError("space: give either pairs or weight_bits x act_bits, not both")
    if s.pairs is None and (s.weight_bits is None or s.act_bits is None):
        raise QsposError("space: give pairs, or both weight_bits and act_bits")
    if s.pairs is not None:
        if not s.pairs:
            raise QsposError("space.pairs: empty domain")
        for i, pair in enumerate(s.pairs):
            if len(pair) != 2:
                raise QsposError(f"space.pairs[{i}]: expected [w_bits, a_bits], got {pair}")
            _check_bits(pair[0], f"space.pairs[{i}]")
            _check_bits(pair[1], f"space.pairs[{i}]")
    else:
        for key in ("weight_bits", "act_bits"):
            values = getattr(s, key)
            if not values:
                raise QsposError(f"space.{key}: empty domain")
            for i, b in enumerate(values):
                _check_bits(b, f"space.{key}[{i}]")
    if not s.width_multipliers:
        raise QsposError("space.width_multipliers: empty domain")
    for i, m in enumerate(s.width_multipliers):
        if not 0 < m <= 4:
            raise QsposError(f"space.width_multipliers[{i}]: {m} is outside (0, 4]")
    for key in ("pairs", "weight_bits", "act_bits", "width_multipliers"):
        values = [tuple(v) if isinstance(v, list) else v for v in getattr(s, key) or []]
        if len(set(values)) != len(values):
            raise QsposError(f"space.{key}: duplicate entries (the space would count and sample them twice)")
    for part in ("first", "last"):
        fixed = getattr(s, part)
        _check_bits(fixed.w_bits, f"space.{part}.w_bits", allow_none=True)
        _check_bits(fixed.a_bits, f"space.{part}.a_bits", allow_none=True)


def _validate_finetune(f: FinetuneConfig) -> None:
    if f.init == "float" and not f.float_checkpoint:
        raise QsposError("finetune.float_checkpoint: init 'float' needs the float model's checkpoint")
    if f.pick is not None and f.pick < 0:
        raise QsposError(f"finetune.pick: must be >= 0, got {f.pick}")


def _validate_search(s: SearchConfig) -> None:
    counts = {"population": (s.population, 1), "topk": (s.topk, 1), "iterations": (s.iterations, 1),
              "max_tries": (s.max_tries, 1), "calib_images": (s.calib_images, 1),
              "mutation_count": (s.mutation_count, 0), "crossover_count": (s.crossover_count, 0)}
    for key, (v, least) in counts.items():
        if v < least:
            raise QsposError(f"search.{key}: must be >= {least}, got {v}")
    if not 0 <= s.mutation_prob <= 1:
        raise QsposError(f"search.mutation_prob: {s.mutation_prob} is outside [0, 1]")
    if s.floor is not None and not 0 < s.floor <= 1:
        raise QsposError(f"search.floor: a share of each budget's bound in (0, 1] (or null), got {s.floor}")
    if s.val_images is not None and s.val_images < 1:
        raise QsposError(f"search.val_images: must be positive or null, got {s.val_images}")
    names = check_budget_entries(s.budgets, "search.budgets")
    unknown = [n for n in s.random_baseline if n not in names] if isinstance(s.random_baseline, list) else []
    if unknown:
        raise QsposError(f"search.random_baseline: no budget named {unknown[0]!r} "
                         f"(budgets: {', '.join(names) or 'none'})")
