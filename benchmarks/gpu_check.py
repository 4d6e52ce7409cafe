"""The whole CUDA path measured by one prepared command, for the few minutes a GPU is lent: supernet
training steps of the paper's ImageNet ResNet-18 space per quant backend against the float ResNet-18,
host syncs per step, candidate evaluation throughput, torchrun training with a kill and a resume,
and the image-folder loader's decode rate against the training rate.

    .venv/bin/python benchmarks/gpu_check.py [--device cuda|cpu] [--tiny] [--out DIR] [--budget-s 420]

Every section is independent: a failing one is recorded as ``{"error": ...}`` and the rest go on;
sections that would overrun ``--budget-s`` are recorded as skipped. The results are rewritten after
each section, so a run cut short keeps what it measured. ``--device cpu --tiny`` runs everything
in seconds (the test suite does, so the script cannot rot).

Writes benchmarks/results/gpu.json and gpu.md (or into --out DIR).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.metadata
import json
import os
import random
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from bench_cost import git_commit, machine
from torch import nn

from qspos.core.arch import Arch
from qspos.core.supernet import Supernet
from qspos.runtime.build import build_supernet, quant_backend
from qspos.runtime.config import Config, load_config
from qspos.runtime.data import load_splits, make_loader
from qspos.runtime.evaluate import CandidateEvaluator
from qspos.runtime.optim import MaskedSGD, param_groups

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
CONFIG = "configs/imagenet_resnet18.yaml"
EAGER_BACKENDS = ("reference", "fused")  # "compiled" has a section of its own, the last (see section_compiled)
SEED = 0
SYNC_NOTE = "GradScaler's inf check (.item()) is one sync per step in every row, the float one included"


@dataclass(frozen=True)
class Plan:
    """Sizes of every section: the real ones on a GPU, seconds-sized ones with ``--tiny``."""

    device: str
    tiny: bool
    batch: int
    size: int
    warmup: int
    steps: int
    eval_batch: int
    calib_batches: int
    val_batches: int
    eval_archs: int
    jpeg_per_class: int
    jpeg_wh: tuple[int, int]
    loader_batch: int
    loader_epochs: int  # the first one starts the workers and is not timed

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    @classmethod
    def make(cls, device: str, tiny: bool) -> Plan:
        if tiny:
            return cls(device, True, batch=8, size=32, warmup=1, steps=2, eval_batch=8,
                       calib_batches=1, val_batches=2, eval_archs=2, jpeg_per_class=8, jpeg_wh=(64, 64),
                       loader_batch=4, loader_epochs=2)
        # JPEGs of ImageNet's typical size (~500x375), so the decode rate is not flattered by small images;
        # 16 loader batches per epoch keep 8 workers (2 batches prefetched each) all busy
        return cls(device, False, batch=128, size=224, warmup=3, steps=10, eval_batch=500, calib_batches=4,
                   val_batches=8, eval_archs=3, jpeg_per_class=256, jpeg_wh=(500, 375), loader_batch=32,
                   loader_epochs=4)


class Clock:
    """Seconds since the start, against ``--budget-s``."""

    def __init__(self, budget_s: float):
        self.start, self.budget_s = time.perf_counter(), budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()


def sync(plan: Plan) -> None:
    if plan.cuda:
        torch.cuda.synchronize()


def autocast(plan: Plan) -> contextlib.AbstractContextManager:
    """float16 autocast on CUDA, as ``qspos train`` does (``train.amp``); nothing on the CPU."""
    return torch.autocast("cuda", dtype=torch.float16) if plan.cuda else contextlib.nullcontext()


def to_device(model: nn.Module, plan: Plan) -> nn.Module:
    """The model on the plan's device, channels_last on CUDA (``train.channels_last``)."""
    model.to(plan.device)
    return model.to(memory_format=torch.channels_last) if plan.cuda else model


def one_line(err: BaseException) -> str:
    """The exception and where it was raised, on one line."""
    frames = traceback.extract_tb(err.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:300]}{where}"


def peak_mib(plan: Plan) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if plan.cuda else None


def reset_peak(plan: Plan) -> None:
    if plan.cuda:
        torch.cuda.reset_peak_memory_stats()


def timed(fn: Callable[[int], Any], n: int, plan: Plan) -> list[float]:
    """Seconds of each of ``n`` calls ``fn(i)``, the device synchronised around each."""
    times = []
    for i in range(n):
        sync(plan)
        start = time.perf_counter()
        fn(i)
        sync(plan)
        times.append(time.perf_counter() - start)
    return times


def step_stats(times: list[float], batch: int, plan: Plan) -> dict[str, Any]:
    ms = 1000 * statistics.median(times)
    return {"ms_per_step": round(ms, 2), "ms_min": round(1000 * min(times), 2),
            "images_per_s": round(batch / ms * 1000, 1), "peak_mib": peak_mib(plan), "steps": len(times)}


class Runner:
    """One training step as ``qspos train`` takes it: autocast + GradScaler on CUDA, label-smoothed
    cross-entropy, ``opt.step(*extra)`` through the scaler, on a fixed synthetic batch."""

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer, plan: Plan, classes: int):
        self.model, self.opt, self.plan = model, opt, plan
        self.scaler = torch.amp.GradScaler("cuda", enabled=plan.cuda)
        self.loss = nn.CrossEntropyLoss(label_smoothing=0.1)
        g = torch.Generator().manual_seed(SEED)
        x = torch.randn(plan.batch, 3, plan.size, plan.size, generator=g).to(plan.device)
        self.x = x.contiguous(memory_format=torch.channels_last) if plan.cuda else x
        self.y = torch.randint(0, classes, (plan.batch,), generator=g).to(plan.device)

    def __call__(self, *extra: Any) -> None:
        with autocast(self.plan):
            loss = self.loss(self.model(self.x), self.y)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt, *extra)
        self.scaler.update()


class Bench:
    """What the sections share: the plan, the clock, the results so far and the models, each built
    on first use (a section whose model failed to build records it; the next one tries again)."""

    def __init__(self, plan: Plan, clock: Clock):
        self.plan, self.clock = plan, clock
        self.results: dict[str, dict] = {}

    @functools.cached_property
    def cfg(self) -> Config:
        return load_config(CONFIG, ["data.dataset=synthetic", f"model.input_size={self.plan.size}"])

    @functools.cached_property
    def supernet(self) -> Supernet:
        torch.manual_seed(SEED)
        return to_device(build_supernet(self.cfg, self.plan.device), self.plan)

    @functools.cached_property
    def archs(self) -> list[Arch]:
        """The paths every backend is timed on (the same ones, in the same order)."""
        rng = random.Random(SEED)
        return [self.supernet.space.sample(rng) for _ in range(self.plan.steps)]

    @functools.cached_property
    def super_runner(self) -> Runner:
        opt = MaskedSGD(param_groups(self.supernet, 4e-5), lr=0.1, momentum=0.9)
        return Runner(self.supernet, opt, self.plan, self.cfg.model.num_classes)

    @functools.cached_property
    def float_runner(self) -> Runner:
        from torchvision.models import resnet18

        torch.manual_seed(SEED)
        net = to_device(resnet18(num_classes=self.cfg.model.num_classes), self.plan)
        opt = torch.optim.SGD(param_groups(net, 4e-5), lr=0.1, momentum=0.9)
        return Runner(net, opt, self.plan, self.cfg.model.num_classes)

    def timed_backends(self) -> dict[str, dict[str, Any]]:
        """The supernet backends timed so far (a failed or skipped one is left out)."""
        rows = {**self.results.get("supernet_train", {}).get("backends", {}),
                "compiled": self.results.get("compiled_backend", {})}
        return {b: r for b, r in rows.items() if "ms_per_step" in r}

    def super_step(self, backend: str) -> Callable[[int], None]:
        """Step ``i``: the ``i``-th path (cycled) under ``backend``, then MaskedSGD on its parts."""
        def step(i: int) -> None:
            self.supernet.set_quant_backend(backend)
            self.supernet.set_arch(self.archs[i % len(self.archs)])
            self.super_runner(self.supernet.active_slices())
        return step


# ---------------------------------------------------------------------------- sections


def time_backend(bench: Bench, backend: str) -> dict[str, Any]:
    """Warm-up (every timed path for ``compiled``: it compiles per shape), then the timed steps."""
    plan, step = bench.plan, bench.super_step(backend)
    reset_peak(plan)
    start = time.perf_counter()
    for i in range(len(bench.archs) if backend == "compiled" else plan.warmup):
        if backend == "compiled":
            progress(f"  compiled warm-up: path {i + 1}/{len(bench.archs)} at {time.perf_counter() - start:.0f} s")
        step(i)
    sync(plan)
    warmup_s = time.perf_counter() - start
    return {**step_stats(timed(step, plan.steps, plan), plan.batch, plan), "warmup_s": round(warmup_s, 2)}


def section_supernet(bench: Bench) -> dict[str, Any]:
    """Train steps of the ImageNet ResNet-18 supernet (random path each) per quant backend."""
    plan = bench.plan
    out: dict[str, Any] = {"config": CONFIG, "input": [3, plan.size, plan.size], "batch": plan.batch,
                           "amp": plan.cuda, "channels_last": plan.cuda, "warmup_steps": plan.warmup,
                           "timed_steps": plan.steps, "seed": SEED, "backends": {}}
    for backend in EAGER_BACKENDS:
        try:
            out["backends"][backend] = time_backend(bench, backend)
        except Exception as err:  # noqa: BLE001 - one backend must not cost the others
            out["backends"][backend] = {"error": one_line(err)}
            if plan.cuda:
                torch.cuda.empty_cache()
        r = out["backends"][backend]
        progress(f"  supernet {backend}: " + (f"{r['ms_per_step']} ms/step" if "ms_per_step" in r else summary(r)))
    return out


def section_float(bench: Bench) -> dict[str, Any]:
    """torchvision's float ResNet-18, same batch/AMP/channels_last, torch.optim.SGD: the yardstick."""
    plan, run = bench.plan, bench.float_runner
    reset_peak(plan)
    for _ in range(plan.warmup):
        run()
    stats = step_stats(timed(lambda _: run(), plan.steps, plan), plan.batch, plan)
    ratios = {b: round(r["ms_per_step"] / stats["ms_per_step"], 3) for b, r in bench.timed_backends().items()}
    return {"model": "torchvision resnet18", **stats, "supernet_over_float": ratios}


def count_syncs(fn: Callable[[], None]) -> dict[str, Any]:
    """Host syncs of one call, from CUDA's sync debug mode, with the source lines they come from."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    lines = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))
    return {"syncs": sum(lines.values()), "where": dict(lines.most_common(8))}


def section_syncs(bench: Bench) -> dict[str, Any]:
    """Host syncs of one warmed-up training step per eager backend, and of the float step."""
    if not bench.plan.cuda:
        return {"syncs_per_step": None, "reason": "cuda only"}
    steps: dict[str, Callable[[], None]] = {b: functools.partial(bench.super_step(b), 0)
                                            for b in bench.timed_backends()}
    steps["float"] = bench.float_runner
    out: dict[str, Any] = {"syncs_per_step": {}, "where": {}, "note": SYNC_NOTE}
    for name, fn in steps.items():
        try:
            found = count_syncs(fn)
            out["syncs_per_step"][name], out["where"][name] = found["syncs"], found["where"]
        except Exception as err:  # noqa: BLE001 - one step must not cost the others
            out["syncs_per_step"][name] = {"error": one_line(err)}
    return out


class OutOfBudget(BaseException):
    """The alarm at the end of the budget: a BaseException, so that no ``except Exception`` on the
    way (such as the compiled backend's fallback to the fused kernel) can swallow it."""


@contextlib.contextmanager
def hard_deadline(seconds: float) -> Iterator[None]:
    """Interrupt the block after ``seconds``, even inside a compilation no step boundary would stop."""
    def fire(signum: int, frame: object) -> None:
        raise OutOfBudget(f"ran past the budget ({seconds:.0f} s were left)")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1.0))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def section_compiled(bench: Bench) -> dict[str, Any]:
    """The ``compiled`` backend, eagerly (inductor kernels per quantizer shape): last, and cut at the
    end of the budget, because its compilation time is unknown. A fallback to the fused kernel
    (torch.compile unavailable) is an error here, not a compiled timing."""
    if bench.plan.tiny:
        return {"skipped": "--tiny: no torch.compile time"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with hard_deadline(bench.clock.left()):
                out = time_backend(bench, "compiled")
        except OutOfBudget as err:
            raise TimeoutError(str(err)) from None
    fallback = [str(w.message) for w in caught if "torch.compile unavailable" in str(w.message)]
    if fallback:
        raise RuntimeError(fallback[0])
    flt = bench.results.get("float_baseline", {})
    if "ms_per_step" in flt:
        out["over_float"] = round(out["ms_per_step"] / flt["ms_per_step"], 3)
    if bench.plan.cuda:
        out["host_syncs"] = count_syncs(functools.partial(bench.super_step("compiled"), 0))
    return out


def section_eval(bench: Bench) -> dict[str, Any]:
    """``CandidateEvaluator.evaluate`` (BN recalibration + top-1) against a bare eval forward over
    the same images: what the search pays per candidate beyond the forward passes themselves."""
    plan, supernet = bench.plan, bench.supernet
    backend = quant_backend(bench.cfg, plan.device)
    supernet.set_quant_backend(backend)
    g = torch.Generator().manual_seed(SEED)
    batch = (torch.randn(plan.eval_batch, 3, plan.size, plan.size, generator=g),
             torch.randint(0, bench.cfg.model.num_classes, (plan.eval_batch,), generator=g))
    calib, val = [batch] * plan.calib_batches, [batch] * plan.val_batches  # CPU batches, moved per use
    evaluator = CandidateEvaluator(supernet, calib, val, plan.device)
    archs = bench.archs[: plan.eval_archs]

    @torch.no_grad()
    def bare(i: int) -> None:
        supernet.set_arch(archs[i])
        supernet.eval()
        for x, _ in calib + val:
            supernet(x.to(plan.device, non_blocking=True))
        supernet.train()

    evaluator.evaluate(archs[0])  # warm-up (first use of the eval shapes)
    ev_s = statistics.median(timed(lambda i: evaluator.evaluate(archs[i]), len(archs), plan))
    bare_s = statistics.median(timed(bare, len(archs), plan))
    images = plan.eval_batch * (plan.calib_batches + plan.val_batches)
    return {"backend": backend, "eval_batch": plan.eval_batch, "calib_batches": plan.calib_batches,
            "val_batches": plan.val_batches, "archs": len(archs), "images_per_arch": images,
            "evaluate_s_per_arch": round(ev_s, 4), "evaluate_images_per_s": round(images / ev_s, 1),
            "bare_forward_s_per_arch": round(bare_s, 4), "bare_forward_images_per_s": round(images / bare_s, 1),
            "evaluate_over_bare": round(ev_s / bare_s, 3)}


def torchrun_config(plan: Plan, steps: int) -> dict[str, Any]:
    return {"name": "gpucheck",
            "model": {"name": "resnet_small", "num_classes": 10, "in_channels": 3, "input_size": 32,
                      "args": {"depth": 8, "widths": [16, 32, 64]}},
            "space": {"weight_bits": [2, 4], "act_bits": [2, 4], "width_multipliers": [0.5, 1.0]},
            "data": {"dataset": "synthetic", "synthetic_size": 512, "val_size": 64, "batch_size": 64},
            "train": {"max_steps": steps, "checkpoint_every": 2, "log_every": 2, "device": plan.device},
            "search": {"budgets": [{"name": "w3a3", "bitops": "uniform 3,3"}], "calib_images": 64}}


def last_words(log: Path) -> list[str]:
    """What the worker said last: qspos' one-line messages, else the lines before torchrun's failure
    report (the end of the worker's traceback), else the end of the log."""
    lines = log.read_text(errors="replace").splitlines()
    cut = next((i for i, line in enumerate(lines) if "failed (exitcode" in line), len(lines))
    return [line for line in lines[:cut] if line.startswith("qspos:")][-3:] or lines[max(0, cut - 5):cut]


def launch(cfg: Path, out: Path, log: Path, resume: bool = False) -> subprocess.Popen:
    """``torchrun --standalone --nproc_per_node=1 -m qspos train CFG --out OUT [--resume]``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
           "-m", "qspos", "train", str(cfg), "--out", str(out), *(["--resume"] if resume else [])]
    with log.open("w") as f:
        return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=f,
                                stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, log: Path, start: float, timeout: float) -> dict[str, Any]:
    """Return code and wall time of a launched run, its output on failure. Past ``timeout`` it is
    sent SIGTERM (torchrun passes it on to its worker; SIGKILL would orphan the worker), then killed."""
    timed_out = False
    try:
        proc.wait(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    out: dict[str, Any] = {"rc": proc.returncode, "wall_s": round(time.perf_counter() - start, 2)}
    if timed_out:
        out["timed_out"] = True
    if proc.returncode != 0:
        out["last_lines"] = last_words(log)
    return out


def run_train(cfg: Path, out: Path, timeout: float, resume: bool = False) -> dict[str, Any]:
    log = out.with_suffix(".resume.log" if resume else ".log")
    start = time.perf_counter()
    return finish(launch(cfg, out, log, resume), log, start, timeout)


def run_interrupted(cfg: Path, out: Path, timeout: float) -> dict[str, Any]:
    """The same run, sent SIGTERM as soon as its first checkpoint exists."""
    log, start = out.with_suffix(".log"), time.perf_counter()
    proc, ckpt = launch(cfg, out, log), out / "supernet.pt"
    while not ckpt.exists() and proc.poll() is None and time.perf_counter() - start < timeout:
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    result = finish(proc, log, start, timeout - (time.perf_counter() - start))
    result.setdefault("last_lines", last_words(log))
    if ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        result.update(checkpoint_step=state["step"], checkpoint_complete=state["complete"])
    return result


def compare_weights(a: Path, b: Path) -> dict[str, Any]:
    """How many tensors of two supernet checkpoints differ, and by how much at most."""
    wa = torch.load(a, map_location="cpu", weights_only=True)["model"]
    wb = torch.load(b, map_location="cpu", weights_only=True)["model"]
    differ = [k for k in wa if k not in wb or not torch.equal(wa[k], wb[k])]
    diffs = [(wa[k].double() - wb[k].double()).abs().max().item() for k in differ
             if k in wb and wa[k].shape == wb[k].shape and wa[k].numel()]
    return {"tensors": len(wa), "differ": len(differ) + len(set(wb) - set(wa)),
            "max_abs_diff": max(diffs, default=0.0), "equal": not differ and set(wa) == set(wb)}


def section_torchrun(bench: Bench) -> dict[str, Any]:
    """``qspos train`` under torchrun: one uninterrupted run (A), one stopped by SIGTERM after its
    first checkpoint and resumed (B); B must end with A's weights."""
    plan, steps = bench.plan, 12
    out: dict[str, Any] = {"nproc_per_node": 1, "max_steps": steps, "device": plan.device,
                           "backend": "nccl" if plan.cuda else "gloo",
                           "note": "under torchrun qspos makes a process group and trains with DDP even for one "
                                   "process, so the NCCL (gloo) collectives run"}
    with tempfile.TemporaryDirectory(prefix="gpucheck-") as tmp:
        cfg = Path(tmp) / "gpucheck.yaml"
        cfg.write_text(yaml.safe_dump(torchrun_config(plan, steps)))
        a, b = Path(tmp) / "A", Path(tmp) / "B"
        limit = lambda: max(bench.clock.left(), 30.0)  # noqa: E731 - the time each run may take
        out["uninterrupted"] = run_train(cfg, a, limit())
        out["interrupted"] = run_interrupted(cfg, b, limit())
        out["resumed"] = run_train(cfg, b, limit(), resume=True)
        if out["uninterrupted"]["rc"] == 0 and out["resumed"]["rc"] == 0:
            out["weights"] = compare_weights(a / "supernet.pt", b / "supernet.pt")
    return out


def write_jpegs(root: Path, per_class: int, wh: tuple[int, int]) -> None:
    """Two classes of smooth gradients plus noise as JPEGs (quality 90) in train/ and val/."""
    from PIL import Image

    rng = np.random.default_rng(SEED)
    w, h = wh
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for split, n in (("train", per_class), ("val", 2)):
        for c in range(2):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                gx, gy = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
                noise = 24 * rng.standard_normal((h, w, 3), np.float32)
                img = (xx[..., None] / w * gx + yy[..., None] / h * gy) / 2 + noise
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.jpg", quality=90)


def loader_rate(loader: Any, epochs: int) -> tuple[int, float]:
    """(images, seconds) of every epoch but the first, which starts the (persistent) workers."""
    images, seconds = 0, 0.0
    for epoch in range(epochs):
        start = time.perf_counter()
        n = sum(len(y) for _, y in loader)
        if epoch:
            images, seconds = images + n, seconds + time.perf_counter() - start
    return images, seconds


def section_loader(bench: Bench) -> dict[str, Any]:
    """qspos's image-folder pipeline (decode, crop, flip, normalise) with ``data.workers`` workers,
    set against the supernet's training rate: below 1, the loader would starve the GPU."""
    plan, workers = bench.plan, min(8, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="gpucheck-jpeg-") as tmp:
        write_jpegs(Path(tmp), plan.jpeg_per_class, plan.jpeg_wh)
        cfg = load_config({"model": {"name": "resnet18", "num_classes": 2, "in_channels": 3, "input_size": plan.size},
                           "space": {"weight_bits": [4], "act_bits": [4]},
                           "data": {"dataset": "imagefolder", "root": tmp, "val_size": 8, "workers": workers}})
        splits = load_splits(cfg.data, cfg.model)
        loader = make_loader(splits.train, plan.loader_batch, shuffle=True, workers=workers)
        images, seconds = loader_rate(loader, plan.loader_epochs)
    rate = images / seconds
    train_rates = {b: r["images_per_s"] for b, r in bench.timed_backends().items()}
    fastest = max(train_rates, key=train_rates.get, default=None)
    return {"workers": workers, "jpeg_wh": list(plan.jpeg_wh), "input_size": plan.size, "batch": plan.loader_batch,
            "timed_images": images, "images_per_s": round(rate, 1), "per_worker_images_per_s": round(rate / workers, 1),
            "vs_backend": fastest, "train_images_per_s": train_rates.get(fastest),
            "loader_over_train": round(rate / train_rates[fastest], 3) if fastest else None}


# seconds each section needs on a GPU (a tiny run needs far less): below that, it is skipped
SECTIONS: list[tuple[str, Callable[[Bench], dict[str, Any]], float]] = [
    ("supernet_train", section_supernet, 60.0),
    ("float_baseline", section_float, 15.0),
    ("host_syncs", section_syncs, 10.0),
    ("candidate_eval", section_eval, 40.0),
    ("torchrun_resume", section_torchrun, 90.0),
    ("loader", section_loader, 30.0),
    ("compiled_backend", section_compiled, 60.0),
]


# ---------------------------------------------------------------------------- report


def progress(line: str) -> None:
    print(f"[gpu_check] {line}", file=sys.stderr, flush=True)


def summary(section: dict[str, Any]) -> str:
    if "error" in section:
        return f"error: {section['error']}"
    if "skipped" in section:
        return f"skipped: {section['skipped']}"
    return f"ok ({section['seconds']} s)" if "seconds" in section else "ok"


def attempt(fn: Callable[[], Any]) -> Any:
    """``fn()``, or its error as one line: no header field may stop the run."""
    try:
        return fn()
    except Exception as err:  # noqa: BLE001
        return f"unavailable ({one_line(err)})"


def environment(plan: Plan) -> dict[str, Any]:
    cuda = plan.cuda and torch.cuda.is_available()
    return {
        "gpu": attempt(torch.cuda.get_device_name) if cuda else None,
        "gpu_memory_gib": attempt(lambda: round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
        if cuda else None,
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": attempt(torch.backends.cudnn.version), "brevitas": attempt(lambda: importlib.metadata.version(
            "brevitas")), "cpu_count": os.cpu_count(), "machine": attempt(machine),
    }


def md_supernet(res: dict[str, Any]) -> Iterator[str]:
    sup, flt = res.get("supernet_train", {}), res.get("float_baseline", {})
    syncs = res.get("host_syncs", {}).get("syncs_per_step") or {}
    ratios = flt.get("supernet_over_float", {})
    yield "## Training step\n"
    if "input" in sup:
        yield (f"{sup['config']} supernet, input {'x'.join(map(str, sup['input']))}, batch {sup['batch']}, AMP "
               f"{sup['amp']}, channels_last {sup['channels_last']}; median of {sup['timed_steps']} steps, a new "
               "random path each.\n")
    yield "| model | ms/step | img/s | peak MiB | / float | syncs/step | warm-up s |"
    yield "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    comp = res.get("compiled_backend", {})
    rows = [(f"supernet ({b})", r, ratios.get(b), syncs.get(b)) for b, r in sup.get("backends", {}).items()]
    rows.append(("supernet (compiled)", comp, comp.get("over_float"), comp.get("host_syncs", {}).get("syncs")))
    rows.append(("float ResNet-18", flt, 1.0 if "ms_per_step" in flt else None, syncs.get("float")))
    for name, r, ratio, sy in rows:
        if "ms_per_step" not in r:
            yield f"| {name} | {r.get('error') or r.get('skipped') or 'not run'} | | | | | |"
            continue
        yield (f"| {name} | {r['ms_per_step']:.1f} | {r['images_per_s']:,.0f} | {r.get('peak_mib') or '-'} | "
               f"{ratio if ratio is not None else '-'} | {sy if isinstance(sy, int) else '-'} | "
               f"{r.get('warmup_s', '-')} |")
    hs = res.get("host_syncs", {})
    yield f"\nHost syncs: {hs.get('reason') or hs.get('note') or 'not measured'}."
    wheres = {**hs.get("where", {}), "compiled": comp.get("host_syncs", {}).get("where")}
    for name, where in wheres.items():
        if where:
            yield f"\nSyncs of {name} by source line: " + ", ".join(f"`{k}` x{v}" for k, v in where.items())
    yield ""


def md_eval(r: dict[str, Any]) -> Iterator[str]:
    yield "## Candidate evaluation\n"
    if "evaluate_s_per_arch" in r:
        yield (f"{r['backend']} backend; {r['calib_batches']} calib + {r['val_batches']} val batches of "
               f"{r['eval_batch']} (CPU tensors, moved per batch as the search does); median of {r['archs']} paths.\n")
        yield "| what | s/path | img/s |\n| --- | ---: | ---: |"
        yield f"| `CandidateEvaluator.evaluate` | {r['evaluate_s_per_arch']} | {r['evaluate_images_per_s']:,.0f} |"
        yield f"| bare eval forward | {r['bare_forward_s_per_arch']} | {r['bare_forward_images_per_s']:,.0f} |"
        yield f"\nevaluate / bare forward: {r['evaluate_over_bare']}x\n"


def md_torchrun(r: dict[str, Any]) -> Iterator[str]:
    yield f"## torchrun (nproc_per_node={r.get('nproc_per_node')}, {r.get('device')}): kill and resume\n"
    yield "| run | rc | wall s | notes |\n| --- | ---: | ---: | --- |"
    for name in ("uninterrupted", "interrupted", "resumed"):
        run = r.get(name)
        if run:
            notes = (f"SIGTERM at checkpoint step {run['checkpoint_step']} (complete: {run['checkpoint_complete']})"
                     if "checkpoint_step" in run else " / ".join(run.get("last_lines", [])[-2:]))
            yield f"| {name} | {run['rc']} | {run['wall_s']} | {notes} |"
    w = r.get("weights")
    if w:
        yield (f"\nResumed weights vs uninterrupted: {w['differ']} of {w['tensors']} tensors differ "
               f"(max abs diff {w['max_abs_diff']:.3g}); equal: {w['equal']}.")
    if r.get("note"):
        yield f"\nNote: {r['note']}."
    yield ""


def md_loader(r: dict[str, Any]) -> Iterator[str]:
    yield "## Image-folder loader (qspos pipeline, JPEG decode + augmentation)\n"
    if "images_per_s" in r:
        yield "| workers | JPEG size | input | img/s | img/s per worker | training img/s | loader / training |"
        yield "| ---: | --- | ---: | ---: | ---: | ---: | ---: |"
        yield (f"| {r['workers']} | {'x'.join(map(str, r['jpeg_wh']))} | {r['input_size']} | {r['images_per_s']:,.0f} "
               f"| {r['per_worker_images_per_s']:,.0f} | {r['train_images_per_s'] or '-'} ({r['vs_backend']}) "
               f"| {r['loader_over_train'] or '-'} |")
        yield "\nBelow 1, the loader would starve the GPU (per process; each torchrun rank has its own workers).\n"


def markdown(result: dict[str, Any]) -> str:
    env, res = result["environment"], result["sections"]
    head = [f"# GPU check ({'tiny, ' if result['tiny'] else ''}{result['device']})\n",
            f"- command: `{result['command']}`", f"- commit: {result['commit']}", f"- date: {result['date']}",
            f"- wall time: {result['wall_s']} s (budget {result['budget_s']} s); finished: {result['finished']}",
            f"- GPU: {env['gpu']} ({env['gpu_memory_gib']} GiB)",
            f"- torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, Brevitas {env['brevitas']}, "
            f"{env['cpu_count']} CPUs",
            f"- machine: {env['machine']}\n"]
    body = [*md_supernet(res), *md_eval(res.get("candidate_eval", {})), *md_torchrun(res.get("torchrun_resume", {})),
            *md_loader(res.get("loader", {}))]
    notes = [f"- {name}: {summary(s)}" for name, s in res.items() if "error" in s or "skipped" in s]
    backends = res.get("supernet_train", {}).get("backends", {})
    notes += [f"- supernet_train {b}: {summary(r)}" for b, r in backends.items() if "error" in r]
    return "\n".join([*head, *body, "## Errors and skips\n", *(notes or ["none"])]) + "\n"


def write(result: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "gpu.md").write_text(markdown(result))


# ---------------------------------------------------------------------------- main


def run_section(bench: Bench, fn: Callable[[Bench], dict[str, Any]], need_s: float) -> dict[str, Any]:
    """One section, timed; skipped when the budget has not ``need_s`` left, its error recorded."""
    left = bench.clock.left()
    if left < need_s:
        return {"skipped": f"{left:.0f} s of the budget left, the section needs ~{need_s:.0f} s"}
    start = time.perf_counter()
    try:
        out = fn(bench)
    except Exception as err:  # noqa: BLE001 - a lent GPU must not be wasted by one failing section
        out = {"error": one_line(err)}
        if bench.plan.cuda and torch.cuda.is_available():
            torch.cuda.empty_cache()
    return {**out, "seconds": round(time.perf_counter() - start, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="seconds-sized sizes (the test suite's run)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of gpu.json and gpu.md")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip sections past this many seconds")
    args = parser.parse_args()

    plan, clock = Plan.make(args.device, args.tiny), Clock(args.budget_s)
    bench = Bench(plan, clock)
    result: dict[str, Any] = {
        "command": shlex.join([sys.executable, *sys.argv]), "cwd": os.getcwd(), "commit": git_commit(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"), "device": plan.device,
        "tiny": plan.tiny, "budget_s": args.budget_s, "wall_s": 0.0, "finished": False,
        "plan": asdict(plan), "environment": environment(plan), "sections": bench.results,
    }
    for name, fn, need_s in SECTIONS:
        progress(f"{name} ...")
        bench.results[name] = run_section(bench, fn, 0.0 if plan.tiny else need_s)
        progress(f"{name}: {summary(bench.results[name])}")
        result["wall_s"] = round(clock.elapsed(), 1)
        write(result, args.out)
    result["finished"] = True
    write(result, args.out)
    progress(f"done in {result['wall_s']} s: {args.out / 'gpu.json'}, {args.out / 'gpu.md'}")


if __name__ == "__main__":
    main()
