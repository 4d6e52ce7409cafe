"""``qonnx``: ONNX with QONNX ``Quant``/``BipolarQuant`` nodes at any bit-width, the input of FINN
and other low-bit flows, with a static input shape (batch 1).

Checked with ``qonnx``'s executor after its usual cleanup, on the first ``IMAGES`` checked images
(the reference executor is slow).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qspos.formats.check import Check, Reference, compare
from qspos.formats.format import onnx_export_kwargs
from qspos.formats.metadata import set_onnx_metadata
from qspos.runtime.files import atomic_path

FILE = "model_qonnx.onnx"
IMAGES, CHUNK = 64, 16  # qonnx's executor: slow (node by node), keeps every tensor


def write(ref: Reference, out: Path, metadata: Mapping[str, Any]) -> str:
    """QONNX with the static input shape of one image (qonnx's executor and FINN need one)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from brevitas.export import export_qonnx

        with atomic_path(out / FILE) as tmp:
            export_qonnx(copy.deepcopy(ref.model).eval(), args=(ref.sample,), export_path=str(tmp),
                         **onnx_export_kwargs(dynamic_batch=False))
            set_onnx_metadata(tmp, metadata)
    return FILE


def check(out: Path, ref: Reference) -> Check:
    """Run the QONNX file with ``qonnx``'s executor after its usual cleanup, on the first
    ``IMAGES`` checked images, ``CHUNK`` at a time (the executor runs node by node and keeps every
    tensor; the cleanup sets the batch size as ``qonnx-cleanup --override-inpsize``)."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.util.cleanup import cleanup_model

    images, logits = torch.cat(ref.batches)[:IMAGES], ref.logits[:IMAGES]
    chunk = min(CHUNK, len(images))
    outs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapper = cleanup_model(ModelWrapper(str(out / FILE)), override_inpsize=chunk)
        name_in, name_out = wrapper.graph.input[0].name, wrapper.graph.output[0].name
        for x in images.split(chunk):
            n = len(x)
            x = torch.cat([x, x[:1].expand(chunk - n, *x.shape[1:])])  # the last chunk padded
            outs.append(execute_onnx(wrapper, {name_in: x.numpy()})[name_out][:n])
    return compare("qonnx", np.concatenate(outs), logits, None if ref.rerun is None else ref.rerun[:IMAGES])
