"""Export: QCDQ ONNX in onnxruntime against PyTorch, QONNX, and exact packed-weight round trips."""

from __future__ import annotations

import importlib.util
import json

import onnx
import pytest
import torch

from qspos.core.arch import Arch
from qspos.core.cost import CostModel
from qspos.errors import QsposError
from qspos.runtime.build import build_supernet
from qspos.runtime.config import load_config
from qspos.runtime.rundir import RunDir
from qspos.stages.export import export, export_packed, quant_layers, require_onnx, unpack_weights
from qspos.stages.finetune import finetune
from quant_kernels.packing import packed_size
from tests.helpers import make_run, tiny_config


def _finetuned_run(tmp_path, perturb, w_bits: int, *overrides):
    """A run directory holding one net fine-tuned for a single step (uniform W{w_bits}A4)."""
    cfg, run_dir = make_run(tmp_path, perturb, ["space.weight_bits=[1,2,4]", "finetune.max_steps=1",
                                                "data.batch_size=16", *overrides])
    RunDir(run_dir).record_config(cfg)
    arch = build_supernet(cfg).space.uniform(w_bits, 4)
    (net,) = finetune(cfg, run_dir, arch=arch)
    return run_dir, net


def test_qcdq_export_runs_in_onnxruntime_with_the_logits_of_pytorch(tmp_path, perturb):
    run_dir, net = _finetuned_run(tmp_path, perturb, 2)
    (res,) = export(run_dir, ["onnx-qcdq"])
    assert res.files == {"onnx-qcdq": "model_qcdq.onnx"} and not res.skipped
    assert res.max_abs_logit_diff is not None and res.max_abs_logit_diff < 1e-4
    assert res.check_ok and res.onnx_test_top1 == pytest.approx(net.test_top1, abs=1e-3)
    graph = onnx.load(res.dir / "model_qcdq.onnx").graph
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in graph.node}
    assert json.loads((res.dir / "summary.json").read_text())["check_ok"] is True


def test_binary_weights_skip_qcdq_with_the_reason_and_export_to_qonnx(tmp_path, perturb):
    run_dir, _ = _finetuned_run(tmp_path, perturb, 1)
    (res,) = export(run_dir, ["onnx-qcdq", "qonnx"])
    assert "1-bit" in res.skipped["onnx-qcdq"] and res.check_ok is None
    ops = {n.op_type for n in onnx.load(res.dir / "model_qonnx.onnx").graph.node}
    assert {"BipolarQuant", "Quant"} <= ops


@pytest.mark.parametrize("bits", [(1, 3, 5), (2, 6, 7)])
def test_packed_weights_round_trip_exactly(tmp_path, bits):
    cfg = load_config(tiny_config(),
                      ["space.weight_bits=[1,2,3,5,6,7]", "space.act_bits=[4]", "space.last.w_bits=4"])
    supernet = build_supernet(cfg)
    arch = Arch({name: supernet.space.uniform(b, 4)[name] for name, b in zip(supernet.space.names, bits)})
    model = supernet.extract(arch).eval()
    size = export_packed(model, tmp_path)
    unpacked = unpack_weights(tmp_path)
    layers = quant_layers(model)
    assert list(unpacked) == [name for name, _ in layers]
    expected = 0
    for name, layer in layers:
        qt = layer.quant_weight()
        codes, weight = unpacked[name]
        assert torch.equal(codes, qt.int().to(torch.int64)), name
        assert torch.equal(weight, qt.value), name
        expected += packed_size(codes.numel(), int(qt.bit_width))
    assert size == expected == (tmp_path / "weights.bin").stat().st_size
    theoretical = CostModel(supernet, cfg.input_shape).cost(arch).size_bits / 8
    assert theoretical <= size < theoretical + len(layers)  # at most a padding byte per layer


def test_a_missing_export_dependency_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(QsposError, match=r"onnxruntime.*pip install 'qspos\[export\]'"):
        require_onnx()


def test_export_without_finetuned_nets_is_a_clear_error(tmp_path, perturb):
    cfg, run_dir = make_run(tmp_path, perturb)
    RunDir(run_dir).record_config(cfg)
    with pytest.raises(QsposError, match="qspos finetune"):
        export(run_dir, ["packed"])
