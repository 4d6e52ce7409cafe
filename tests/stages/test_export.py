"""The export stage: every fine-tuned net written in every format and each file run against PyTorch
(QCDQ in onnxruntime, QONNX in qonnx, the packed weights as an integer model), summaries that load
back, skipped formats, failed checks failing the command. Each format's own behaviour:
tests/formats/."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qspos.formats.packed as packed_format
from qspos.cli import main
from qspos.errors import QsposError
from qspos.formats.check import MATCHING_SHARE, quant_layers, top1_consistent
from qspos.runtime.build import build_supernet, load_finetuned
from qspos.runtime.rundir import RunDir
from qspos.stages.export import ExportResult, export
from qspos.stages.finetune import finetune
from tests.conftest import _perturb
from tests.helpers import make_run


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
        assert c.torch_self_matching == 1.0 and c.required_matching == MATCHING_SHARE, fmt  # a net with no noise
    qcdq, packed = res.checks["onnx-qcdq"], res.checks["packed"]
    assert qcdq.images == packed.images == 160 and res.checks["qonnx"].images == 64  # 160 test images
    # the file holds the deployment net (BatchNorm folded, int32 biases): its test top-1 is the fine-tuned
    # net's up to rounding noise, and onnxruntime's integer kernels compute what the file says
    assert qcdq.torch_test_top1 == pytest.approx(net.test_top1, abs=1e-3) and qcdq.test_images == 160
    assert top1_consistent(qcdq.test_change, qcdq.test_discordant) and qcdq.optimized_test_top1 == qcdq.test_top1
    assert qcdq.optimized_matching == 1.0 and qcdq.optimized_max_abs_logit_diff < 1e-4
    assert (qcdq.integer_convs, qcdq.convs) == (8, 9)
    assert packed.exact_accumulators and packed.max_accumulator_error == 0 and packed.float_layers == []
    graph = onnx.load(res.dir / "model_qcdq.onnx").graph
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in graph.node}
    summary = json.loads((res.dir / "summary.json").read_text())
    assert summary["check_ok"] is True and summary["checks"]["packed"]["exact_accumulators"] is True
    assert ExportResult.load(res.dir / "summary.json") == res


def test_a_summary_written_before_the_noise_floor_loads(exported, tmp_path):
    """An export's summary.json from before the checks recorded their noise floor and paired top-1."""
    _, _, res = exported
    summary = json.loads((res.dir / "summary.json").read_text())
    newer = {"test_images", "test_change", "test_discordant", "required_matching", "torch_self_matching",
             "torch_self_max_abs_logit_diff"}
    summary["checks"] = {fmt: {k: v for k, v in c.items() if k not in newer} for fmt, c in summary["checks"].items()}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    old = ExportResult.load(tmp_path / "summary.json")
    assert old.check_ok and old.checks["packed"].required_matching is None and old.failures() == []


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


def test_binary_weights_export_to_qcdq_as_int8_codes_with_parity(tmp_path, perturb):
    """Folded binary convs hold their codes -1/+1 times 64 (``core.fold.int8_weight_codes``), so
    their int32 biases are rounded at a step 64 times finer."""
    run_dir, net = _finetuned_run(tmp_path, perturb, 1)
    model, _ = load_finetuned(RunDir(run_dir).read_config(), net.dir / "model.pt")
    n_binary = sum(int(layer.quant_weight().bit_width) == 1 for _, layer in quant_layers(model))
    (res,) = export(run_dir, ["onnx-qcdq", "qonnx"])
    assert res.check_ok and not res.skipped
    assert res.checks["onnx-qcdq"].max_abs_logit_diff < 1e-4 and res.checks["qonnx"].max_abs_logit_diff < 1e-4
    graph = onnx.load(res.dir / "model_qcdq.onnx").graph
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    binary = []  # integer weights with codes -64/+64 only, clipped to [-127, 127] before DequantizeLinear
    for node in graph.node:
        codes = inits.get(node.input[0])
        if node.op_type == "Clip" and codes is not None and codes.dtype == np.int8:
            if set(np.unique(codes)) <= {-64, 64}:
                binary.append((int(inits[node.input[1]]), int(inits[node.input[2]])))
    assert n_binary == 8 and len(binary) == n_binary and set(binary) == {(-127, 127)}  # ResNet-8's searched convs
    assert {"BipolarQuant", "Quant"} <= {n.op_type for n in onnx.load(res.dir / "model_qonnx.onnx").graph.node}


def test_layers_wider_than_8_bits_skip_qcdq_with_the_reason(tmp_path, perturb, capsys):
    run_dir, net = _finetuned_run(tmp_path, perturb, 2, "space.first.w_bits=16")
    (res,) = export(run_dir, ["onnx-qcdq"])
    assert res.skipped == {"onnx-qcdq": "QCDQ holds integers of at most 8 bits; conv1 has 16-bit weights"}
    assert not res.files and res.check_ok is None
    assert f"export {net.name} (1/1): nothing written; skipped onnx-qcdq, " in capsys.readouterr().err


def test_a_broken_packer_fails_the_integer_check_and_the_command(tmp_path, perturb, monkeypatch, capsys):
    run_dir, _ = _finetuned_run(tmp_path, perturb, 2)
    real_pack = packed_format.pack

    def pack_with_a_flipped_bit(values, bits, signed):
        data = bytearray(real_pack(values, bits, signed))
        data[0] ^= 1 << (bits - 1)  # the sign bit of the first weight
        return bytes(data)

    monkeypatch.setattr(packed_format, "pack", pack_with_a_flipped_bit)
    assert main(["export", str(run_dir), "--format", "packed"]) == 1
    err = capsys.readouterr().err
    assert "(packed)" in err and "packed: accumulators off by up to" in err
    assert "): packed FAILED, " in err  # the net's progress line
    res = ExportResult.load(RunDir(run_dir).export_summaries()[0])
    packed = res.checks["packed"]
    assert res.check_ok is False and not packed.ok and packed.exact_accumulators is False
    assert packed.max_accumulator_error >= 1 and packed.matching < 1


def test_export_without_finetuned_nets_is_a_clear_error(tmp_path, perturb):
    cfg, run_dir = make_run(tmp_path, perturb)
    RunDir(run_dir).record_config(cfg)
    with pytest.raises(QsposError, match="qspos finetune"):
        export(run_dir, ["packed"])


def test_a_net_fine_tuned_folded_exports_as_itself(tmp_path, perturb):
    """Trained in its deployment form, the net QCDQ holds is the PyTorch net: no rounding between them."""
    run_dir, net = _finetuned_run(tmp_path, perturb, 2, "finetune.fold_bn=start")
    (res,) = export(run_dir)
    assert res.check_ok and set(res.checks) == {"onnx-qcdq", "qonnx", "packed"}, res.checks
    qcdq = res.checks["onnx-qcdq"]
    assert qcdq.max_abs_logit_diff < 1e-4 and qcdq.test_change == 0 and qcdq.torch_test_top1 == net.test_top1
    assert (qcdq.integer_convs, qcdq.convs) == (8, 9)
    assert "BatchNormalization" not in {n.op_type for n in onnx.load(res.dir / "model_qcdq.onnx").graph.node}
