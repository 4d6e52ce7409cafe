"""Export of a run's fine-tuned nets (``qspos export RUN_DIR``) into ``RUN_DIR/export/<name>/``.

- ``onnx-qcdq``: standard ONNX (QuantizeLinear/Clip/DequantizeLinear around float ops) that
  onnxruntime runs; checked against PyTorch (max |logit difference| on a batch, and test top-1,
  which must agree within 0.1 point). Brevitas has no QCDQ form for 1-bit (binary) weights, so a
  net with any is skipped there, with the reason; its QONNX export carries them (BipolarQuant).
- ``qonnx``: ONNX with QONNX ``Quant``/``BipolarQuant`` nodes, the input of FINN-style flows.
- ``packed``: the weights as integer codes at their real bit-widths (``quant_kernels.packing``)
  in ``weights.bin``, a JSON header (``weights.json``: shapes, bits, scales, byte ranges) to
  unpack them, and the float parameters (biases, BatchNorm) in ``float.npz``. Its size in bytes
  is reported next to the cost model's (``size_bits / 8``; each layer is padded to whole bytes).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from brevitas.nn import QuantConv2d, QuantLinear
from torch import Tensor, nn

from qspos.core.cost import CostModel
from qspos.errors import QsposError
from qspos.runtime.build import build_supernet, load_finetuned
from qspos.runtime.data import load_splits, make_loader
from qspos.runtime.files import atomic_path, write_bytes, write_json
from qspos.runtime.progress import percent, table
from qspos.runtime.rundir import RunDir
from quant_kernels.packing import pack, unpack

FORMATS = ("onnx-qcdq", "qonnx", "packed")
QCDQ_FILE, QONNX_FILE = "model_qcdq.onnx", "model_qonnx.onnx"
PACKED_FILE, HEADER_FILE, FLOAT_FILE = "weights.bin", "weights.json", "float.npz"
TOP1_TOLERANCE = 0.001  # ONNX and PyTorch test top-1 must agree within 0.1 point
ONNX_DEPS = ("onnx", "onnxruntime", "onnxscript", "onnxoptimizer")


@dataclass
class ExportResult:
    """What one net's ``summary.json`` holds."""

    name: str
    dir: Path
    files: dict[str, str] = field(default_factory=dict)  # format -> file name in ``dir``
    skipped: dict[str, str] = field(default_factory=dict)  # format -> why it was not written
    max_abs_logit_diff: float | None = None  # QCDQ in onnxruntime vs PyTorch, on a batch
    torch_test_top1: float | None = None  # the fine-tuned net's (its result.json)
    onnx_test_top1: float | None = None  # the QCDQ file's in onnxruntime, same test split
    packed_bytes: int | None = None
    theoretical_bytes: float | None = None  # the cost model's size_bits / 8

    @property
    def check_ok(self) -> bool | None:
        """Do onnxruntime and PyTorch agree on test top-1 (None: no QCDQ check ran)?"""
        if self.onnx_test_top1 is None or self.torch_test_top1 is None:
            return None
        return abs(self.onnx_test_top1 - self.torch_test_top1) <= TOP1_TOLERANCE

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "dir": str(self.dir), "check_ok": self.check_ok}

    @classmethod
    def load(cls, path: str | Path) -> ExportResult:
        """An export's ``summary.json``."""
        d = json.loads(Path(path).read_text())
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != "dir"}, dir=Path(d["dir"]))


def export(run_dir: str | Path | RunDir, formats: list[str] | None = None) -> list[ExportResult]:
    """Export every fine-tuned net of ``run_dir`` in ``formats`` (default: the config's
    ``export.formats``); writes ``export/<name>/`` with a ``summary.json`` each."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    cfg = run.read_config()
    formats = list(formats or cfg.export.formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise QsposError(f"unknown export format {unknown[0]!r}; one of {', '.join(FORMATS)}")
    onnx_formats = any(f != "packed" for f in formats)
    if onnx_formats:
        require_onnx()
    nets = run.finetuned()
    if not nets:
        raise QsposError(f"no fine-tuned nets in {run.path / run.FINETUNE}: run 'qspos finetune' first")
    if onnx_formats:  # the test split: a tracing sample, and the onnxruntime check
        test = load_splits(cfg.data, cfg.model).test
        loader = make_loader(test, cfg.data.eval_batch_size, shuffle=False, workers=cfg.data.workers)
        sample = test[0][0].unsqueeze(0)
    costs = CostModel(build_supernet(cfg), cfg.input_shape)
    results = []
    for net in nets:
        model, arch = load_finetuned(cfg, net.model)
        out = run.export(net.name)
        out.mkdir(parents=True, exist_ok=True)
        res = ExportResult(net.name, out, theoretical_bytes=costs.metrics(arch)["size_bits"] / 8)
        if "onnx-qcdq" in formats:
            if has_binary_weights(model):
                res.skipped["onnx-qcdq"] = ("1-bit (binary) weights have no QCDQ form in Brevitas "
                                            "(QuantizeLinear needs >= 2 bits); use the qonnx export")
            else:
                export_qcdq(model, sample, out / QCDQ_FILE)
                res.files["onnx-qcdq"] = QCDQ_FILE
                check_onnx(res, out / QCDQ_FILE, model, loader, cfg.export.check_batch)
                res.torch_test_top1 = json.loads(net.result.read_text())["test_top1"]
        if "qonnx" in formats:
            export_qonnx(model, sample, out / QONNX_FILE)
            res.files["qonnx"] = QONNX_FILE
        if "packed" in formats:
            res.packed_bytes = export_packed(model, out)
            res.files["packed"] = PACKED_FILE
        write_json(run.export_summary(net.name), res.to_dict())
        results.append(res)
    return results


def require_onnx() -> None:
    """ONNX export needs the optional ``export`` extra; say so before any work starts."""
    missing = [m for m in ONNX_DEPS if importlib.util.find_spec(m) is None]
    if missing:
        raise QsposError(f"ONNX export needs {', '.join(missing)}: pip install 'qspos[export]'")


def quant_layers(model: nn.Module) -> list[tuple[str, QuantConv2d | QuantLinear]]:
    """The quantized Conv2d/Linear layers of a fine-tuned net, in forward order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))]


def has_binary_weights(model: nn.Module) -> bool:
    return any(m.weight_quant.is_quant_enabled and int(m.quant_weight().bit_width) == 1
               for _, m in quant_layers(model))


# ---------------------------------------------------------------------------- ONNX


def _onnx_kwargs() -> dict[str, Any]:
    # The TorchScript exporter: quicker and quieter than dynamo here, and its graphs load in
    # onnxruntime as they are; the batch axis stays free.
    return {"dynamo": False, "input_names": ["input"], "output_names": ["logits"],
            "dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}},
            "keep_initializers_as_inputs": False}


def export_qcdq(model: nn.Module, sample: Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from brevitas.export import export_onnx_qcdq

        # a copy: export mode leaves state on the quant proxies
        with atomic_path(path) as tmp:
            export_onnx_qcdq(copy.deepcopy(model).eval(), args=(sample,), export_path=str(tmp), **_onnx_kwargs())


def export_qonnx(model: nn.Module, sample: Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from brevitas.export import export_qonnx as brevitas_export_qonnx

        with atomic_path(path) as tmp:
            brevitas_export_qonnx(copy.deepcopy(model).eval(), args=(sample,), export_path=str(tmp), **_onnx_kwargs())


@torch.no_grad()
def check_onnx(res: ExportResult, path: Path, model: nn.Module, loader: Any, check_batch: int) -> None:
    """Run the ONNX file in onnxruntime: max |logit difference| from the PyTorch model on the
    first ``check_batch`` test images, and top-1 over the whole test split (set against the
    fine-tuning's PyTorch test top-1 by the caller)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    model = model.eval().cpu()
    diff, seen, hits = 0.0, 0, 0
    for x, y in loader:
        out = session.run(None, {"input": x.numpy()})[0]
        if seen < check_batch:
            n = check_batch - seen
            diff = max(diff, float(np.abs(out[:n] - model(x[:n]).numpy()).max()))
        seen += len(y)
        hits += int((out.argmax(1) == y.numpy()).sum())
    res.max_abs_logit_diff, res.onnx_test_top1 = diff, hits / seen


# ---------------------------------------------------------------------------- packed weights


@torch.no_grad()
def export_packed(model: nn.Module, out: Path) -> int:
    """Write ``weights.bin`` + ``weights.json`` + ``float.npz``; return the size of the first.

    Codes are signed narrow-range integers at the layer's bit-width (two's complement); binary
    (1-bit) weights are stored as one bit each, 1 for +1 and 0 for -1. A weight is
    ``code * scale`` with one scale per output channel.
    """
    header: dict[str, Any] = {"format": "qspos-packed-1", "byte_order": "little", "layers": []}
    chunks, offset = [], 0
    float_params = {}
    packed_layers = set()
    for name, layer in quant_layers(model):
        if not layer.weight_quant.is_quant_enabled:  # a float weight: goes to float.npz
            continue
        qt = layer.quant_weight()
        bits = int(qt.bit_width)
        if bits > 8:
            raise QsposError(f"packed export holds 1-8-bit weights; {name} has {bits}-bit weights")
        codes = qt.int().to(torch.int64)
        binary = bits == 1
        data = pack(codes > 0 if binary else codes, bits, signed=not binary)
        packed_layers.add(name)
        chunks.append(data)
        act = layer.input_quant
        header["layers"].append({
            "name": name, "shape": list(codes.shape), "bits": bits,
            "encoding": "binary" if binary else "int", "offset": offset, "nbytes": len(data),
            "scale": qt.scale.flatten().tolist(),
            "input_bits": int(act.bit_width()) if act.is_quant_enabled else None,
            "input_scale": float(act.scale()) if act.is_quant_enabled else None,
            "input_signed": bool(act.is_signed) if act.is_quant_enabled else None,
        })
        offset += len(data)
    for key, value in model.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        if "_quant." not in key and not (leaf == "weight" and owner in packed_layers):
            float_params[key] = value.cpu().numpy()
    write_bytes(out / PACKED_FILE, b"".join(chunks))
    write_json(out / HEADER_FILE, header)
    with atomic_path(out / FLOAT_FILE) as tmp, tmp.open("wb") as f:
        np.savez(f, **float_params)
    return offset


def unpack_weights(export_dir: str | Path) -> dict[str, tuple[Tensor, Tensor]]:
    """Read a packed export back: layer name -> (integer codes, dequantized float32 weight)."""
    export_dir = Path(export_dir)
    header = json.loads((export_dir / HEADER_FILE).read_text())
    blob = (export_dir / PACKED_FILE).read_bytes()
    out = {}
    for entry in header["layers"]:
        shape, bits = entry["shape"], entry["bits"]
        binary = entry["encoding"] == "binary"
        data = blob[entry["offset"]: entry["offset"] + entry["nbytes"]]
        codes = unpack(data, bits, shape, signed=not binary)
        if binary:
            codes = 2 * codes - 1
        scale = torch.tensor(entry["scale"], dtype=torch.float32).view(-1, *([1] * (len(shape) - 1)))
        out[entry["name"]] = (codes, codes.to(torch.float32) * scale)
    return out


# ---------------------------------------------------------------------------- tables


def export_table(results: list[ExportResult]) -> Any:
    rows = [[r.name, ", ".join(r.files), r.max_abs_logit_diff, percent(r.torch_test_top1),
             percent(r.onnx_test_top1), r.packed_bytes, r.theoretical_bytes] for r in results]
    columns = ["name", "files", "max |dlogit|", "torch top-1", "onnx top-1", "packed B", "size_bits/8"]
    return table("exports", columns, rows)
