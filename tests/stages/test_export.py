"""Export: every file run against PyTorch (QCDQ in onnxruntime, QONNX in qonnx, the packed weights as an
integer model), binary weights in QCDQ, mismatches caught, and exact packed-weight round trips."""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
import torchvision
from brevitas.nn import QuantConv2d
from torch import nn

import qspos.stages.export as export_stage
from qspos.cli import main
from qspos.core.arch import Arch
from qspos.core.cost import CostModel
from qspos.core.layers import BinaryWeightQuant, UnsignedActQuant
from qspos.errors import QsposError
from qspos.runtime.build import build_supernet, load_finetuned
from qspos.runtime.config import load_config
from qspos.runtime.data import load_splits, make_loader
from qspos.runtime.rundir import RunDir
from qspos.stages.export import (
    ExportResult,
    check_qcdq,
    check_qonnx,
    export,
    export_packed,
    first_batches,
    load_float_params,
    quant_layers,
    require_onnx,
    unpack_weights,
)
from qspos.stages.finetune import finetune
from quant_kernels.packing import packed_size
from tests.conftest import _perturb
from tests.helpers import make_run, tiny_config


def _finetuned_run(tmp_path, perturb, w_bits: int, *overrides):
    """A run directory holding one net fine-tuned for a single step (uniform W{w_bits}A4)."""
    cfg, run_dir = make_run(tmp_path, perturb, ["space.weight_bits=[1,2,4]", "finetune.max_steps=1",
                                                "data.batch_size=16", *overrides])
    RunDir(run_dir).record_config(cfg)
    arch = build_supernet(cfg).space.uniform(w_bits, 4)
    (net,) = finetune(cfg, run_dir, arch=arch)
    return run_dir, net


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One W2A4 net exported in every format (tests that change its files work on copies)."""
    run_dir, net = _finetuned_run(tmp_path_factory.mktemp("exported"), _perturb, 2)
    (res,) = export(run_dir)
    return run_dir, net, res


class FireNet(nn.Module):
    """Not a ResNet: convs with biases, a SqueezeNet fire module (concatenation), a depthwise conv
    in a residual add, BatchNorm, a Linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.squeeze = nn.Conv2d(8, 4, 1)
        self.expand1, self.expand3 = nn.Conv2d(4, 8, 1), nn.Conv2d(4, 8, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = F.relu(self.stem(x))
        s = F.relu(self.squeeze(x))
        x = torch.cat([F.relu(self.expand1(s)), F.relu(self.expand3(s))], 1)
        x = x + F.relu(self.bn(self.dw(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def fire_net() -> nn.Module:
    """``model.name: tests.stages.test_export:fire_net``."""
    return FireNet()


def test_every_exported_file_is_run_and_checked_against_pytorch(exported):
    run_dir, net, res = exported
    assert set(res.files) == set(res.checks) == {"onnx-qcdq", "qonnx", "packed"} and not res.skipped
    runtimes = {fmt: c.runtime for fmt, c in res.checks.items()}
    assert runtimes == {"onnx-qcdq": "onnxruntime", "qonnx": "qonnx", "packed": "quant_kernels.intops"}
    for fmt, c in res.checks.items():
        assert c.ok and c.matching == c.top1_agreement == 1.0 and c.max_abs_logit_diff < 1e-4, fmt
    qcdq, packed = res.checks["onnx-qcdq"], res.checks["packed"]
    assert qcdq.images == packed.images == 160 and res.checks["qonnx"].images == 64  # 160 test images
    assert qcdq.test_top1 == pytest.approx(net.test_top1, abs=1e-3) == qcdq.torch_test_top1
    assert qcdq.optimized_max_abs_logit_diff < 1e-4  # no conv bias for onnxruntime's integer kernels to round
    assert packed.exact_accumulators and packed.max_accumulator_error == 0 and packed.float_layers == []
    graph = onnx.load(res.dir / "model_qcdq.onnx").graph
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in graph.node}
    summary = json.loads((res.dir / "summary.json").read_text())
    assert summary["check_ok"] is True and summary["checks"]["packed"]["exact_accumulators"] is True
    assert ExportResult.load(res.dir / "summary.json") == res


def test_the_qonnx_file_has_a_static_shape_and_runs_as_written(exported):
    """qonnx's executor and FINN flows need a static input shape: the file runs with no edits."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.util.cleanup import cleanup_model

    run_dir, _, res = exported
    wrapper = ModelWrapper(str(res.dir / "model_qonnx.onnx"))
    assert wrapper.get_tensor_shape("input") == [1, 1, 12, 12]
    wrapper = cleanup_model(wrapper)
    cfg = RunDir(run_dir).read_config()
    x = load_splits(cfg.data, cfg.model).test[0][0].unsqueeze(0)
    out = execute_onnx(wrapper, {wrapper.graph.input[0].name: x.numpy()})[wrapper.graph.output[0].name]
    model, _ = load_finetuned(cfg, RunDir(run_dir).finetuned()[0].model)
    with torch.no_grad():
        assert (torch.from_numpy(out) - model(x)).abs().max() < 1e-4


def test_a_converted_fire_module_net_with_binary_weights_passes_every_check(tmp_path, perturb):
    """The user's own topology (concatenation, depthwise conv, conv biases) through the converter,
    1-bit weights on every searched layer, every format."""
    run_dir, _ = _finetuned_run(tmp_path, perturb, 1, "model.name=tests.stages.test_export:fire_net",
                                "model.args={}")
    (res,) = export(run_dir)
    assert res.check_ok and set(res.checks) == {"onnx-qcdq", "qonnx", "packed"}, res.checks
    assert all(c.max_abs_logit_diff < 1e-4 for c in res.checks.values()), res.checks
    packed = res.checks["packed"]
    assert packed.exact_accumulators and packed.float_layers == []
    header = json.loads((res.dir / "weights.json").read_text())["layers"]
    assert {e["name"]: e["encoding"] for e in header}["dw"] == "binary"


def test_binary_weights_export_to_qcdq_as_narrow_2bit_integers_with_parity(tmp_path, perturb):
    run_dir, net = _finetuned_run(tmp_path, perturb, 1)
    model, _ = load_finetuned(RunDir(run_dir).read_config(), net.dir / "model.pt")
    n_binary = sum(int(layer.quant_weight().bit_width) == 1 for _, layer in quant_layers(model))
    (res,) = export(run_dir, ["onnx-qcdq", "qonnx"])
    assert res.check_ok and not res.skipped
    assert res.checks["onnx-qcdq"].max_abs_logit_diff < 1e-4 and res.checks["qonnx"].max_abs_logit_diff < 1e-4
    graph = onnx.load(res.dir / "model_qcdq.onnx").graph
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    binary = []  # integer weights with codes -1/+1 only, clipped to [-1, 1] before DequantizeLinear
    for node in graph.node:
        codes = inits.get(node.input[0])
        if node.op_type == "Clip" and codes is not None and codes.dtype == np.int8:
            if set(np.unique(codes)) <= {-1, 1}:
                binary.append((int(inits[node.input[1]]), int(inits[node.input[2]])))
    assert n_binary == 8 and len(binary) == n_binary and set(binary) == {(-1, 1)}  # ResNet-8's searched convs
    assert {"BipolarQuant", "Quant"} <= {n.op_type for n in onnx.load(res.dir / "model_qonnx.onnx").graph.node}


def test_layers_wider_than_8_bits_skip_qcdq_with_the_reason(tmp_path, perturb):
    run_dir, _ = _finetuned_run(tmp_path, perturb, 2, "space.first.w_bits=16")
    (res,) = export(run_dir, ["onnx-qcdq"])
    assert res.skipped == {"onnx-qcdq": "QCDQ holds integers of at most 8 bits; conv1 has 16-bit weights"}
    assert not res.files and res.check_ok is None


@pytest.mark.parametrize("export_weight_q_node", [False, True])
def test_a_binary_layer_in_qcdq_computes_what_brevitas_does(tmp_path, export_weight_q_node):
    """Both ways Brevitas writes QCDQ weights (integer initializers, or QuantizeLinear on floats:
    there the float weights would round to 0 where |w| < t / 2 without the fake-quantized values)."""
    import onnxruntime as ort

    from qspos.stages.export_qcdq import QCDQManager

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


def _negate_logits(path):
    """A deliberate mismatch: the file's graph with its output negated."""
    model = onnx.load(path)
    graph = model.graph
    out = graph.output[0].name
    producer = next(n for n in graph.node if out in n.output)
    producer.output[list(producer.output).index(out)] = "pre_logits"
    graph.node.append(onnx.helper.make_node("Neg", ["pre_logits"], [out]))
    onnx.save(model, path)


@pytest.mark.parametrize("fmt", ["onnx-qcdq", "qonnx"])
def test_an_onnx_file_that_computes_something_else_fails_its_check(exported, tmp_path, fmt):
    run_dir, net, res = exported
    path = tmp_path / res.files[fmt]
    shutil.copy(res.dir / res.files[fmt], path)
    _negate_logits(path)
    cfg = RunDir(run_dir).read_config()
    model, _ = load_finetuned(cfg, net.dir / "model.pt")
    test = load_splits(cfg.data, cfg.model).test
    loader = make_loader(test, 32, shuffle=False, workers=0)
    batches = first_batches(loader, 64)
    with torch.no_grad():
        logits = torch.cat([model(x) for x in batches])
    check = (check_qcdq(path, batches, logits, loader, net.test_top1) if fmt == "onnx-qcdq"
             else check_qonnx(path, batches, logits))
    assert not check.ok and check.matching == 0 and check.top1_agreement < 0.5


def test_a_broken_packer_fails_the_integer_check_and_the_command(tmp_path, perturb, monkeypatch, capsys):
    run_dir, _ = _finetuned_run(tmp_path, perturb, 2)
    real_pack = export_stage.pack

    def pack_with_a_flipped_bit(values, bits, signed):
        data = bytearray(real_pack(values, bits, signed))
        data[0] ^= 1 << (bits - 1)  # the sign bit of the first weight
        return bytes(data)

    monkeypatch.setattr(export_stage, "pack", pack_with_a_flipped_bit)
    assert main(["export", str(run_dir), "--format", "packed"]) == 1
    assert "(packed)" in capsys.readouterr().err
    res = ExportResult.load(RunDir(run_dir).export_summaries()[0])
    packed = res.checks["packed"]
    assert res.check_ok is False and not packed.ok and packed.exact_accumulators is False
    assert packed.max_accumulator_error >= 1 and packed.matching < 1


def test_float_params_load_into_a_model_that_checks_its_state_format_version(tmp_path):
    """Issue 29: MNASNet refuses a state without its format's version, and float.npz holds none;
    the export check failed with 'version should be set to 1 or 2 instead of None'."""
    torch.manual_seed(0)
    model = torchvision.models.mnasnet0_5(num_classes=10).eval()
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.add_(1.0)
    np.savez(tmp_path / "float.npz", **{k: v.numpy() for k, v in twin.state_dict().items()})
    load_float_params(model, tmp_path / "float.npz")
    assert all(torch.equal(v, twin.state_dict()[k]) for k, v in model.state_dict().items())


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
