"""The one training loop, shared by supernet training, fine-tuning and the float teacher.

``fit`` is resumable to the bit: the data order of an epoch is a function of (seed, epoch), a
checkpoint holds the :class:`TrainState` (model, optimiser, scheduler, AMP scaler, the caller's
objects such as the path sampler, the step, hence the position inside the shuffled epoch) and
every RNG (augmentation runs on the global torch RNG when workers=0), so a run killed and resumed
ends with exactly the weights of an uninterrupted one (single process, CPU, workers=0).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from qspos.errors import QsposError
from qspos.runtime.checkpoint import atomic_save, load_checkpoint, rng_state, seed_everything, set_rng_state
from qspos.runtime.config import OptimConfig
from qspos.runtime.data import make_loader
from qspos.runtime.distributed import Dist
from qspos.runtime.optim import ActiveParts, make_optimizer
from qspos.runtime.progress import MetricsLog, console, progress_bar
from qspos.runtime.train_state import (
    COMPLETE,
    FINGERPRINT,
    RECIPE,
    RNG,
    TRAIN_STATE_KEYS,
    Stateful,
    TrainState,
    check_resumable,
    claim_checkpoint,
    training_recipe,
)
from qspos.runtime.train_watch import DivergenceWatch, StepMeter

if TYPE_CHECKING:
    from qspos.runtime.task import Loss
    from qspos.runtime.teacher import Teacher

SINGLE = Dist()  # one process, no process group
MANY_EPOCHS = 10_000  # a training longer than this is accepted, with a warning: likely a typo (1e9)


class StepObjective(Protocol):
    """What a step minimises: (loss, logits or None) of a batch; ``check``: refuse labels the
    model cannot output (the first step's)."""

    def __call__(self, net: nn.Module, x: Tensor, y: Tensor, check: bool = False) -> tuple[Tensor, Tensor | None]: ...


@dataclass(frozen=True)
class Objective:
    """What a training step minimises: cross-entropy on the labels (with ``label_smoothing``),
    mixed with the soft targets of a ``teacher`` when there is one; or the caller's own
    ``loss(model, batch)``, which gives no logits, hence no training top-1."""

    label_smoothing: float = 0.0
    teacher: Teacher | None = None
    loss: Loss | None = None

    def __call__(self, net: nn.Module, x: Tensor, y: Tensor, check: bool = False) -> tuple[Tensor, Tensor | None]:
        """(loss, logits) of a batch; ``check``: refuse labels the model cannot output first."""
        if self.loss is not None:
            return self.loss(net, (x, y)), None
        logits = net(x)
        if check:
            check_labels(logits, y)
        if self.teacher is not None:
            return self.teacher.loss(x, logits, y, self.label_smoothing), logits
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing), logits


def train_step(state: TrainState, net: nn.Module, objective: StepObjective, x: Tensor, y: Tensor,
               active: ActiveParts | None = None, check: bool = False) -> tuple[Tensor, Tensor | None]:
    """One update of ``state`` on a batch: forward under AMP where the scaler is on, backward,
    the optimiser step (leaving what ``active`` excludes unchanged), the schedule; nothing is read
    back to the host. Returns the detached (loss, logits)."""
    amp = torch.autocast("cuda", dtype=torch.float16) if state.scaler.is_enabled() else contextlib.nullcontext()
    with amp:
        loss, logits = objective(net, x, y, check)
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    state.scaler.step(state.optimizer, active)
    state.scaler.update()
    state.scheduler.step()
    state.step += 1
    return loss.detach(), None if logits is None else logits.detach()


@dataclass
class FitResult:
    steps: int  # updates done in all (this session and the ones before a resume)
    epochs: float
    loss: float  # mean training loss and top-1 (fraction) over the last log interval
    top1: float
    images_per_s: float  # this session's throughput (all ranks together); 0 if nothing ran
    seconds: float  # this session's wall time
    checkpoint: Path


def fit(model: nn.Module, dataset: Dataset, optim: OptimConfig, *, resume: bool = False, **settings: Any) -> FitResult:
    """Train ``model`` on ``dataset`` as ``optim`` says (``settings``: see :class:`Trainer`);
    ``resume`` continues the checkpoint there, which is refused otherwise."""
    trainer = Trainer(model, dataset, optim, **settings)
    trainer.load_checkpoint(resume)
    return trainer.train()


class Trainer:
    """One training, in the shape of torchtune's recipes: the constructor sets it up,
    :meth:`load_checkpoint` starts or resumes its :class:`TrainState`, :meth:`train` runs the
    steps and :meth:`save_checkpoint` writes the state atomically.

    - ``batch_size`` is global: each of ``dist.world`` ranks takes ``batch_size / world`` images
      of every step (DDP when world > 1; every rank must run the same ``before_step``).
      An epoch is ``len(dataset) // batch_size`` steps; ``optim.max_steps`` caps the total.
    - ``seed`` fixes the data order of every epoch (and augmentation on a fresh start).
    - ``checkpoint``: written every ``optim.checkpoint_every`` steps and at the end. A resume is
      refused when its ``fingerprint`` (the caller's identity of the model) or its recipe (the
      optimiser's recipe, batch size, seed, dataset size and the caller's ``recipe`` entries,
      e.g. the teacher's digest) differ.
    - ``objective``: what a step minimises (:class:`Objective`, cross-entropy by default; with a
      teacher or the caller's loss; or several paths' losses, ``runtime.sandwich``).
    - ``before_step(step)`` runs before each step's forward (e.g. activate a sampled path) and
      may return the used part of each parameter: the optimiser leaves the rest unchanged.
    - ``objects``: the caller's objects whose ``state_dict()`` rides in the checkpoint.
    - ``metrics``: one line per ``optim.log_every`` steps (step, epoch, lr, loss, top1, img_s).
    - ``on_ready()`` runs once every input is accepted (a resumed checkpoint included, and the
      first batch's labels checked against the model's outputs), before anything is written.
    - ``progress_interval_s``: seconds between plain progress lines outside a terminal.
    - ``compile_model``: run the forward under ``torch.compile`` (the caller makes the model's
      shapes path-independent, e.g. ``Supernet.set_masked``).
    AMP (float16) and channels_last are used on CUDA only, as ``optim.amp/channels_last`` say.
    """

    def __init__(self, model: nn.Module, dataset: Dataset, optim: OptimConfig, *, batch_size: int, seed: int,
                 checkpoint: str | Path, fingerprint: str, recipe: Mapping[str, Any] | None = None,
                 objective: StepObjective | None = None, before_step: Callable[[int], ActiveParts | None] | None = None,
                 objects: Mapping[str, Stateful] | None = None, metrics: MetricsLog | None = None,
                 dist: Dist = SINGLE, device: torch.device | str = "cpu", workers: int = 0, desc: str = "train",
                 on_ready: Callable[[], None] | None = None, progress_interval_s: float = 30.0,
                 compile_model: bool = False):
        self.model, self.dataset, self.optim, self.dist = model, dataset, optim, dist
        self.batch_size, self.seed, self.workers, self.desc = batch_size, seed, workers, desc
        self.device = _device(device)
        if batch_size % dist.world:
            raise QsposError(f"batch size {batch_size} is not divisible by the {dist.world} processes")
        self.steps_per_epoch = len(dataset) // batch_size
        if self.steps_per_epoch == 0:
            raise QsposError(f"batch size {batch_size} is larger than the training split ({len(dataset)} images)")
        total = max(1, round(optim.epochs * self.steps_per_epoch))
        self.total = total if optim.max_steps is None else min(total, optim.max_steps)
        if dist.main:
            _warn_if_endless(desc, self.total, self.steps_per_epoch)
        self.path, self.fingerprint = Path(checkpoint), fingerprint
        self.recipe = training_recipe(optim, batch_size, seed, len(dataset), recipe)
        self.objective = objective or Objective(optim.label_smoothing)
        self.before_step, self.objects, self.metrics = before_step, dict(objects or {}), metrics
        self.on_ready = on_ready or (lambda: None)
        self.progress_interval_s, self.compile_model = progress_interval_s, compile_model
        self.channels_last = self.device.type == "cuda" and optim.channels_last
        self.watch = DivergenceWatch(desc, optim.lr, self.path, self.device, dist)
        self.state: TrainState | None = None

    def load_checkpoint(self, resume: bool) -> TrainState:
        """A fresh state (every global RNG seeded), or, with ``resume``, the checkpoint's."""
        ckpt = None
        if claim_checkpoint(self.path, resume).exists():
            ckpt = load_checkpoint(self.path, require=TRAIN_STATE_KEYS)
            check_resumable(ckpt, self.path, self.fingerprint, self.recipe)
        self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        warmup = min(self.total, round(self.optim.warmup_epochs * self.steps_per_epoch))
        opt, sched = make_optimizer(self.model, self.optim, self.total, warmup)
        scaler = torch.amp.GradScaler("cuda", enabled=self.device.type == "cuda" and self.optim.amp)
        self.state = TrainState(self.model, opt, sched, scaler, self.objects)
        if ckpt is None:  # every global RNG: augmentation in a user's dataset may draw from any of them
            seed_everything(self.seed + self.dist.rank)
            return self.state
        self.state.load_state_dict(ckpt, self.path)
        rngs = ckpt[RNG]
        set_rng_state(rngs[self.dist.rank] if len(rngs) == self.dist.world else rngs[0])
        if self.dist.main:
            console.print(f"resuming {self.path} at step {self.state.step}/{self.total}")
        return self.state

    def save_checkpoint(self, complete: bool) -> None:
        """Write the state, after refusing non-finite weights (the last good checkpoint stays)."""
        self.watch.check()
        self.watch.check_weights(self.model, self.state.step)
        rngs = _gather(rng_state(), self.dist)
        if self.dist.main:
            atomic_save({**self.state.state_dict(), RNG: rngs, FINGERPRINT: self.fingerprint, RECIPE: self.recipe,
                         COMPLETE: complete}, self.path)
        self.dist.barrier()

    def train(self) -> FitResult:
        """Run the steps left, logging and checkpointing as the loop settings say."""
        state, optim = self.state, self.optim
        if state.step >= self.total:  # nothing left to run: the checkpoint is accepted as it is
            self.on_ready()
        net = self._wrapped()
        start_step, t_start, meter = state.step, time.perf_counter(), StepMeter(self.device)
        self.model.train()
        with progress_bar(enabled=self.dist.main and state.step < self.total,
                          interval_s=self.progress_interval_s) as bar:
            task = bar.add_task(self.desc, total=self.total, completed=state.step, info="")
            while state.step < self.total:
                for x, y in self._epoch_rest():
                    active = self.before_step(state.step) if self.before_step is not None else None
                    x, y = self._to_device(x, y)
                    first = state.step == start_step
                    loss, logits = train_step(state, net, self.objective, x, y, active, check=first)
                    self.watch.see(state.step - 1, loss)
                    if first:  # the first step ran: its inputs are accepted, nothing written yet
                        self.on_ready()
                    meter.add(loss, logits, y)
                    bar.update(task, advance=1)
                    if state.step % optim.log_every == 0 or state.step == self.total:
                        bar.update(task, info=self._log(meter))
                    if state.step == self.total:
                        break
                    if state.step % optim.checkpoint_every == 0:
                        self.save_checkpoint(complete=False)
        if state.step > start_step:
            _sync_buffers(self.model, self.dist)
            self.save_checkpoint(complete=True)
        return self._result(start_step, time.perf_counter() - t_start)

    def _wrapped(self) -> nn.Module:
        """The module the steps call: DDP over the ranks, compiled when asked."""
        net = self.model
        if self.dist.enabled:
            cuda = self.device.type == "cuda"
            net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if cuda else None, static_graph=True)
        return torch.compile(net) if self.compile_model else net

    def _epoch_rest(self) -> DataLoader:
        """This rank's batches from the state's step to the end of its epoch."""
        epoch, pos = divmod(self.state.step, self.steps_per_epoch)
        local_batch = self.batch_size // self.dist.world
        order = epoch_order(len(self.dataset), self.batch_size, self.seed, epoch, self.dist)[pos * local_batch:]
        return make_loader(self.dataset, local_batch, shuffle=False, seed=self.seed + epoch, workers=self.workers,
                           order=order)

    def _to_device(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        return (x.contiguous(memory_format=torch.channels_last) if self.channels_last else x), y

    def _log(self, meter: StepMeter) -> str:
        """Reduce the interval's loss and top-1 (the one host read), record it; the progress text."""
        self.watch.check()
        state, spe = self.state, self.steps_per_epoch
        summary = meter.flush(self.dist)
        img_s = summary.pop("images") / max(summary.pop("seconds"), 1e-9)
        state.summary = summary
        if self.metrics is not None:
            self.metrics.write(step=state.step, epoch=round(state.step / spe, 4),
                               lr=state.scheduler.get_last_lr()[0], **summary, img_s=round(img_s, 1))
        return (f"ep {(state.step - 1) // spe + 1}/{math.ceil(self.total / spe)}  loss {summary['loss']:.3f}  "
                f"{_top1_text(summary['top1'], '.1f', 'top1 ')}{img_s:.0f} img/s")

    def _result(self, start_step: int, seconds: float) -> FitResult:
        state = self.state
        images = (state.step - start_step) * self.batch_size
        result = FitResult(state.step, state.step / self.steps_per_epoch, state.summary["loss"],
                           state.summary["top1"], images / seconds if images else 0.0, seconds, self.path)
        if self.dist.main:
            console.print(
                f"{self.desc}: {result.steps} steps ({result.epochs:.2f} epochs), loss {result.loss:.4f}, "
                f"{_top1_text(result.top1, '.2f', 'top-1 ', ', ')}{result.images_per_s:.0f} img/s, {seconds:.0f} s")
        return result


def _device(device: torch.device | str) -> torch.device:
    """The device, a CUDA one with its index (DDP needs it)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


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




def epoch_order(n: int, batch_size: int, seed: int, epoch: int, dist: Dist = SINGLE) -> list[int]:
    """This rank's item indices of one epoch, in order: a permutation fixed by (seed, epoch),
    cut into global batches (the incomplete last one dropped), each rank taking its slice."""
    steps = n // batch_size
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)[: steps * batch_size]
    return perm.view(steps, dist.world, batch_size // dist.world)[:, dist.rank].flatten().tolist()


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


