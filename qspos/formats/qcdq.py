"""``onnx-qcdq``: standard ONNX (QuantizeLinear/Clip/DequantizeLinear around float ops) for int8
engines such as onnxruntime and TensorRT, and ``model_float.onnx``, the same net in float.

The file holds the fine-tuned net's deployment form (:mod:`qspos.core.fold`): BatchNorm folded
into the weights, int32 biases at the accumulator's scale, and a quantize step after every conv,
so that onnxruntime's optimised graph runs the convs as integer kernels (QLinearConv); a conv whose
integer products may overflow the int16 pairs of x86 kernels without VNNI (8-bit weights on 8-bit
inputs) stays a float conv (:mod:`qspos.formats.qcdq_graph`). Sub-8-bit activations are
uint8/int8 containers with an integer Clip to their k-bit range. The weights of a folded conv are
int8 codes: each channel's k-bit codes times a whole factor, its scale divided by it
(:func:`qspos.core.fold.int8_weight_codes`), the same weights at a finer accumulator step, so that
its int32 bias is rounded finely; the low-bit codes themselves are in ``weights.bin``. Other
1-bit (binary) weights are integers -1/+1 in a narrow 2-bit range times their per-channel scale
(:mod:`qspos.formats.brevitas_qcdq`).

The check runs the file in onnxruntime as written (graph optimizations off) and optimised; both
must match the deployment net's logits on the checked images (the optimised session's roundings
are the deployment's). Over the whole test split the file's top-1 must be consistent with the
fine-tuned net's on the same images (:func:`top1_consistent`; not with a caller's score, which is
only ever called on the caller's own nets: there the checked images' outputs decide): that is
where what the deployment form costs is judged. The check also counts the integer convs of the
optimised graph and times it against ``model_float.onnx`` at batch 1 and 64 on one thread.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from qspos.core.fold import deployment_net
from qspos.formats.check import (
    TOP1_Z,
    Check,
    Reference,
    compare,
    paired_change,
    quant_layers,
    share,
    top1_consistent,
    top1_hits,
)
from qspos.formats.format import Skipped, onnx_export_kwargs
from qspos.formats.metadata import set_onnx_metadata
from qspos.formats.ort_run import latency_ms, optimized_graph, session
from qspos.formats.qcdq_graph import (
    clips_into_integer_clips,
    count_convs,
    float_convs_where_pairs_overflow,
    float_graph,
    signed_steps_as_unsigned,
)
from qspos.runtime.files import atomic_path
from qspos.runtime.progress import percent

FILE, FLOAT_FILE = "model_qcdq.onnx", "model_float.onnx"
MAX_BITS = 8  # QuantizeLinear/DequantizeLinear hold 8-bit integers
TIMED_BATCHES = (1, 64)


@dataclass
class QcdqCheck(Check):
    """The QCDQ file in onnxruntime against the deployment net (the common fields: as written),
    optimised, over the test split against the fine-tuned net, and its speed."""

    test_top1: float | None = None  # the file's top-1 over the whole test split
    torch_test_top1: float | None = None  # the fine-tuned net's, on the same images in the same pass
    optimized_test_top1: float | None = None  # the same with onnxruntime's default optimizations
    optimized_max_abs_logit_diff: float | None = None  # those optimizations, checked images
    test_images: int | None = None  # the test split's images
    test_change: int | None = None  # images only the file gets right minus those only PyTorch does
    test_discordant: int | None = None  # images exactly one of the two gets right
    # None in a summary.json written before the file held the deployment net
    optimized_matching: float | None = None  # share of checked images the optimised session matches on
    integer_convs: int | None = None  # convs of the optimised graph that run on integers
    convs: int | None = None  # all convs of the optimised graph
    qcdq_ms_1: float | None = None  # optimised QCDQ, one image, one thread (median ms)
    float_ms_1: float | None = None  # model_float.onnx, the same
    qcdq_ms_64: float | None = None  # ... 64 images
    float_ms_64: float | None = None

    def reasons(self) -> list[str]:
        out = super().reasons()
        required = self.required_matching
        if self.optimized_matching is not None and required is not None and self.optimized_matching < required:
            out.append(f"onnxruntime's optimised session matches on {percent(self.optimized_matching)} of "
                       f"{self.images} images, {percent(required)} needed")
        if self.test_discordant is not None and not top1_consistent(self.test_change, self.test_discordant):
            out.append(f"test top-1 {percent(self.test_top1)}, PyTorch {percent(self.torch_test_top1)}: "
                       f"{self.test_change:+d} images of the {self.test_discordant} only one of them gets right, "
                       f"noise explains up to ±{TOP1_Z * math.sqrt(self.test_discordant):.1f}")
        return out

    def detail(self) -> str | None:
        parts = []
        if self.test_top1 is not None:
            paired = "" if self.test_discordant is None else \
                f", {self.test_change:+d} of {self.test_discordant} discordant images"
            parts.append(f"test top-1 {percent(self.test_top1)} (PyTorch {percent(self.torch_test_top1)}{paired}; "
                         f"onnxruntime optimized {percent(self.optimized_test_top1)})")
        if self.convs is not None:
            parts.append(f"{self.integer_convs}/{self.convs} integer convs")
        if self.qcdq_ms_64 is not None:
            parts.append(f"batch 64 {self.qcdq_ms_64:.3g} ms vs float {self.float_ms_64:.3g} ms")
        return "; ".join(parts) or None


def wider_than(model: nn.Module, bits: int) -> str | None:
    """The first layer whose weights or input have more than ``bits`` bits, said in words."""
    for name, layer in quant_layers(model):
        for what, proxy in (("weights", layer.weight_quant), ("input", layer.input_quant)):
            if proxy.is_quant_enabled and int(proxy.bit_width()) > bits:
                return f"{name} has {int(proxy.bit_width())}-bit {what}"
    return None


def deployed(ref: Reference) -> nn.Module:
    """The deployment net of the reference's (calibrated on its training images, else on the
    first checked batch), its weights the int8 codes the file holds."""
    return deployment_net(ref.model, ref.calib if ref.calib is not None else ref.batches[0], int8_codes=True)


def write(ref: Reference, out: Path, metadata: Mapping[str, Any]) -> str:
    """The deployment net as QCDQ ONNX with a free batch axis, and as float ONNX beside it."""
    import onnx

    too_wide = wider_than(ref.model, MAX_BITS)
    if too_wide:
        raise Skipped(f"QCDQ holds integers of at most {MAX_BITS} bits; {too_wide}")
    net = deployed(ref)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from qspos.formats.brevitas_qcdq import export_onnx_qcdq

        with atomic_path(out / FILE) as tmp:  # a copy: export mode leaves state on the quant proxies
            export_onnx_qcdq(copy.deepcopy(net), ref.sample, tmp, **onnx_export_kwargs(dynamic_batch=True))
            exported = onnx.load(str(tmp))
            with atomic_path(out / FLOAT_FILE) as float_tmp:
                onnx.save(float_graph(copy.deepcopy(exported)), str(float_tmp))
                set_onnx_metadata(float_tmp, metadata)
            float_convs_where_pairs_overflow(exported)
            clips_into_integer_clips(exported)
            signed_steps_as_unsigned(exported)
            onnx.save(exported, str(tmp))
            set_onnx_metadata(tmp, metadata)
    return FILE


def check(out: Path, ref: Reference) -> QcdqCheck:
    """Run the QCDQ file in onnxruntime, as written and optimised, against the deployment net on
    the checked images, and over the test loader next to the fine-tuned net; count its integer
    convs and time it against the float file."""
    target = Reference.of(deployed(ref), ref.batches)
    as_written, optimized = session(out / FILE, optimized=False), session(out / FILE, optimized=True)
    opt = compare("onnxruntime optimised", torch.cat([optimized(x) for x in ref.batches]), target.logits, target.rerun)
    integer, convs = count_convs(optimized_graph(out / FILE))
    extra: dict[str, Any] = {"optimized_matching": opt.matching, "optimized_max_abs_logit_diff": opt.max_abs_logit_diff,
                             "integer_convs": integer, "convs": convs, **timings(out, ref)}
    ok = opt.ok
    if ref.loader is not None:
        torch_hit, file_hit, optimized_hit = top1_hits(ref.loader, ref.model, as_written, optimized)
        change, discordant = paired_change(torch_hit, file_hit)
        ok = ok and top1_consistent(change, discordant)
        extra.update(test_top1=share(file_hit), torch_test_top1=share(torch_hit),
                     optimized_test_top1=share(optimized_hit), test_images=len(torch_hit), test_change=change,
                     test_discordant=discordant)
    logits = torch.cat([as_written(x) for x in ref.batches])
    return compare("onnxruntime", logits, target.logits, target.rerun, ok=ok, kind=QcdqCheck, **extra)


def timings(out: Path, ref: Reference) -> dict[str, float]:
    """Median ms of the optimised QCDQ and float files at each of ``TIMED_BATCHES`` images, on
    one thread, ``ref.timing_runs`` runs each (none when 0)."""
    if ref.timing_runs <= 0:
        return {}
    images = torch.cat(ref.batches)
    found = {}
    for batch in TIMED_BATCHES:
        x = batch_of(images, batch)
        for name, file in (("qcdq", FILE), ("float", FLOAT_FILE)):
            found[f"{name}_ms_{batch}"] = latency_ms(out / file, x, ref.timing_runs)
    return found


def batch_of(images: Tensor, n: int) -> Tensor:
    """``n`` images from ``images``, repeated as needed."""
    return images.repeat(math.ceil(n / len(images)), *([1] * (images.dim() - 1)))[:n]
