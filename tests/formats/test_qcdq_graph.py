"""Graph steps on a QCDQ file: the int16 pair bound and the convs kept float where it fails (the
float file: tests/formats/test_qcdq.py)."""

from __future__ import annotations

import onnx

from qspos.formats.qcdq_graph import clips_into_integer_clips, float_convs_where_pairs_overflow, int16_pairs_fit


def test_the_int16_pair_bound():
    assert int16_pairs_fit(255, 64) and not int16_pairs_fit(255, 65)  # 8-bit inputs: 7-bit weights at most
    assert int16_pairs_fit(15, 127) and int16_pairs_fit(129, 127) and not int16_pairs_fit(130, 127)


def test_only_the_stem_is_kept_float(written):
    model = onnx.load(written.dir / written.files["onnx-qcdq"])
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    stem_input = next(n for n in model.graph.node if n.output[0] == convs[0].input[0])
    assert stem_input.op_type == "Mul"  # Cast and Mul: no QDQ fusion matches them
    assert float_convs_where_pairs_overflow(model) == []  # already done, and only there


def test_a_relu6_before_a_quantize_step_moves_into_its_integer_clip_exactly():
    """onnxruntime fuses a conv with its quantize step only when nothing stands between them."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

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
