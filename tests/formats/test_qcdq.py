"""QCDQ: binary weights as narrow 2-bit integers that compute what Brevitas does, nets wider than
8 bits skipped with the reason."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from brevitas.nn import QuantConv2d

from qspos.core.layers import BinaryWeightQuant, UnsignedActQuant
from qspos.formats import qcdq
from qspos.formats.check import Reference
from qspos.formats.format import Skipped
from tests.formats.conftest import tiny_net


@pytest.mark.parametrize("export_weight_q_node", [False, True])
def test_a_binary_layer_in_qcdq_computes_what_brevitas_does(tmp_path, export_weight_q_node):
    """Both ways Brevitas writes QCDQ weights (integer initializers, or QuantizeLinear on floats:
    there the float weights would round to 0 where |w| < t / 2 without the fake-quantized values)."""
    import onnxruntime as ort

    from qspos.formats.brevitas_qcdq import QCDQManager

    torch.manual_seed(0)
    layer = QuantConv2d(4, 3, 3, weight_quant=BinaryWeightQuant, weight_scaling_init=torch.rand(3, 1, 1, 1) + 0.5,
                        input_quant=UnsignedActQuant, input_bit_width=4, input_scaling_init=torch.tensor(1.0)).eval()
    x = torch.rand(2, 4, 6, 6)
    path = tmp_path / "binary.onnx"
    QCDQManager.export(copy.deepcopy(layer), args=(x,), export_path=str(path), dynamo=False,
                       export_weight_q_node=export_weight_q_node)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = layer(x).numpy()
    assert np.abs(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0] - expected).max() < 1e-5


def test_a_net_wider_than_8_bits_is_skipped_with_the_reason(tmp_path):
    _, model, _ = tiny_net()
    model.conv1.weight_quant.bit_width = lambda: torch.tensor(16.0)
    with pytest.raises(Skipped, match="QCDQ holds integers of at most 8 bits; conv1 has 16-bit weights"):
        qcdq.write(Reference(model, [torch.zeros(1, 1, 12, 12)], torch.zeros(1, 4)), tmp_path, {})
    assert not list(tmp_path.iterdir())


def test_the_file_holds_the_folded_net_and_onnxruntime_runs_its_convs_on_integers(written):
    """Issue 27: the optimised graph held 0 QLinearConv (9 float Conv, 9 BatchNormalization)."""
    import onnx

    from qspos.formats.ort_run import optimized_graph
    from qspos.formats.qcdq_graph import count_convs

    path = written.dir / written.files["onnx-qcdq"]
    ops = [n.op_type for n in onnx.load(path).graph.node]
    assert "BatchNormalization" not in ops and ops.count("Conv") == 9
    assert count_convs(optimized_graph(path)) == (8, 9)  # all but the stem (8-bit weights on 8-bit inputs)
    check = qcdq.check(written.dir, written.ref)
    assert check.ok and check.integer_convs == 8 and check.convs == 9
    assert check.matching == check.optimized_matching == 1.0 and check.optimized_max_abs_logit_diff < 1e-4
    assert check.test_images == 160 and check.test_top1 == check.optimized_test_top1
    assert all(v > 0 for v in (check.qcdq_ms_1, check.float_ms_1, check.qcdq_ms_64, check.float_ms_64))


def test_the_float_file_is_the_same_net_without_quantization(written):
    import onnx
    import onnxruntime as ort

    path = written.dir / qcdq.FLOAT_FILE
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert ops.isdisjoint({"QuantizeLinear", "DequantizeLinear", "Clip", "BatchNormalization"}) and "Conv" in ops
    x = written.ref.batches[0]
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    assert out.shape == (len(x), 4) and np.isfinite(out).all()
