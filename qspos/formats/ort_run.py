"""ONNX files in onnxruntime on the CPU: a session as a function of a batch, the graph its
optimisations leave, and its latency."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


def _session(path: Path, optimized: bool, threads: int = 0, saved: Path | None = None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only
    level = ort.GraphOptimizationLevel
    opts.graph_optimization_level = level.ORT_ENABLE_ALL if optimized else level.ORT_DISABLE_ALL
    opts.intra_op_num_threads = opts.inter_op_num_threads = threads  # 0: onnxruntime's default
    if saved is not None:
        opts.optimized_model_filepath = str(saved)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def session(path: Path, optimized: bool) -> Callable[[Tensor], Tensor]:
    """The ONNX file at ``path`` as a function of a batch: as written (graph optimizations off) or
    with all of onnxruntime's optimizations (where QDQ groups become integer kernels)."""
    sess = _session(path, optimized)
    name = sess.get_inputs()[0].name
    return lambda x: torch.from_numpy(sess.run(None, {name: x.numpy()})[0])


def optimized_graph(path: Path) -> Any:
    """The graph onnxruntime runs for the file at ``path`` with all its optimizations (an ONNX
    ModelProto, with onnxruntime's own ops such as QLinearConv)."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        _session(path, optimized=True, saved=Path(tmp) / "optimized.onnx")
        return onnx.load(str(Path(tmp) / "optimized.onnx"))


def latency_ms(path: Path, images: Tensor, runs: int, warmup: int = 3) -> float:
    """Median milliseconds of one run of the optimised file on ``images`` (one batch), on one
    thread, over ``runs`` runs after ``warmup``."""
    sess = _session(path, optimized=True, threads=1)
    feed = {sess.get_inputs()[0].name: images.numpy()}
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        sess.run(None, feed)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)
