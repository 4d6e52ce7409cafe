"""Where onnxruntime's integer conv computes what a QCDQ file says: one quantize-dequantize conv per
case, run by the optimised session (fused into QLinearConv) and by the unoptimised one (a float
conv on the dequantized values, exact here), compared in output steps.

Why: ``core.fold.int8_weight_codes`` scales low-bit weight codes up to ``SCALED_CODE_MAX`` so that
int32 biases round at a finer step. On x86 CPUs without VNNI, onnxruntime multiplies uint8 inputs
by int8 weights in pairs summed into int16 (``vpmaddubsw``), which saturates: this shows which
input ranges and code caps stay exact on this CPU, against what ``core.fold.int16_pairs_fit``
predicts. Cases: the conv shapes of the MobileNetV2 benchmark net (1x1, 3x3 depthwise and dense,
stride 1 and 2), 1-, 2- and 4-bit codes, inputs as the QCDQ writer stores them (uint8: unsigned
4- and 8-bit steps; signed ones shifted by 128).

    .venv/bin/python benchmarks/bench_int8_conv.py [--name int8_conv]

Writes benchmarks/results/NAME.json and NAME.md (command, commit, machine, CPU flags, wall time).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from _screen import provenance, write_results
from onnx import TensorProto, helper, numpy_helper

from qspos.core.fold import SCALED_CODE_MAX, int16_pairs_fit
from qspos.runtime.provenance import cpu_flags

RESULTS = Path(__file__).parent / "results"
INPUTS = {  # name: (lowest code, highest code, zero point), all stored as uint8
    "unsigned 4-bit": (0, 15, 0), "unsigned 8-bit": (0, 255, 0),
    "signed 4-bit (+128)": (120, 135, 128), "signed 8-bit (+128)": (0, 255, 128)}
CONVS = {  # name: (in channels, out channels, kernel, groups, stride)
    "1x1 8->48": (8, 48, 1, 1, 1), "1x1 480->80": (480, 80, 1, 1, 1), "1x1 160->1280": (160, 1280, 1, 1, 1),
    "dw3x3 48 /2": (48, 48, 3, 48, 2), "dw3x3 480": (480, 480, 3, 480, 1), "3x3 16->64 /2": (16, 64, 3, 1, 2)}
BITS = (1, 2, 4)
CAPS = (32, SCALED_CODE_MAX, 127)


def conv_model(weight_codes: np.ndarray, weight_scale: np.ndarray, bias_codes: np.ndarray, x_scale: float,
               x_zero: int, out_scale: float, groups: int, stride: int) -> bytes:
    """Quantize → dequantize → Conv (int8 weights and int32 bias, dequantized) → quantize →
    dequantize: the pattern that onnxruntime fuses into one QLinearConv."""
    cout, _, k, _ = weight_codes.shape
    inits = [numpy_helper.from_array(np.array(x_scale, np.float32), "xs"),
             numpy_helper.from_array(np.array(x_zero, np.uint8), "xz"),
             numpy_helper.from_array(weight_codes.astype(np.int8), "wq"),
             numpy_helper.from_array(weight_scale.astype(np.float32), "ws"),
             numpy_helper.from_array(np.zeros(cout, np.int8), "wz"),
             numpy_helper.from_array(bias_codes.astype(np.int32), "bq"),
             numpy_helper.from_array((x_scale * weight_scale).astype(np.float32), "bs"),
             numpy_helper.from_array(np.zeros(cout, np.int32), "bz"),
             numpy_helper.from_array(np.array(out_scale, np.float32), "os"),
             numpy_helper.from_array(np.array(128, np.uint8), "oz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("DequantizeLinear", ["bq", "bs", "bz"], ["bd"], axis=0),
             helper.make_node("Conv", ["xd", "wd", "bd"], ["y"], kernel_shape=[k, k], pads=[k // 2] * 4,
                              group=groups, strides=[stride, stride]),
             helper.make_node("QuantizeLinear", ["y", "os", "oz"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "os", "oz"], ["out"])]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]).SerializeToString()


def run(model: bytes, x: np.ndarray, optimised: bool) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimised
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def case(rng: np.random.Generator, conv: tuple, inputs: tuple, bits: int, cap: int) -> tuple[float, float]:
    """The largest difference between the two sessions in output steps, and the share of outputs
    more than one step apart (a tie rounded the other way is one step)."""
    cin, cout, k, groups, stride = conv
    low, high, zero = inputs
    top = max(2 ** (bits - 1) - 1, 1)
    codes = rng.choice([-1, 1], (cout, cin // groups, k, k)) if bits == 1 else \
        rng.integers(-top, top + 1, (cout, cin // groups, k, k))
    factor = np.maximum(cap // np.maximum(np.abs(codes).reshape(cout, -1).max(1), 1), 1)  # as int8_weight_codes
    weight_codes, weight_scale = codes * factor[:, None, None, None], rng.uniform(0.01, 0.1, cout) / factor
    x_scale = 0.05
    reach = np.abs(weight_codes).reshape(cout, -1).sum(1) * max(high - zero, zero - low)  # largest |accumulator|
    bias_codes = rng.integers(-1, 2, cout) * (reach // 4)
    out_scale = float(np.median(reach * x_scale * weight_scale)) / 60
    x = ((rng.integers(low, high + 1, (4, cin, 14, 14)) - zero) * x_scale).astype(np.float32)
    model = conv_model(weight_codes, weight_scale, bias_codes, x_scale, zero, out_scale, groups, stride)
    steps = np.abs(run(model, x, True) - run(model, x, False)) / out_scale
    return float(steps.max()), float((steps > 1.01).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="int8_conv")
    args = parser.parse_args()
    started, rng = time.time(), np.random.default_rng(0)
    rows = []
    for (input_name, inputs), cap in itertools.product(INPUTS.items(), CAPS):
        cases = [case(rng, conv, inputs, bits, cap) for conv, bits in itertools.product(CONVS.values(), BITS)]
        largest_input = inputs[1]  # as the kernel sees it: uint8
        rows.append({"input": input_name, "cap": cap, "pairs_fit": int16_pairs_fit(largest_input, cap),
                     "max_steps": max(c[0] for c in cases), "share_off": max(c[1] for c in cases),
                     "cases": len(cases)})
        print(json.dumps(rows[-1]), flush=True)
    result = {**provenance(), "onnxruntime": ort.__version__, "cpu_flags": cpu_flags(),
              "wall_seconds": round(time.time() - started, 1), "convs": list(CONVS), "bits": list(BITS), "rows": rows}
    write_results(RESULTS, args.name, result, markdown(result))


def markdown(result: dict) -> str:
    exact = all((r["max_steps"] <= 1.01) == r["pairs_fit"] for r in result["rows"])
    lines = ["# onnxruntime's integer conv against the file's arithmetic", "",
             f"onnxruntime {result['onnxruntime']}, CPU flags: {', '.join(result['cpu_flags']) or 'unknown'}. "
             f"Each row: {len(result['convs'])} conv shapes ({', '.join(result['convs'])}) times "
             f"{len(result['bits'])} weight bit-widths ({', '.join(map(str, result['bits']))}), 4 images of 14x14; "
             "the optimised session against the unoptimised one, in output steps (1 step: a tie rounded the "
             "other way). \"pairs fit\": `core.fold.int16_pairs_fit(largest input code, cap)`.", "",
             "| input (uint8 codes) | weight codes up to | pairs fit | largest difference (steps) | "
             "worst share of outputs > 1 step off |", "| --- | ---: | :---: | ---: | ---: |"]
    for r in result["rows"]:
        lines.append(f"| {r['input']} | {r['cap']} | {'yes' if r['pairs_fit'] else 'no'} | {r['max_steps']:g} | "
                     f"{100 * r['share_off']:.2f} % |")
    lines += ["", ("Exact (within one step) exactly where the int16 pairs fit." if exact else
                   "Not exact everywhere the int16 pairs fit, or exact where they do not: see the rows."), "",
              f"- command: `{result['command']}`", f"- commit: `{result['commit']}`",
              f"- machine: {result['machine']}", f"- date: {result['date']}",
              f"- wall time (s): {result['wall_seconds']}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
