"""Graph steps on a QCDQ file: the int16 pair bound and the convs kept float where it fails (the
float file: tests/formats/test_qcdq.py)."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from qspos.formats.ort_run import optimized_graph, session
from qspos.formats.qcdq_graph import (
    clips_into_integer_clips,
    count_convs,
    float_convs_where_pairs_overflow,
    signed_steps_as_unsigned,
)


def test_only_the_stem_is_kept_float(written):
    model = onnx.load(written.dir / written.files["onnx-qcdq"])
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    stem_input = next(n for n in model.graph.node if n.output[0] == convs[0].input[0])
    assert stem_input.op_type == "Mul"  # Cast and Mul: no QDQ fusion matches them
    assert float_convs_where_pairs_overflow(model) == []  # already done, and only there


def test_a_relu6_before_a_quantize_step_moves_into_its_integer_clip_exactly():
    """onnxruntime fuses a conv with its quantize step only when nothing stands between them."""
    import onnxruntime as ort

    consts = {"zero": np.float32(0), "six": np.float32(6), "scale": np.float32(0.5), "zp": np.uint8(0),
              "lo": np.uint8(0), "hi": np.uint8(15)}
    nodes = [helper.make_node("Clip", ["x", "zero", "six"], ["relu6"]),
             helper.make_node("QuantizeLinear", ["relu6", "scale", "zp"], ["q"]),
             helper.make_node("Clip", ["q", "lo", "hi"], ["clipped"]),
             helper.make_node("DequantizeLinear", ["clipped", "scale", "zp"], ["y"])]
    graph = helper.make_graph(nodes, "relu6", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
                              [numpy_helper.from_array(np.array(v), k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = np.linspace(-3, 9, 4001, dtype=np.float32)

    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    before = run(model)
    assert clips_into_integer_clips(model) == 1
    assert [n.op_type for n in model.graph.node] == ["QuantizeLinear", "Clip", "DequantizeLinear"]
    assert np.array_equal(run(model), before) and before.max() == 6  # round(6 / 0.5) = 12 < 15: ReLU6 bounds it


def _signed_input_conv(extra_reader: bool = False):
    """A conv on a 4-bit signed activation (int8 codes, integer Clip), its output quantized to uint8;
    with ``extra_reader``, a Cast reads the codes too (as where a conv is kept float)."""
    rng = np.random.default_rng(0)
    consts = {"s": np.float32(0.1), "z": np.int8(0), "lo": np.int8(-8), "hi": np.int8(7),
              "w": rng.integers(-1, 2, (4, 3, 3, 3)).astype(np.int8), "ws": np.full(4, 0.02, np.float32),
              "wz": np.zeros(4, np.int8), "ys": np.float32(0.05), "yz": np.uint8(0)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("Clip", ["q", "lo", "hi"], ["c"]),
             helper.make_node("DequantizeLinear", ["c", "s", "z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["y"], pads=[1, 1, 1, 1]),
             helper.make_node("QuantizeLinear", ["y", "ys", "yz"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["out"])]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)]
    if extra_reader:
        nodes.append(helper.make_node("Cast", ["c"], ["cast"], to=TensorProto.FLOAT))
        outputs.append(helper.make_tensor_value_info("cast", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "signed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 6, 6])],
                              outputs, [numpy_helper.from_array(np.array(v), k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_a_signed_activation_written_as_uint8_runs_its_conv_on_integers_exactly(tmp_path):
    x = np.random.default_rng(1).normal(size=(2, 3, 6, 6)).astype(np.float32)
    model, paths = _signed_input_conv(), [tmp_path / "int8.onnx", tmp_path / "uint8.onnx"]
    onnx.save(model, str(paths[0]))
    assert signed_steps_as_unsigned(model) == 1
    onnx.save(model, str(paths[1]))
    step = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    zero = next(i for i in model.graph.initializer if i.name == step.input[2])
    assert zero.data_type == onnx.TensorProto.UINT8 and onnx.numpy_helper.to_array(zero) == 128
    assert count_convs(optimized_graph(paths[0])) == (0, 1) and count_convs(optimized_graph(paths[1])) == (1, 1)
    outs = [session(p, optimized=o)(torch.from_numpy(x)) for p in paths for o in (False, True)]
    assert all(torch.equal(outs[0], o) for o in outs[1:])  # the same codes, as written and optimised
    assert signed_steps_as_unsigned(model) == 0  # nothing signed is left


def test_a_signed_step_with_another_reader_stays_signed():
    model = _signed_input_conv(extra_reader=True)
    before = model.SerializeToString()
    assert signed_steps_as_unsigned(model) == 0 and model.SerializeToString() == before
