"""Brevitas' QCDQ ONNX exporter, also taking 1-bit (binary) weights.

Why: Brevitas refuses binary weights in QCDQ ("Binary quant not supported"), yet a binary weight
``sign(w) * t`` is exactly a signed integer in the narrow 2-bit range {-1, +1} times its
per-channel scale ``t``, which ``DequantizeLinear`` holds. So the handler here writes binary
weights as int8 codes -1/+1, clipped to [-1, 1] (``Clip``), dequantized with their scales; every
other quantizer is exported as Brevitas does. Imported only when a QCDQ file is written (it needs ONNX).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from brevitas.export.onnx.standard.qcdq.handler import StdQCDQCastONNXWeightQuantProxyHandler
from brevitas.export.onnx.standard.qcdq.manager import StdQCDQONNXManager
from torch import Tensor, nn

NARROW_2BIT = torch.tensor(2.0)  # -1..+1: the codes of a binary weight


def _binary(module: nn.Module) -> bool:
    return bool(module.is_quant_enabled) and float(module.bit_width()) == 1.0


class BinaryAwareWeightHandler(StdQCDQCastONNXWeightQuantProxyHandler):
    """Brevitas' weight handler, plus binary weights as narrow 2-bit integers times their scale."""

    def validate(self, module: nn.Module) -> None:
        if not _binary(module):
            super().validate(module)
            return
        assert module.is_signed and not module.is_groupwise, "binary weights must be signed, per tensor or channel"
        # With a QuantizeLinear node, quantize sign(w) * t (exactly +-t, so the codes are exactly
        # +-1) rather than w, which round() would send to 0 where |w| < t / 2.
        self.export_fake_quantized = self._export_q_node

    def prepare_for_export(self, module: nn.Module) -> None:
        super().prepare_for_export(module)
        if _binary(module):
            self.symbolic_kwargs["clip_symbolic_kwargs"] = self.int_clip_symbolic_kwargs(
                narrow=True, signed=True, bit_width=NARROW_2BIT)


class QCDQManager(StdQCDQONNXManager):
    """``StdQCDQONNXManager`` with :class:`BinaryAwareWeightHandler` for weights."""

    handlers = [BinaryAwareWeightHandler, *StdQCDQONNXManager.handlers]


def export_onnx_qcdq(model: nn.Module, sample: Tensor, path: Path, **onnx_kwargs: Any) -> None:
    """Write ``model`` as QCDQ ONNX to ``path`` (weights as integers)."""
    QCDQManager.export(model, args=(sample,), export_path=str(path), **onnx_kwargs)
