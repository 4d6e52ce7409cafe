"""``packed``: the weights as integer codes at their real bit-widths, for custom low-bit kernels.

``weights.bin`` holds the codes (:mod:`quant_kernels.packing`, whose :func:`read_packed` reads
them back without qspos), ``weights.json`` the header that unpacks them (shapes, bits, sign,
narrow range, bit order, scales and zero points, how each layer's input is quantized), and
``float.npz`` the float parameters (biases, BatchNorm, float weights). Its size in bytes is
reported next to the cost model's (``size_bits / 8``; each layer is padded to whole bytes).
Checked as an integer model: the three files loaded into the net with every quantized layer
computed on integers (``quant_kernels.intnet``), whose accumulators must equal, layer by layer,
those of the PyTorch layer's own integer codes.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qspos.errors import QsposError
from qspos.formats.check import Check, Reference, compare, quant_layers
from qspos.runtime.checkpoint import load_model_state
from qspos.runtime.files import atomic_path, write_bytes, write_json
from quant_kernels.intnet import IntegerWeights, float_layers, integer_layers, integer_reference
from quant_kernels.packing import HEADER_FILE, WEIGHTS_FILE, pack, read_packed

FILE, FLOAT_FILE = WEIGHTS_FILE, "float.npz"
HEADER_FORMAT = "qspos-packed-2"
MAX_BITS = 8


@dataclass
class PackedCheck(Check):
    """The packed weights run as an integer model: the common check, and its accumulators."""

    exact_accumulators: bool | None = None  # every layer's accumulators equal Brevitas' codes' ones
    max_accumulator_error: int | None = None  # largest |accumulator - Brevitas' accumulator|
    float_layers: list[str] | None = None  # layers with a float operand, run as they are

    def reasons(self) -> list[str]:
        out = super().reasons()
        if self.exact_accumulators is False:
            out.append(f"accumulators off by up to {self.max_accumulator_error}: a weight or input code differs")
        return out

    def detail(self) -> str | None:
        if self.exact_accumulators is None:
            return None
        return "exact accumulators" if self.exact_accumulators else \
            f"accumulators off by {self.max_accumulator_error:.3g}"


@torch.no_grad()
def write(ref: Reference, out: Path, metadata: Mapping[str, Any]) -> str:
    """Write ``weights.bin`` + ``weights.json`` (``metadata`` in it) + ``float.npz`` into ``out``.

    Codes are signed narrow-range integers at the layer's bit-width (two's complement); binary
    (1-bit) weights are stored as one bit each, 1 for +1 and 0 for -1. A weight is
    ``code * scale`` with one scale per output channel; an input is quantized per tensor,
    ``clamp(round(x / input_scale))`` to the range of ``input_bits``/``input_signed``/``input_narrow``.
    """
    layers, chunks, offset = [], [], 0
    model = ref.model
    for name, layer in quant_layers(model):
        if not layer.weight_quant.is_quant_enabled:  # a float weight: goes to float.npz
            continue
        entry, data = _packed_layer(name, layer, offset)
        layers.append(entry)
        chunks.append(data)
        offset += len(data)
    packed = {entry["name"] for entry in layers}
    float_params = {}
    for key, value in model.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        if "_quant." not in key and not (leaf == "weight" and owner in packed):
            float_params[key] = value.cpu().numpy()
    write_bytes(out / FILE, b"".join(chunks))
    write_json(out / HEADER_FILE, {"format": HEADER_FORMAT, "byte_order": "little", "bit_order": "lsb-first",
                                   "metadata": dict(metadata), "layers": layers})
    with atomic_path(out / FLOAT_FILE) as tmp, tmp.open("wb") as f:
        np.savez(f, **float_params)
    return FILE


def _packed_layer(name: str, layer: nn.Module, offset: int) -> tuple[dict[str, Any], bytes]:
    """A layer's ``weights.json`` entry and its packed codes."""
    qt = layer.quant_weight()
    bits = int(qt.bit_width)
    if bits > MAX_BITS:
        raise QsposError(f"packed export holds 1-{MAX_BITS}-bit weights; {name} has {bits}-bit weights")
    act = layer.input_quant
    if qt.zero_point.any() or (act.is_quant_enabled and act.zero_point().any()):
        raise QsposError(f"packed export holds symmetric quantizers (zero point 0); {name} has another")
    codes = qt.int().to(torch.int64)
    binary = bits == 1
    data = pack(codes > 0 if binary else codes, bits, signed=not binary)
    quantized = act.is_quant_enabled
    entry = {
        "name": name, "shape": list(codes.shape), "bits": bits, "encoding": "binary" if binary else "int",
        "signed": bool(qt.signed), "narrow_range": bool(layer.weight_quant.is_narrow_range),
        "offset": offset, "nbytes": len(data),
        "scale": qt.scale.flatten().tolist(), "zero_point": 0, "scale_axis": 0,
        "input_bits": int(act.bit_width()) if quantized else None,
        "input_scale": float(act.scale()) if quantized else None,
        "input_zero_point": 0 if quantized else None,
        "input_signed": bool(act.is_signed) if quantized else None,
        "input_narrow": bool(act.is_narrow_range) if quantized else None,
        "bias_int32": layer.bias is not None and layer.bias_quant.is_quant_enabled,
    }
    return entry, data


def integer_weights(export_dir: str | Path) -> dict[str, IntegerWeights]:
    """The packed layers whose input is quantized, as an integer model runs them."""
    return {name: IntegerWeights(layer.codes, torch.tensor(layer.entry["scale"], dtype=torch.float32),
                                 layer.entry["input_scale"], layer.entry["input_bits"], layer.entry["input_signed"],
                                 layer.entry["input_narrow"], bool(layer.entry.get("bias_int32")))
            for name, layer in read_packed(export_dir).items() if layer.entry["input_bits"] is not None}


def load_float_params(model: nn.Module, path: Path) -> None:
    """Load ``float.npz`` (biases, BatchNorm, float weights) into ``model``; the rest stays."""
    with np.load(path) as npz:
        state = {key: torch.from_numpy(npz[key]) for key in npz.files}
    load_model_state(model, {**model.state_dict(), **state}, path)


@torch.no_grad()
def check(out: Path, ref: Reference) -> PackedCheck:
    """Run the packed export as an integer model: the net's own forward, its parameters from
    ``float.npz`` and each quantized layer's accumulators computed exactly from ``weights.bin``
    and ``weights.json``; they must equal those of the PyTorch layer's own integer codes, each
    layer's from the same input codes: rounding noise upstream (see
    :func:`qspos.formats.check.required_matching`) never makes them differ, a wrong code does."""
    net = copy.deepcopy(ref.model)
    load_float_params(net, out / FLOAT_FILE)
    floats = float_layers(net)
    reference = integer_reference(net, integer_weights(out))
    logits = torch.cat([reference(x) for x in ref.batches])
    layers = integer_layers(net)
    exact = all(layer.exact for layer in layers)
    return compare("quant_kernels.intops", logits, ref.logits, ref.rerun, ok=exact, kind=PackedCheck,
                   exact_accumulators=exact, float_layers=floats,
                   max_accumulator_error=max((layer.max_acc_error for layer in layers), default=0))
