"""One layer as the QCDQ file writes it, timed in onnxruntime's optimised session: the entries of
``qspos latency --engine onnxruntime``, so that a ``latency_ms`` budget means what the deployed
file costs, not a float op of the same shape.

The graph is the export's pattern for one conv or linear layer: the input's quantize step (with
an integer Clip to its k-bit range), int8 weight codes and an int32 bias dequantized at the
accumulator's scale, the layer, and the next quantize step after it (where onnxruntime's fusion
needs one). :func:`~qspos.formats.qcdq_graph.float_convs_where_pairs_overflow` then keeps it float
where the export does (8-bit weights on 8-bit inputs), and a signed input is written as uint8
(:func:`~qspos.formats.qcdq_graph.signed_steps_as_unsigned`), as the export writes it. What
onnxruntime runs depends only on the shape and on whether the layer runs on integers, so one
timing serves every bit pair that shares them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qspos.core.fold import int16_pairs_fit
from qspos.core.layers import SearchableConv2d, SearchableLayer
from qspos.formats.ort_run import latency_ms
from qspos.formats.qcdq_graph import (
    DEQUANT,
    QUANT,
    float_convs_where_pairs_overflow,
    signed_steps_as_unsigned,
)

OPSET = 13


def _integer_kind(layer: SearchableLayer, w_bits: int | None, a_bits: int | None) -> str:
    """What the layer runs as in the export: float, or integer (with the same kernel for every bit
    pair whose products fit the int16 pairs of non-VNNI x86)."""
    if w_bits is None or a_bits is None:
        return "float"
    largest_input = 255 if layer.input_signed else 2 ** a_bits - 1
    return "integer" if int16_pairs_fit(largest_input, max(1, 2 ** (w_bits - 1) - 1)) else "float-input"


def qcdq_layer(layer: SearchableLayer, in_c: int, out_c: int, w_bits: int | None, a_bits: int | None,
               x_shape: tuple[int, ...]) -> Any:
    """The one-layer QCDQ ONNX model of ``layer`` at this setting (random weights: the speed of an
    engine's kernels does not depend on them), input ``x_shape``."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    conv = isinstance(layer, SearchableConv2d)
    groups = (out_c if layer.depthwise else layer.groups) if conv else 1
    w_shape = (out_c, in_c // groups, *layer.kernel_size) if conv else (out_c, in_c)
    inits, nodes = [], []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    x = "x"
    if a_bits is not None:  # the input's quantize step, its k-bit range, dequantized
        signed = layer.input_signed
        dtype, lo, hi = (np.int8, -(2 ** (a_bits - 1)), 2 ** (a_bits - 1) - 1) if signed else (np.uint8, 0,
                                                                                               2 ** a_bits - 1)
        scale, zero = const("x.scale", np.array(0.05, np.float32)), const("x.zero", np.array(0, dtype))
        bounds = [const("x.lo", np.array(lo, dtype)), const("x.hi", np.array(hi, dtype))]
        nodes += [helper.make_node(QUANT, [x, scale, zero], ["x.q"]),
                  helper.make_node("Clip", ["x.q", *bounds], ["x.c"]),
                  helper.make_node(DEQUANT, ["x.c", scale, zero], ["x.dq"])]
        x = "x.dq"
    bias = layer.bias is not None
    if w_bits is not None:
        top = max(1, 2 ** (w_bits - 1) - 1)
        codes = rng.integers(-top, top + 1, size=w_shape).astype(np.int8)
        w_scale = rng.uniform(0.01, 0.02, size=out_c).astype(np.float32)
        nodes.append(helper.make_node(DEQUANT, [const("w.codes", codes), const("w.scale", w_scale),
                                                const("w.zero", np.zeros(out_c, np.int8))], ["w"], axis=0))
        if bias and a_bits is not None:  # int32 at the accumulator's scale
            nodes.append(helper.make_node(DEQUANT, [const("b.codes", rng.integers(-100, 100, out_c).astype(np.int32)),
                                                    const("b.scale", w_scale * np.float32(0.05)),
                                                    const("b.zero", np.zeros(out_c, np.int32))], ["b"], axis=0))
        elif bias:
            const("b", rng.normal(size=out_c).astype(np.float32))
    else:
        const("w", rng.normal(size=w_shape).astype(np.float32))
        if bias:
            const("b", rng.normal(size=out_c).astype(np.float32))
    inputs = [x, "w", *(["b"] if bias else [])]
    if conv:
        nodes.append(helper.make_node("Conv", inputs, ["y"], name="layer", kernel_shape=list(layer.kernel_size),
                                      strides=list(layer.stride), pads=list(layer.padding) * 2,
                                      dilations=list(layer.dilation), group=groups))
    else:
        nodes.append(helper.make_node("Gemm", inputs, ["y"], name="layer", transB=1))
    out_scale, out_zero = const("y.scale", np.array(0.05, np.float32)), const("y.zero", np.array(0, np.uint8))
    nodes += [helper.make_node(QUANT, ["y", out_scale, out_zero], ["y.q"]),
              helper.make_node(DEQUANT, ["y.q", out_scale, out_zero], ["out"])]
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    float_convs_where_pairs_overflow(model)
    signed_steps_as_unsigned(model)
    return model


class QcdqLayerTimer:
    """A :class:`~qspos.core.latency.LayerTimer`: the layer's one-layer QCDQ graph in onnxruntime's
    optimised session, one thread, median of ``reps`` runs (timed once per shape and kind of kernel)."""

    name = "onnxruntime-qcdq"
    threads = 1

    def __init__(self, reps: int = 5, warmup: int = 2):
        self.reps, self.warmup = reps, warmup
        self._timed: dict[tuple, float] = {}

    def __call__(self, layer: SearchableLayer, in_c: int, out_c: int, w_bits: int | None, a_bits: int | None,
                 x: torch.Tensor) -> float:
        import onnx

        key = (id(layer), in_c, out_c, _integer_kind(layer, w_bits, a_bits))
        if key not in self._timed:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "layer.onnx"
                onnx.save(qcdq_layer(layer, in_c, out_c, w_bits, a_bits, tuple(x.shape)), str(path))
                self._timed[key] = latency_ms(path, x, runs=self.reps, warmup=self.warmup)
        return self._timed[key]
