"""Fine-tuning (``qspos finetune``) and evaluation (``qspos eval``) of standalone quantized nets.

A chosen arch becomes a plain Brevitas network (``Supernet.extract``: fixed bits and channels,
no supernet machinery left). It starts from the supernet's weights and learned thresholds (what
the one-shot search scored), from scratch, or from a float model of the same backbone; BatchNorm
is recalibrated on training images; then quantization-aware training runs in the shared loop
(``trainer.fit``: progress, checkpoint, resume, torchrun) and the net is measured on the held-out
val split and on the test split, which only this stage and ``qspos eval`` ever see.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from qspos.arch import Arch
from qspos.checkpoint import atomic_save, load_checkpoint
from qspos.config import Config, load_config
from qspos.cost import CostModel
from qspos.data import DataSplits, first_images, load_splits, make_loader
from qspos.distributed import Dist, init_distributed, pick_device
from qspos.errors import QsposError
from qspos.evaluate import evaluate_top1, recalibrate_bn
from qspos.progress import MetricsLog, console, percent, table
from qspos.rundir import SUPERNET_SECTIONS, fingerprint, open_run_dir, resolve_run_dir, write_json
from qspos.search import SearchResult
from qspos.space import Space
from qspos.supernet import Supernet, build_supernet, load_supernet
from qspos.train import CHECKPOINT as SUPERNET_CHECKPOINT
from qspos.train import init_act_thresholds
from qspos.trainer import fit
from quant_kernels.brevitas_impl import set_fused_kernels

FINETUNE_DIR = "finetune"
MODEL = "model.pt"  # the fine-tuned net: model state, arch, fingerprint
TRAIN_CHECKPOINT = "train.pt"  # the training loop's resumable checkpoint
RESULT = "result.json"
SEARCH_RESULTS = Path("search") / "results.json"
_FLOAT_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class Target:
    """One net to fine-tune: its directory under ``finetune/`` and its arch."""

    name: str
    arch: Arch
    search_val_top1: float | None = None  # the supernet's val top-1 for it, as the search measured


@dataclass
class FinetuneResult:
    """What ``result.json`` holds for one fine-tuned net (accuracies are fractions)."""

    name: str
    arch: Arch
    dir: Path
    init: str
    search_val_top1: float | None
    val_top1_before: float | None  # after BN recalibration, before any training step
    val_top1: float | None
    val_top5: float | None
    test_top1: float
    test_top5: float
    macs: int
    bitops: int
    searched_bitops: int
    size_bits: int
    steps: int
    train_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return _record(self, dir=str(self.dir))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FinetuneResult:
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw.update(arch=Arch.from_dict(d["arch"]), dir=Path(d["dir"]))
        return cls(**kw)


@dataclass
class EvalResult:
    """Test-split accuracy and cost of one checkpoint (+ arch)."""

    checkpoint: Path
    kind: str  # "finetune" (arch stored inside) or "supernet" (arch given, BN recalibrated)
    arch: Arch
    test_top1: float
    test_top5: float
    macs: int
    bitops: int
    searched_bitops: int
    size_bits: int

    def to_dict(self) -> dict[str, Any]:
        return _record(self, checkpoint=str(self.checkpoint))


def _record(result: FinetuneResult | EvalResult, **paths: str) -> dict[str, Any]:
    """A result as JSON-ready fields: the arch as a dict with its digest, the size in bytes too."""
    d = asdict(result)
    d.update(paths, arch=result.arch.to_dict(), digest=result.arch.digest(), size_bytes=result.size_bits / 8)
    return d


# ---------------------------------------------------------------------------- what to fine-tune


def finetune_targets(
    cfg: Config, run_dir: Path, space: Space, arch: Arch | None = None, pick: int | None = None
) -> list[Target]:
    """The nets to fine-tune: ``arch``; else the ``pick``-th best arch (0: the best) of every
    budget in the search results, plus each budget's uniform arch with ``finetune.baselines``."""
    if arch is not None:
        return [Target(f"arch-{space.validate(arch).digest()}", arch)]
    pick = cfg.finetune.pick if pick is None else pick
    rank = pick or 0
    targets = []
    for budget in SearchResult.load(run_dir / SEARCH_RESULTS).budgets:
        name, best = budget["name"], budget.get("best") or []
        if rank >= len(best):
            raise QsposError(f"pick {rank}: budget {name} has {len(best)} search result(s)")
        entry = best[rank]
        targets.append(Target(name if rank == 0 else f"{name}-{rank}",
                              space.validate(Arch.from_dict(entry["arch"])), entry.get("val_top1")))
        uniform = budget.get("uniform")
        if cfg.finetune.baselines and uniform and uniform.get("in_domain"):
            targets.append(Target(f"{name}-uniform", space.uniform(uniform["w_bits"], uniform["a_bits"]),
                                  uniform.get("val_top1")))
    if not targets:
        raise QsposError(f"{run_dir / SEARCH_RESULTS} holds no budgets")
    return targets


# ---------------------------------------------------------------------------- building the net


@torch.no_grad()
def load_float_weights(supernet: Supernet, path: str | Path) -> None:
    """Copy a float backbone's weights (a state_dict with the same module names, e.g.
    torchvision's ResNet-18 for ``resnet18``) into the supernet, each tensor into the leading
    slice of the max-width one, then set every weight threshold from the new weights."""
    state = load_checkpoint(path)
    if isinstance(state.get("model"), Mapping):
        state = state["model"]
    own = {k: v for k, v in supernet.net.state_dict().items()
           if "_quant." not in k and k.rsplit(".", 1)[-1] in _FLOAT_KEYS}
    unknown = sorted(set(state) - set(own))
    missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
    if unknown or missing:
        raise QsposError(f"{path} is not a float state_dict of this model: "
                         f"missing {missing[:3]}, unknown {unknown[:3]}")
    for key, value in state.items():
        dst = own[key]
        if value.dim() != dst.dim() or any(a > b for a, b in zip(value.shape, dst.shape)):
            raise QsposError(f"{path}: {key} has shape {tuple(value.shape)}, the model's is {tuple(dst.shape)}")
        dst[tuple(slice(n) for n in value.shape)].copy_(value)
    for _, layer in supernet.layer_items():
        layer.init_weight_thresholds()


def init_model(cfg: Config, arch: Arch, run_dir: Path, calib: Any, device: torch.device) -> nn.Module:
    """The standalone Brevitas net of ``arch``, initialised as ``finetune.init`` says, with its
    BatchNorm statistics recalibrated on ``calib`` (a loader of training images)."""
    init = cfg.finetune.init
    if init == "supernet":
        supernet = load_supernet(cfg, run_dir / SUPERNET_CHECKPOINT).to(device)
    else:  # fresh weights (or the float model's); thresholds from them and from the data
        torch.manual_seed(cfg.seed)
        supernet = build_supernet(cfg).to(device)
        if init == "float":
            load_float_weights(supernet, cfg.finetune.float_checkpoint)
        init_act_thresholds(supernet, calib, device)
    model = supernet.extract(arch)
    if cfg.quant.backend != "reference":  # same values, fewer passes: the fused tensor_quant
        set_fused_kernels(model)
    recalibrate_bn(model, calib, device)
    return model


def load_finetuned(cfg: Config, path: str | Path) -> tuple[nn.Module, Arch]:
    """A fine-tuned net (``model.pt``) and its arch, rebuilt from the config's backbone."""
    return _finetuned_from_state(cfg, load_checkpoint(path), Path(path))


def _finetuned_from_state(cfg: Config, state: dict, path: Path) -> tuple[nn.Module, Arch]:
    if state.get("fingerprint") != fingerprint(cfg, *SUPERNET_SECTIONS):
        raise QsposError(f"{path} holds a net of another model/space config than this one")
    supernet = build_supernet(cfg)
    arch = supernet.space.validate(Arch.from_dict(state["arch"]))
    model = supernet.extract(arch)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as e:
        raise QsposError(f"{path} does not fit the net of its arch: {str(e).splitlines()[0]}") from None
    return model.eval(), arch


# ---------------------------------------------------------------------------- fine-tuning


def finetune(
    cfg: Config,
    run_dir: str | Path | None = None,
    arch: Arch | str | Path | None = None,
    pick: int | None = None,
    resume: bool = False,
) -> list[FinetuneResult]:
    """Fine-tune the chosen archs of a run (see :func:`finetune_targets`) into
    ``run_dir/finetune/<name>/``. With ``resume``, finished nets are kept and a killed one goes on
    from its checkpoint; without it, existing outputs are refused. Works under torchrun."""
    run_dir = resolve_run_dir(cfg, run_dir)
    if isinstance(arch, (str, Path)):
        arch = Arch.load(arch)
    reference = build_supernet(cfg)
    targets = finetune_targets(cfg, run_dir, reference.space, arch, pick)
    if not resume:
        claim_outputs(run_dir, targets)
    device = pick_device(cfg.finetune.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist = init_distributed(device)
    splits = load_splits(cfg.data, cfg.model)
    costs = CostModel(reference, cfg.input_shape)
    results = []
    for target in targets:
        out = run_dir / FINETUNE_DIR / target.name
        if resume and (out / RESULT).is_file() and (out / MODEL).is_file():
            results.append(FinetuneResult.from_dict(json.loads((out / RESULT).read_text())))
            continue
        _finetune_one(cfg, target, run_dir, splits, costs, device, dist, resume)
        results.append(FinetuneResult.from_dict(json.loads((out / RESULT).read_text())))
    return results


def claim_outputs(run_dir: Path, targets: list[Target]) -> None:
    """Refuse to start over a net that was (or is being) fine-tuned: nothing is overwritten."""
    for t in targets:
        out = run_dir / FINETUNE_DIR / t.name
        if any((out / f).exists() for f in (MODEL, TRAIN_CHECKPOINT, RESULT)):
            raise QsposError(f"{out} already holds a fine-tuned net: pass --resume to continue, "
                             "or choose another --out")


def _finetune_one(cfg: Config, target: Target, run_dir: Path, splits: DataSplits, costs: CostModel,
                  device: torch.device, dist: Dist, resume: bool) -> None:
    out = run_dir / FINETUNE_DIR / target.name
    d, f = cfg.data, cfg.finetune
    calib = make_loader(first_images(splits.calib, cfg.search.calib_images, d.eval_batch_size),
                        d.eval_batch_size, shuffle=False)
    model = init_model(cfg, target.arch, run_dir, calib, device)
    val_before = _top(model, splits.val, cfg, device)[0]
    if dist.main:
        console.print(f"finetune {target.name}: arch {target.arch.digest()}, init {f.init}, "
                      f"val top-1 before {percent(val_before)}")
    supernet_fp = fingerprint(cfg, *SUPERNET_SECTIONS)
    res = fit(
        model, splits.train, f,
        batch_size=d.batch_size, seed=cfg.seed, checkpoint=out / TRAIN_CHECKPOINT,
        fingerprint=f"{supernet_fp}-{target.arch.digest()}", resume=resume,
        recipe={"data": [d.dataset, d.val_size, d.split_seed, d.train_subset, d.augment],
                "init": [f.init, f.float_checkpoint]},
        metrics=MetricsLog(run_dir / "metrics.jsonl", f"finetune/{target.name}", enabled=dist.main),
        dist=dist, device=device, workers=d.workers, desc=f"finetune {target.name}",
    )
    if dist.main:
        val1, val5 = _top(model, splits.val, cfg, device)
        test1, test5 = _top(model, splits.test, cfg, device)
        cost = costs.metrics(target.arch)
        result = FinetuneResult(
            name=target.name, arch=target.arch, dir=out, init=f.init, search_val_top1=target.search_val_top1,
            val_top1_before=val_before, val_top1=val1, val_top5=val5, test_top1=test1, test_top5=test5,
            steps=res.steps, train_seconds=round(res.seconds, 1), **cost,
        )
        atomic_save({"model": model.state_dict(), "arch": target.arch.to_dict(), "fingerprint": supernet_fp,
                     "name": target.name, "complete": True}, out / MODEL)
        target.arch.save(out / "arch.yaml")
        write_json(out / RESULT, result.to_dict())
    dist.barrier()


def _top(model: nn.Module, dataset: Dataset, cfg: Config, device: torch.device) -> tuple[float | None, float | None]:
    """(top-1, top-5) on a split, or (None, None) when it is empty (e.g. ``data.val_size: 0``)."""
    if len(dataset) == 0:
        return None, None
    loader = make_loader(dataset, cfg.data.eval_batch_size, shuffle=False, workers=cfg.data.workers)
    return evaluate_top1(model, loader, device)


# ---------------------------------------------------------------------------- evaluation


def evaluate_checkpoint(cfg: Config, checkpoint: str | Path, arch: Arch | str | Path | None = None) -> EvalResult:
    """Test top-1/top-5, BitOps and size of a fine-tuned net (``model.pt``, arch inside), or of
    one path of a supernet checkpoint (``arch`` given; BN recalibrated on training images)."""
    path = Path(checkpoint)
    if isinstance(arch, (str, Path)):
        arch = Arch.load(arch)
    state = load_checkpoint(path)
    device = pick_device(cfg.finetune.device)
    splits = load_splits(cfg.data, cfg.model)
    if "arch" in state:
        model, stored = _finetuned_from_state(cfg, state, path)
        if arch is not None and arch != stored:
            raise QsposError(f"{path} holds arch {stored.digest()}, not the given {arch.digest()}")
        arch, kind = stored, "finetune"
    else:
        if arch is None:
            raise QsposError(f"{path} is not a fine-tuned net (no arch inside): give the arch "
                             "to evaluate on this supernet with --arch")
        supernet = load_supernet(cfg, path, require_complete=False).to(device)
        model, kind = supernet.extract(supernet.space.validate(arch)), "supernet"
        d = cfg.data
        recalibrate_bn(model, make_loader(first_images(splits.calib, cfg.search.calib_images, d.eval_batch_size),
                                          d.eval_batch_size, shuffle=False), device)
    top1, top5 = _top(model.to(device), splits.test, cfg, device)
    cost = CostModel(build_supernet(cfg), cfg.input_shape).metrics(arch)
    return EvalResult(path, kind, arch, top1, top5, **cost)


# ---------------------------------------------------------------------------- command line


def cli_finetune(args: argparse.Namespace) -> int:
    """``qspos finetune CONFIG [--out DIR] [--arch F | --pick N] [--resume] [--set ...]``."""
    from rich.console import Console

    cfg = load_config(args.config, args.overrides)
    run_dir = resolve_run_dir(cfg, args.out)
    arch = Arch.load(args.arch) if args.arch else None
    if not args.resume:  # before config.yaml is rewritten
        claim_outputs(run_dir, finetune_targets(cfg, run_dir, build_supernet(cfg).space, arch, args.pick))
    if os.environ.get("RANK", "0") == "0":
        open_run_dir(cfg, args.out)
    results = finetune(cfg, run_dir, arch=arch, pick=args.pick, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":
        Console().print(results_table(results, f"fine-tuned nets: {cfg.name}"))
    return 0


def results_table(results: list[FinetuneResult], title: str) -> Any:
    rows = [[r.name, f"{r.bitops / 1e6:.2f}", f"{r.size_bits / 8 / 1024:.1f}", percent(r.search_val_top1),
             percent(r.val_top1_before), percent(r.val_top1), percent(r.test_top1)] for r in results]
    columns = ["name", "MBitOps", "KiB", "search val", "val before", "val top-1", "test top-1"]
    return table(title, columns, rows)


def cli_eval(args: argparse.Namespace) -> int:
    """``qspos eval CONFIG --checkpoint PATH [--arch F]``: a table, and a JSON file beside it."""
    from rich.console import Console

    cfg = load_config(args.config, args.overrides)
    res = evaluate_checkpoint(cfg, args.checkpoint, args.arch)
    rows = [["test top-1", percent(res.test_top1)], ["test top-5", percent(res.test_top5)],
            ["MACs (M)", f"{res.macs / 1e6:.3f}"], ["BitOps (G)", f"{res.bitops / 1e9:.4f}"],
            ["searched BitOps (G)", f"{res.searched_bitops / 1e9:.4f}"],
            ["weights (KiB)", f"{res.size_bits / 8 / 1024:.2f}"], ["arch", res.arch.digest()]]
    Console().print(table(f"{res.kind} checkpoint {res.checkpoint}", ["name", "value"], rows))
    path = res.checkpoint.with_suffix(".eval.json") if res.kind == "finetune" else \
        res.checkpoint.with_name(f"{res.checkpoint.stem}.eval-{res.arch.digest()}.json")
    try:
        write_json(path, res.to_dict())
        console.print(f"wrote {path}")
    except OSError:  # a read-only place: the numbers still reach the user
        print(json.dumps(res.to_dict()))
    return 0
