"""The one training loop, shared by supernet training and fine-tuning of a standalone net.

``fit`` is resumable to the bit: the data order of an epoch is a function of (seed, epoch), a
checkpoint holds the step (hence the position inside the shuffled epoch), model, optimiser,
scheduler, AMP scaler, every RNG (augmentation runs on the global torch RNG when workers=0)
and the state of the caller's objects (e.g. the path sampler), so a run killed and resumed ends
with exactly the weights of an uninterrupted one (single process, CPU, workers=0).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.distributed as torch_dist
from torch import Tensor, nn
from torch.utils.data import Dataset

from qspos.errors import QsposError
from qspos.runtime.checkpoint import (
    atomic_save,
    load_checkpoint,
    load_model_state,
    rng_state,
    seed_everything,
    set_rng_state,
)
from qspos.runtime.config import OptimConfig
from qspos.runtime.data import make_loader
from qspos.runtime.distributed import Dist
from qspos.runtime.optim import ActiveParts, make_optimizer
from qspos.runtime.progress import MetricsLog, console, progress_bar
from qspos.runtime.task import current

if TYPE_CHECKING:
    from qspos.runtime.teacher import Teacher

# OptimConfig fields that do not change the trajectory (a resume may change them).
_NOT_RECIPE = {"log_every", "checkpoint_every", "amp", "channels_last", "device"}
SINGLE = Dist()  # one process, no process group
MANY_EPOCHS = 10_000  # a training longer than this is accepted, with a warning: likely a typo (1e9)
# what a resumable training checkpoint holds
TRAIN_STATE_KEYS = ("fingerprint", "recipe", "model", "optimizer", "scheduler", "scaler", "rng", "step", "state",
                    "summary")


class Stateful(Protocol):
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class FitResult:
    steps: int  # updates done in all (this session and the ones before a resume)
    epochs: float
    loss: float  # mean training loss and top-1 (fraction) over the last log interval
    top1: float
    images_per_s: float  # this session's throughput (all ranks together); 0 if nothing ran
    seconds: float  # this session's wall time
    checkpoint: Path


def fit(
    model: nn.Module,
    dataset: Dataset,
    optim: OptimConfig,
    *,
    batch_size: int,
    seed: int,
    checkpoint: str | Path,
    fingerprint: str,
    resume: bool = False,
    recipe: Mapping[str, Any] | None = None,
    before_step: Callable[[int], ActiveParts | None] | None = None,
    state: Mapping[str, Stateful] | None = None,
    metrics: MetricsLog | None = None,
    dist: Dist = SINGLE,
    device: torch.device | str = "cpu",
    workers: int = 0,
    desc: str = "train",
    on_ready: Callable[[], None] | None = None,
    progress_interval_s: float = 30.0,
    compile_model: bool = False,
    teacher: Teacher | None = None,
) -> FitResult:
    """Train ``model`` (classification, cross-entropy; or the running task's loss, see
    ``runtime.task``) on ``dataset`` as ``optim`` says.

    - ``batch_size`` is global: each of ``dist.world`` ranks takes ``batch_size / world`` images
      of every step (DDP when world > 1; every rank must run the same ``before_step``).
      An epoch is ``len(dataset) // batch_size`` steps; ``optim.max_steps`` caps the total.
    - ``seed`` fixes the data order of every epoch (and augmentation on a fresh start).
    - ``checkpoint``: written atomically every ``optim.checkpoint_every`` steps and at the end
      with keys ``model``, ``optimizer``, ``scheduler``, ``scaler``, ``rng`` (per rank), ``step``,
      ``state`` (of ``state``), ``fingerprint``, ``recipe``, ``summary`` and ``complete``.
      An existing one is refused unless ``resume``; a resume continues from it, and is refused
      when its ``fingerprint`` (the caller's identity of the model) or its recipe (the optimiser
      settings, batch size, seed, dataset size and the caller's ``recipe`` entries) differ.
    - ``before_step(step)`` runs before each step's forward (e.g. activate a sampled path) and
      may return the used part of each parameter: the optimiser leaves the rest unchanged.
    - ``state``: objects whose ``state_dict()`` rides in the checkpoint (e.g. a sampler's RNG).
    - ``metrics``: one line per ``optim.log_every`` steps (step, epoch, lr, loss, top1, img_s).
    - ``on_ready()`` runs once every input is accepted (a resumed checkpoint included, and the
      first batch's labels checked against the model's outputs), before anything is written:
      e.g. to record the config the run now goes on with.
    - ``progress_interval_s``: seconds between plain progress lines outside a terminal.
    - ``compile_model``: run the forward under ``torch.compile`` (the caller makes the model's
      shapes path-independent, e.g. ``Supernet.set_masked``).
    - ``teacher``: learn from its logits as well as the labels (``optim.distill: teacher``); it is
      frozen. The caller puts its digest in ``recipe``, so that a resume must match it.
    AMP (float16) and channels_last are used on CUDA only, as ``optim.amp/channels_last`` say.
    """
    device = torch.device(device)
    path = Path(checkpoint)
    cuda = device.type == "cuda"
    if cuda and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if batch_size % dist.world:
        raise QsposError(f"batch size {batch_size} is not divisible by the {dist.world} processes")
    steps_per_epoch = len(dataset) // batch_size
    if steps_per_epoch == 0:
        raise QsposError(f"batch size {batch_size} is larger than the training split ({len(dataset)} images)")
    total = max(1, round(optim.epochs * steps_per_epoch))
    if optim.max_steps is not None:
        total = min(total, optim.max_steps)
    warmup = min(total, round(optim.warmup_epochs * steps_per_epoch))
    if dist.main:
        _warn_if_endless(desc, total, steps_per_epoch)
    full_recipe = training_recipe(optim, batch_size, seed, len(dataset), recipe)

    step, summary = 0, {"loss": math.nan, "top1": math.nan}
    ckpt = None
    if claim_checkpoint(path, resume).exists():
        ckpt = load_checkpoint(path, require=TRAIN_STATE_KEYS)
        _check_resumable(ckpt, path, fingerprint, full_recipe)
        load_model_state(model, ckpt["model"], path)  # before the optimiser: it holds these parameters
    model.to(device)
    if cuda and optim.channels_last:
        model.to(memory_format=torch.channels_last)
    opt, sched = make_optimizer(model, optim, total, warmup)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and optim.amp)
    state = dict(state or {})
    if ckpt is not None:
        try:
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
            scaler.load_state_dict(ckpt["scaler"])
            for name, obj in state.items():
                obj.load_state_dict(ckpt["state"][name])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
            raise QsposError(f"{path} does not fit this run: {(str(e).splitlines() or [repr(e)])[0]}") from None
        rngs = ckpt["rng"]
        set_rng_state(rngs[dist.rank] if len(rngs) == dist.world else rngs[0])
        step, summary = ckpt["step"], ckpt["summary"]
        if dist.main:
            console.print(f"resuming {path} at step {step}/{total}")
    else:  # every global RNG: augmentation in a user's dataset may draw from any of them
        seed_everything(seed + dist.rank)
    ready = on_ready if on_ready is not None else (lambda: None)
    if step >= total:  # nothing left to run: the checkpoint is accepted as it is
        ready()

    def save(done: bool) -> None:
        watch.check()
        watch.check_weights(model, step)  # a checkpoint never holds non-finite weights
        rngs = _gather(rng_state(), dist)
        if dist.main:
            atomic_save({
                "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "scaler": scaler.state_dict(), "rng": rngs, "step": step,
                "state": {name: obj.state_dict() for name, obj in state.items()},
                "fingerprint": fingerprint, "recipe": full_recipe, "summary": summary, "complete": done,
            }, path)
        dist.barrier()

    net = model
    if dist.enabled:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if cuda else None, static_graph=True
        )
    if compile_model:
        net = torch.compile(net)
    criterion = nn.CrossEntropyLoss(label_smoothing=optim.label_smoothing)
    task_loss = current().loss  # the caller's loss(model, batch), if any: no logits, no top-1
    n_epochs = math.ceil(total / steps_per_epoch)
    local_batch = batch_size // dist.world
    start_step, t_start = step, time.perf_counter()
    meter = _Meter(device)
    watch = _Divergence(desc, optim.lr, path, device, dist)
    model.train()
    with progress_bar(enabled=dist.main and step < total, interval_s=progress_interval_s) as bar:
        task = bar.add_task(desc, total=total, completed=step, info="")
        while step < total:
            epoch, pos = divmod(step, steps_per_epoch)
            order = epoch_order(len(dataset), batch_size, seed, epoch, dist)[pos * local_batch :]
            loader = make_loader(dataset, local_batch, shuffle=False, seed=seed + epoch, workers=workers,
                                 order=order)
            for x, y in loader:
                active = before_step(step) if before_step is not None else None
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if cuda and optim.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                amp = torch.autocast("cuda", dtype=torch.float16) if scaler.is_enabled() else contextlib.nullcontext()
                try:
                    with amp:
                        if task_loss is None:
                            logits = net(x)
                            if step == start_step:  # once: a label the model cannot output is bad input
                                check_labels(logits, y)
                            loss = criterion(logits, y) if teacher is None else \
                                teacher.loss(x, logits, y, optim.label_smoothing)
                        else:
                            logits, loss = None, task_loss(net, (x, y))
                    watch.see(step, loss)
                    opt.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(opt, active)
                except ArithmeticError:  # a quantizer met a non-finite scale: the weights diverged earlier
                    watch.check()  # names the step whose loss went bad, when one did
                    watch.fail(step, "a quantizer met a non-finite scale")
                if step == start_step:  # the first step ran: its inputs are accepted, nothing written yet
                    ready()
                scaler.update()
                sched.step()
                meter.add(loss.detach(), None if logits is None else logits.detach(), y)
                step += 1
                bar.update(task, advance=1)
                last = step == total
                if step % optim.log_every == 0 or last:
                    watch.check()
                    summary = meter.flush(dist)
                    img_s = summary.pop("images") / max(summary.pop("seconds"), 1e-9)
                    lr = sched.get_last_lr()[0]
                    info = (f"ep {epoch + 1}/{n_epochs}  loss {summary['loss']:.3f}  "
                            f"{_top1_text(summary['top1'], '.1f', 'top1 ')}{img_s:.0f} img/s")
                    bar.update(task, info=info)
                    if metrics is not None:
                        metrics.write(step=step, epoch=round(step / steps_per_epoch, 4), lr=lr, **summary,
                                      img_s=round(img_s, 1))
                if last:
                    break
                if step % optim.checkpoint_every == 0:
                    save(done=False)
    if step > start_step:
        _sync_buffers(model, dist)
        save(done=True)
    seconds = time.perf_counter() - t_start
    images = (step - start_step) * batch_size
    result = FitResult(step, step / steps_per_epoch, summary["loss"], summary["top1"],
                       images / seconds if images else 0.0, seconds, path)
    if dist.main:
        console.print(
            f"{desc}: {result.steps} steps ({result.epochs:.2f} epochs), loss {result.loss:.4f}, "
            f"{_top1_text(result.top1, '.2f', 'top-1 ', ', ')}{result.images_per_s:.0f} img/s, {seconds:.0f} s"
        )
    return result


def _top1_text(top1: float, spec: str, label: str, end: str = "  ") -> str:
    """The training top-1 for a progress line; nothing under a caller's loss, which gives no logits
    to count it on (it would read ``nan%``)."""
    return "" if math.isnan(top1) else f"{label}{100 * top1:{spec}}%{end}"


def check_labels(logits: torch.Tensor, labels: torch.Tensor) -> None:
    """Refuse class labels outside the model's outputs (``model.num_classes`` below the data's
    classes, or a dataset's own labels out of range) with one line, not the loss's IndexError."""
    if logits.ndim != 2 or labels.ndim != 1 or labels.is_floating_point():
        return
    n = logits.shape[1]
    bad = labels[(labels < 0) | (labels >= n)]
    if len(bad):
        raise QsposError(f"the data holds label {int(bad[0])}, but the model has {n} outputs (classes 0..{n - 1}): "
                         "set model.num_classes to the data's number of classes, or fix the dataset's labels")


def _warn_if_endless(desc: str, total: int, steps_per_epoch: int) -> None:
    """Say so when a training would outlast any sensible budget (``epochs: 1e9`` runs, with an ETA
    of millions of hours): it is not refused, since nothing is wrong with it but its length."""
    epochs = total / steps_per_epoch
    if epochs > MANY_EPOCHS:
        console.print(f"[yellow]warning: {desc}: {epochs:.3g} epochs ({total:,} steps) is over {MANY_EPOCHS:,} "
                      "epochs, likely a typo in the config's epochs; max_steps caps a training")


def training_recipe(optim: OptimConfig, batch_size: int, seed: int, dataset_size: int,
                    extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything a training trajectory depends on: a resume must match it exactly."""
    return {
        **{f.name: getattr(optim, f.name) for f in fields(optim) if f.name not in _NOT_RECIPE},
        "batch_size": batch_size, "seed": seed, "dataset_size": dataset_size, **(extra or {}),
    }


def check_finished(path: Path, fingerprint: str, recipe: dict[str, Any]) -> None:
    """Refuse to reuse a finished training (its checkpoint at ``path``) for another model or
    recipe: a resumed run must not keep results that its config no longer describes."""
    _check_resumable(load_checkpoint(path, require=TRAIN_STATE_KEYS), path, fingerprint, recipe)


def claim_checkpoint(path: Path, resume: bool) -> Path:
    """``path``, after refusing to start a run over a checkpoint that exists without ``resume``."""
    if path.exists() and not resume:
        raise QsposError(f"{path} already exists: pass --resume to continue it, or choose another --out")
    return path


def epoch_order(n: int, batch_size: int, seed: int, epoch: int, dist: Dist = SINGLE) -> list[int]:
    """This rank's item indices of one epoch, in order: a permutation fixed by (seed, epoch),
    cut into global batches (the incomplete last one dropped), each rank taking its slice."""
    steps = n // batch_size
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)[: steps * batch_size]
    return perm.view(steps, dist.world, batch_size // dist.world)[:, dist.rank].flatten().tolist()


def _check_resumable(ckpt: dict, path: Path, fingerprint: str, recipe: dict) -> None:
    if ckpt.get("fingerprint") != fingerprint:
        raise QsposError(f"{path} was written for another model/config (fingerprint "
                         f"{ckpt.get('fingerprint')} != {fingerprint}); choose another --out")
    old = ckpt["recipe"]
    for key in sorted(set(old) | set(recipe)):
        if old.get(key) != recipe.get(key):
            raise QsposError(f"cannot resume {path}: {key} was {old.get(key)!r}, now {recipe.get(key)!r}")


def _gather(obj: Any, dist: Dist) -> list:
    if not dist.enabled:
        return [obj]
    out: list = [None] * dist.world
    torch_dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def _sync_buffers(model: nn.Module, dist: Dist) -> None:
    """Rank 0's buffers (BN statistics of its last batch) everywhere, so every rank ends equal."""
    if dist.enabled:
        for b in model.buffers():
            torch_dist.broadcast(b, 0)


class _Divergence:
    """Watches for a non-finite loss without a host sync per step: the first such step is kept
    on the device and read at log and checkpoint time, which then stops training with a clear
    error, before a checkpoint could take in the bad weights (the last good one stays on disk)."""

    def __init__(self, desc: str, lr: float, path: Path, device: torch.device, dist: Dist):
        self.desc, self.lr, self.path, self.dist = desc, lr, path, dist
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def see(self, step: int, loss: Tensor) -> None:
        bad = ~torch.isfinite(loss.detach()) & (self.first_bad < 0)
        self.first_bad = torch.where(bad, torch.full_like(self.first_bad, step), self.first_bad)

    def check(self) -> None:
        first_bad = self.first_bad.clone()
        if self.dist.enabled:
            torch_dist.all_reduce(first_bad, torch_dist.ReduceOp.MAX)
        if int(first_bad) >= 0:
            self.fail(int(first_bad), "the loss is not finite")

    def check_weights(self, model: nn.Module, steps: int) -> None:
        bad = [n for n, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            self.fail(steps - 1, f"{len(bad)} tensors are not finite, e.g. {bad[0]}")

    def fail(self, step: int, why: str) -> None:
        """Stop; ``step`` is 0-based, the message counts steps from 1 as the progress does."""
        at = f" at step {step + 1}"
        kept = f"; {self.path} keeps the last good checkpoint" if self.path.exists() else ""
        raise DivergedError(f"{self.desc}: training diverged{at} ({why}): lower the learning rate "
                            f"(now {self.lr:g}) and start again in another --out{kept}")


class DivergedError(QsposError):
    """Training produced non-finite values; nothing non-finite was saved."""

    exit_code = 3


class _Meter:
    """Loss and top-1 summed on the device (no sync per step), reduced over ranks at log time."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss*n, correct, n
        self.t0 = time.perf_counter()

    def add(self, loss: Tensor, logits: Tensor | None, y: Tensor) -> None:
        """One batch; without logits (a caller's loss) its top-1 is not a number."""
        n = y.shape[0]
        correct = (logits.argmax(1) == y).sum() if logits is not None else torch.tensor(math.nan, device=self.device)
        self.sums += torch.stack([loss.double() * n, correct.double(), torch.tensor(float(n), device=self.device,
                                                                                    dtype=torch.float64)])

    def flush(self, dist: Dist) -> dict[str, float]:
        sums = self.sums.clone()
        if dist.enabled:
            torch_dist.all_reduce(sums)
        loss, correct, n = sums.tolist()
        out = {"loss": round(loss / n, 5), "top1": round(correct / n, 5), "images": n,
               "seconds": time.perf_counter() - self.t0}
        self.reset()
        return out
