"""Export of a run's fine-tuned nets (``qspos export RUN_DIR``) into ``RUN_DIR/export/<name>/``.

Every file written is run and checked against the PyTorch net on the first ``export.check_batch``
test images; the checks land in ``summary.json``. A file matches on an image when its logits are
all within ``LOGIT_RTOL`` of the largest PyTorch logit. Not on every image: two float programs of
one quantized net (even PyTorch's own at two batch sizes, whose kernels differ in the last bits)
now and then round a value lying within ~1e-5 step of a rounding edge one code apart, and
a deep net carries that code through its later layers to the logits (DenseNet-121 W4A4 at
64x64: batch 1 against batch 64 moves the logits of 41% of images by more than 1%). So every check
measures that noise on its images: the PyTorch net run again one image at a time, against itself
batched (``torch_self_matching``). A file passes when it matches on at least
:func:`required_matching` of the images: ``MATCHING_SHARE``, lowered on a net that varies itself;
a wrong file is off on most images. What tells an exact file from a defect code by code is the
packed check: each layer's accumulators from the same input codes.

- ``onnx-qcdq``: standard ONNX (QuantizeLinear/Clip/DequantizeLinear around float ops), run in
  onnxruntime as written (graph optimizations off); its top-1 over the whole test split must also
  be consistent with the fine-tuned net's on the same images (:func:`top1_consistent`; not with a
  caller's score, which is only ever called on the caller's own nets: there the checked images'
  outputs decide). onnxruntime's default optimizations are run too and reported (``optimized_*``),
  not judged: they run QDQ groups as integer kernels with their own roundings (a float conv bias
  to int32 at the accumulator's scale, requantization between fused ops), so a net with conv
  biases is off there while the file is right. 1-bit (binary) weights are integers -1/+1 in a
  narrow 2-bit range times their per-channel scale (``qspos.stages.export_qcdq``).
- ``qonnx``: ONNX with QONNX ``Quant``/``BipolarQuant`` nodes, the input of FINN-style flows, with
  a static input shape (batch 1); run with ``qonnx``'s executor after its usual cleanup, on the
  first ``QONNX_IMAGES`` checked images (the reference executor is slow).
- ``packed``: the weights as integer codes at their real bit-widths (``quant_kernels.packing``)
  in ``weights.bin``, a JSON header (``weights.json``: shapes, bits, scales, byte ranges, how each
  layer's input is quantized) to unpack them, and the float parameters (biases, BatchNorm) in
  ``float.npz``. Its size in bytes is reported next to the cost model's (``size_bits / 8``; each
  layer is padded to whole bytes). Checked as an integer model: the three files loaded into the
  net with every quantized layer computed on integers (``quant_kernels.intnet``), whose
  accumulators must equal, layer by layer, those of the PyTorch layer's own integer codes.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import warnings
from collections.abc import Callable
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
from qspos.runtime.checkpoint import load_model_state
from qspos.runtime.data import load_splits, make_loader
from qspos.runtime.files import atomic_path, write_bytes, write_json
from qspos.runtime.progress import ScoreFormat, percent, table
from qspos.runtime.rundir import RunDir, holds_run_dir
from quant_kernels.intnet import IntegerWeights, float_layers, integer_layers, integer_reference
from quant_kernels.packing import pack, unpack

FORMATS = ("onnx-qcdq", "qonnx", "packed")
QCDQ_FILE, QONNX_FILE = "model_qcdq.onnx", "model_qonnx.onnx"
PACKED_FILE, HEADER_FILE, FLOAT_FILE = "weights.bin", "weights.json", "float.npz"
LOGIT_RTOL = 0.01  # an image matches when every logit is within this share of the largest |logit|
MATCHING_SHARE = 0.95  # a file passes when it matches on this share of the checked images...
NOISE_FACTOR = 3  # ... or on PyTorch's own share (batch 1 against batched) to this power: required_matching
TOP1_Z = 3.0  # QCDQ's test top-1 change from PyTorch's within this many standard deviations: top1_consistent
QONNX_IMAGES, QONNX_CHUNK = 64, 16  # qonnx's executor: slow (node by node), keeps every tensor
QCDQ_MAX_BITS = 8  # QuantizeLinear/DequantizeLinear hold 8-bit integers
ONNX_DEPS = ("onnx", "onnxruntime", "onnxscript", "onnxoptimizer", "qonnx")


@dataclass
class Check:
    """One exported file run against the PyTorch net on the same test images."""

    runtime: str  # what ran the file
    images: int  # test images compared
    max_abs_logit_diff: float
    max_abs_logit: float  # PyTorch's largest |logit| on those images: what LOGIT_RTOL is a share of
    matching: float  # share of those images whose logits match PyTorch's (LOGIT_RTOL)
    top1_agreement: float  # share of those images on which both predict the same class
    ok: bool
    test_top1: float | None = None  # QCDQ: the file's top-1 over the whole test split
    torch_test_top1: float | None = None  # QCDQ: the fine-tuned net's, on the same images in the same pass
    optimized_test_top1: float | None = None  # QCDQ: the same with onnxruntime's default optimizations
    optimized_max_abs_logit_diff: float | None = None  # QCDQ: those optimizations, checked images
    exact_accumulators: bool | None = None  # packed: every layer's accumulators equal Brevitas' codes' ones
    max_accumulator_error: int | None = None  # packed: largest |accumulator - Brevitas' accumulator|
    float_layers: list[str] | None = None  # packed: layers with a float operand, run as they are
    # newer fields (None in an older summary.json)
    test_images: int | None = None  # QCDQ: the test split's images
    test_change: int | None = None  # QCDQ: images only the file gets right minus those only PyTorch does
    test_discordant: int | None = None  # QCDQ: images exactly one of the two gets right
    required_matching: float | None = None  # the share of images this file had to match on
    torch_self_matching: float | None = None  # PyTorch one image at a time against itself batched
    torch_self_max_abs_logit_diff: float | None = None  # ... and its largest |logit difference|

    def reasons(self) -> list[str]:
        """Why the check failed, in words; a mismatch is stated next to the PyTorch net's own
        variation, so a user sees whether the net itself varies that much (empty: no measure says)."""
        out = []
        required = MATCHING_SHARE if self.required_matching is None else self.required_matching
        if self.matching < required:
            own = ("" if self.torch_self_matching is None else
                   f"; the PyTorch net itself, one image at a time, matches its batched logits on "
                   f"{percent(self.torch_self_matching)} (max |logit diff| {self.torch_self_max_abs_logit_diff:.3g})")
            out.append(f"logits match PyTorch's on {percent(self.matching)} of {self.images} images, "
                       f"{percent(required)} needed{own}")
        if self.exact_accumulators is False:
            out.append(f"accumulators off by up to {self.max_accumulator_error}: a weight or input code differs")
        if self.test_discordant is not None and not top1_consistent(self.test_change, self.test_discordant):
            out.append(f"test top-1 {percent(self.test_top1)}, PyTorch {percent(self.torch_test_top1)}: "
                       f"{self.test_change:+d} images of the {self.test_discordant} only one of them gets right, "
                       f"noise explains up to ±{TOP1_Z * math.sqrt(self.test_discordant):.1f}")
        return out


@dataclass
class ExportResult:
    """What one net's ``summary.json`` holds."""

    name: str
    dir: Path
    files: dict[str, str] = field(default_factory=dict)  # format -> file name in ``dir``
    skipped: dict[str, str] = field(default_factory=dict)  # format -> why it was not written
    checks: dict[str, Check] = field(default_factory=dict)  # format -> its file run against PyTorch
    packed_bytes: int | None = None
    theoretical_bytes: float | None = None  # the cost model's size_bits / 8

    @property
    def check_ok(self) -> bool | None:
        """Did every exported file reproduce the PyTorch net (None: no check ran)?"""
        return all(c.ok for c in self.checks.values()) if self.checks else None

    def failed(self) -> list[str]:
        """The formats whose check failed."""
        return [fmt for fmt, c in self.checks.items() if not c.ok]

    def failures(self) -> list[str]:
        """Each failed check's reasons, as ``<format>: <reason>``."""
        return [f"{fmt}: {why}" for fmt in self.failed() for why in self.checks[fmt].reasons()]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "dir": str(self.dir), "check_ok": self.check_ok}

    @classmethod
    def load(cls, path: str | Path) -> ExportResult:
        """An export's ``summary.json``."""
        d = json.loads(Path(path).read_text())
        fields = {k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != "dir"}
        fields["checks"] = {fmt: Check(**c) for fmt, c in d.get("checks", {}).items()}
        return cls(**fields, dir=Path(d["dir"]))


@holds_run_dir
def export(run_dir: str | Path | RunDir, formats: list[str] | None = None) -> list[ExportResult]:
    """Export every fine-tuned net of ``run_dir`` in ``formats`` (default: the config's
    ``export.formats``) and check each file; writes ``export/<name>/`` with a ``summary.json`` each."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    cfg = run.read_config()
    formats = list(formats or cfg.export.formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise QsposError(f"unknown export format {unknown[0]!r}; one of {', '.join(FORMATS)}")
    if any(f != "packed" for f in formats):
        require_onnx()
    nets = run.finetuned()
    if not nets:
        raise QsposError(f"no fine-tuned nets in {run.path / run.FINETUNE}: run 'qspos finetune' first")
    test = load_splits(cfg.data, cfg.model).test
    loader = make_loader(test, cfg.data.eval_batch_size, shuffle=False, workers=cfg.data.workers)
    batches = first_batches(loader, cfg.export.check_batch)
    costs = CostModel(build_supernet(cfg), cfg.input_shape)
    results = []
    for net in nets:
        model, arch = load_finetuned(cfg, net.model)
        logits, rerun = pytorch_logits(model, batches)
        out = run.export(net.name)
        out.mkdir(parents=True, exist_ok=True)
        res = ExportResult(net.name, out, theoretical_bytes=costs.metrics(arch)["size_bits"] / 8)
        if "onnx-qcdq" in formats:
            too_wide = wider_than(model, QCDQ_MAX_BITS)
            if too_wide:
                res.skipped["onnx-qcdq"] = f"QCDQ holds integers of at most {QCDQ_MAX_BITS} bits; {too_wide}"
            else:
                export_qcdq(model, batches[0][:1], out / QCDQ_FILE)
                res.files["onnx-qcdq"] = QCDQ_FILE
                # a caller's score is for its own nets, not for a wrapper of the file: the file is
                # then judged by its outputs against PyTorch's, as the other formats are
                test = loader if ScoreFormat(cfg.score).accuracy else None
                res.checks["onnx-qcdq"] = check_qcdq(out / QCDQ_FILE, model, batches, logits, rerun, test)
        if "qonnx" in formats:
            export_qonnx(model, batches[0][:1], out / QONNX_FILE)
            res.files["qonnx"] = QONNX_FILE
            res.checks["qonnx"] = check_qonnx(out / QONNX_FILE, batches, logits, rerun)
        if "packed" in formats:
            res.packed_bytes = export_packed(model, out)
            res.files["packed"] = PACKED_FILE
            res.checks["packed"] = check_packed(out, model, batches, logits, rerun)
        write_json(run.export_summary(net.name), res.to_dict())
        results.append(res)
    return results


def require_onnx() -> None:
    """ONNX export needs the optional ``export`` extra; say so before any work starts."""
    missing = [m for m in ONNX_DEPS if importlib.util.find_spec(m) is None]
    if missing:
        raise QsposError(f"ONNX export needs {', '.join(missing)}: pip install 'qspos[export]'")


def first_batches(loader: Any, n: int) -> list[Tensor]:
    """The loader's batches of its first ``n`` images: what every check compares on, a batch at a
    time (the data's ``eval_batch_size`` bounds the memory a check takes)."""
    batches, seen = [], 0
    for x, _ in loader:
        batches.append(x[: n - seen])
        seen += len(batches[-1])
        if seen >= n:
            break
    return batches


@torch.no_grad()
def pytorch_logits(model: nn.Module, batches: list[Tensor]) -> tuple[Tensor, Tensor]:
    """PyTorch's logits on the checked images, batched as loaded (what every file is compared
    with), and again one image at a time: the net's own noise floor, as another batch size runs
    other float kernels, whose last bits move a value on a step's edge to the next code."""
    return torch.cat([model(x) for x in batches]), torch.cat([model(x) for x in torch.cat(batches).split(1)])


def quant_layers(model: nn.Module) -> list[tuple[str, QuantConv2d | QuantLinear]]:
    """The quantized Conv2d/Linear layers of a fine-tuned net, in forward order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))]


def wider_than(model: nn.Module, bits: int) -> str | None:
    """The first layer whose weights or input have more than ``bits`` bits, said in words."""
    for name, layer in quant_layers(model):
        for what, proxy in (("weights", layer.weight_quant), ("input", layer.input_quant)):
            if proxy.is_quant_enabled and int(proxy.bit_width()) > bits:
                return f"{name} has {int(proxy.bit_width())}-bit {what}"
    return None


def compare(runtime: str, out: np.ndarray | Tensor, logits: Tensor, rerun: Tensor | None = None, ok: bool = True,
            **extra: Any) -> Check:
    """A :class:`Check` of a file's logits against PyTorch's on the same images; ``rerun``:
    PyTorch's own on them one image at a time (:func:`pytorch_logits`; None: not measured, the
    file must match on ``MATCHING_SHARE``), ``ok`` the format's own criterion (if any), ``extra``
    its own measures."""
    out = torch.as_tensor(np.asarray(out), dtype=logits.dtype)
    if out.shape != logits.shape:
        raise QsposError(f"{runtime} gave logits of shape {tuple(out.shape)}, PyTorch {tuple(logits.shape)}")
    diff, scale = _logit_diff(out, logits), float(logits.abs().max())
    matching = float((diff <= LOGIT_RTOL * scale).double().mean())
    agreement = float((out.argmax(1) == logits.argmax(1)).double().mean())
    own = {}
    if rerun is not None:
        own_diff = _logit_diff(rerun, logits)
        own = {"torch_self_matching": float((own_diff <= LOGIT_RTOL * scale).double().mean()),
               "torch_self_max_abs_logit_diff": float(own_diff.max())}
    required = required_matching(own.get("torch_self_matching"))
    return Check(runtime, len(logits), float(diff.max()), scale, matching, agreement, ok and matching >= required,
                 required_matching=required, **own, **extra)


def _logit_diff(out: Tensor, logits: Tensor) -> Tensor:
    """Per image, the largest |logit difference|."""
    return (out - logits).abs().flatten(1).amax(1)


def required_matching(self_matching: float | None) -> float:
    """The share of the checked images a file must match on: ``MATCHING_SHARE``, lowered to
    ``self_matching ** NOISE_FACTOR`` where the PyTorch net matches itself on fewer
    (``self_matching``: one image at a time against batched; None: not measured).

    Why that power: an image matches when no value of it lands on the other side of a rounding
    edge, which, with flips that rare, happens with probability exp(-k * noise), ``noise`` the
    float difference between the two programs. A file whose float results differ from PyTorch's
    up to ``NOISE_FACTOR`` times as much as PyTorch's own batch sizes do then matches on
    ``self_matching ** NOISE_FACTOR`` of the images (DenseNet-121 W4A4 at 64x64 after a
    fine-tuning step: PyTorch 59.0%, its QCDQ file 48.8% = 59.0% ** 1.36, QONNX 48.4% of 64
    images, where PyTorch is at 60.9%: ** 1.46, the exact packed model 59.8%); a wrong file
    matches on next to none."""
    return MATCHING_SHARE if self_matching is None else min(MATCHING_SHARE, self_matching ** NOISE_FACTOR)


def top1_consistent(change: int, discordant: int) -> bool:
    """Is a file's test top-1, against PyTorch's on the same images, what rounding noise gives?

    ``change``: the images only the file gets right minus those only PyTorch gets right (the
    difference of the two top-1s times the images); ``discordant``: the images exactly one of them
    gets right. Both nets see the same images, so only the discordant ones tell them apart, and a
    file that differs by noise alone wins or loses each at even odds: ``change`` then has mean 0
    and standard deviation ``sqrt(discordant)`` (McNemar's test). It passes within ``TOP1_Z`` of
    those: a right file fails 3 times in 1,000, a file that costs accuracy fails once the loss
    stands out from that noise (never on up to ``TOP1_Z ** 2`` discordant images, as
    ``|change| <= discordant``), whatever the test split's size; a fixed tolerance in points
    means nothing on a few hundred images."""
    return abs(change) <= TOP1_Z * math.sqrt(discordant)


# ---------------------------------------------------------------------------- ONNX


def _onnx_kwargs(dynamic_batch: bool) -> dict[str, Any]:
    # The TorchScript exporter: quicker and quieter than dynamo here, and its graphs load in
    # onnxruntime as they are.
    axes = {"dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}}} if dynamic_batch else {}
    return {"input_names": ["input"], "output_names": ["logits"], "keep_initializers_as_inputs": False, **axes}


def export_qcdq(model: nn.Module, sample: Tensor, path: Path) -> None:
    """QCDQ ONNX with a free batch axis; binary weights as narrow 2-bit integers
    (:mod:`qspos.stages.export_qcdq`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from qspos.stages.export_qcdq import export_onnx_qcdq

        # a copy: export mode leaves state on the quant proxies
        with atomic_path(path) as tmp:
            export_onnx_qcdq(copy.deepcopy(model).eval(), sample, tmp, **_onnx_kwargs(dynamic_batch=True))


def export_qonnx(model: nn.Module, sample: Tensor, path: Path) -> None:
    """QONNX with the static input shape of ``sample`` (qonnx's executor and FINN need one)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from brevitas.export import export_qonnx as brevitas_export_qonnx

        with atomic_path(path) as tmp:
            brevitas_export_qonnx(copy.deepcopy(model).eval(), args=(sample,), export_path=str(tmp), dynamo=False,
                                  **_onnx_kwargs(dynamic_batch=False))


def check_qcdq(path: Path, model: nn.Module, batches: list[Tensor], logits: Tensor, rerun: Tensor | None = None,
               loader: Any = None) -> Check:
    """Run the QCDQ file in onnxruntime as written (graph optimizations off) on the checked images
    and, next to the PyTorch ``model``, over the test ``loader`` (None: the run has a caller's
    score, and the checked images' outputs decide alone), where its top-1 must be consistent with
    the model's (:func:`top1_consistent`); the same with onnxruntime's default optimizations, for
    the record."""
    import onnxruntime as ort

    def session(level: Any) -> Callable[[Tensor], Tensor]:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # errors only
        opts.graph_optimization_level = level
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])

    as_written = session(ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    optimized = session(ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    out = torch.cat([as_written(x) for x in batches])
    optimized_diff = float(_logit_diff(torch.cat([optimized(x) for x in batches]), logits).max())
    if loader is None:
        return compare("onnxruntime", out, logits, rerun, optimized_max_abs_logit_diff=optimized_diff)
    torch_hit, file_hit, optimized_hit = top1_hits(loader, model, as_written, optimized)
    change, discordant = paired_change(torch_hit, file_hit)
    return compare("onnxruntime", out, logits, rerun, ok=top1_consistent(change, discordant),
                   test_top1=_share(file_hit), torch_test_top1=_share(torch_hit),
                   optimized_test_top1=_share(optimized_hit), optimized_max_abs_logit_diff=optimized_diff,
                   test_images=len(torch_hit), test_change=change, test_discordant=discordant)


@torch.no_grad()
def top1_hits(loader: Any, *nets: Callable[[Tensor], Tensor]) -> list[Tensor]:
    """Per image of ``loader``, whether each net's top-1 class is its label (``topk``, as the
    evaluator takes it), all in one pass: the nets are compared image by image."""
    hits: list[list[Tensor]] = [[] for _ in nets]
    for x, y in loader:
        for hit, net in zip(hits, nets):
            hit.append(net(x).topk(1, dim=1).indices[:, 0] == y)
    return [torch.cat(hit) for hit in hits]


def paired_change(torch_hit: Tensor, file_hit: Tensor) -> tuple[int, int]:
    """(change, discordant) of :func:`top1_consistent` from the two nets' per-image hits."""
    gained, lost = int((file_hit & ~torch_hit).sum()), int((torch_hit & ~file_hit).sum())
    return gained - lost, gained + lost


def _share(hit: Tensor) -> float:
    return float(hit.double().mean())


def check_qonnx(path: Path, batches: list[Tensor], logits: Tensor, rerun: Tensor | None = None) -> Check:
    """Run the QONNX file with ``qonnx``'s executor after its usual cleanup, on the first
    ``QONNX_IMAGES`` checked images, ``QONNX_CHUNK`` at a time (the executor runs node by node and
    keeps every tensor; the cleanup sets the batch size as ``qonnx-cleanup --override-inpsize``)."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.util.cleanup import cleanup_model

    images, logits = torch.cat(batches)[:QONNX_IMAGES], logits[:QONNX_IMAGES]
    chunk = min(QONNX_CHUNK, len(images))
    outs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapper = cleanup_model(ModelWrapper(str(path)), override_inpsize=chunk)
        name_in, name_out = wrapper.graph.input[0].name, wrapper.graph.output[0].name
        for x in images.split(chunk):
            n = len(x)
            x = torch.cat([x, x[:1].expand(chunk - n, *x.shape[1:])])  # the last chunk padded
            outs.append(execute_onnx(wrapper, {name_in: x.numpy()})[name_out][:n])
    return compare("qonnx", np.concatenate(outs), logits, None if rerun is None else rerun[:QONNX_IMAGES])


# ---------------------------------------------------------------------------- packed weights


@torch.no_grad()
def export_packed(model: nn.Module, out: Path) -> int:
    """Write ``weights.bin`` + ``weights.json`` + ``float.npz``; return the size of the first.

    Codes are signed narrow-range integers at the layer's bit-width (two's complement); binary
    (1-bit) weights are stored as one bit each, 1 for +1 and 0 for -1. A weight is
    ``code * scale`` with one scale per output channel; an input is quantized per tensor,
    ``clamp(round(x / input_scale))`` to the range of ``input_bits``/``input_signed``/``input_narrow``.
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
        act = layer.input_quant
        if qt.zero_point.any() or (act.is_quant_enabled and act.zero_point().any()):
            raise QsposError(f"packed export holds symmetric quantizers (zero point 0); {name} has another")
        codes = qt.int().to(torch.int64)
        binary = bits == 1
        data = pack(codes > 0 if binary else codes, bits, signed=not binary)
        packed_layers.add(name)
        chunks.append(data)
        header["layers"].append({
            "name": name, "shape": list(codes.shape), "bits": bits,
            "encoding": "binary" if binary else "int", "offset": offset, "nbytes": len(data),
            "scale": qt.scale.flatten().tolist(),
            "input_bits": int(act.bit_width()) if act.is_quant_enabled else None,
            "input_scale": float(act.scale()) if act.is_quant_enabled else None,
            "input_signed": bool(act.is_signed) if act.is_quant_enabled else None,
            "input_narrow": bool(act.is_narrow_range) if act.is_quant_enabled else None,
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


def read_packed(export_dir: str | Path) -> list[tuple[dict[str, Any], Tensor]]:
    """Each layer's ``weights.json`` entry with its integer codes (binary weights as -1/+1)."""
    export_dir = Path(export_dir)
    header = json.loads((export_dir / HEADER_FILE).read_text())
    blob = (export_dir / PACKED_FILE).read_bytes()
    out = []
    for entry in header["layers"]:
        binary = entry["encoding"] == "binary"
        data = blob[entry["offset"]: entry["offset"] + entry["nbytes"]]
        codes = unpack(data, entry["bits"], entry["shape"], signed=not binary)
        out.append((entry, 2 * codes - 1 if binary else codes))
    return out


def unpack_weights(export_dir: str | Path) -> dict[str, tuple[Tensor, Tensor]]:
    """Read a packed export back: layer name -> (integer codes, dequantized float32 weight)."""
    out = {}
    for entry, codes in read_packed(export_dir):
        scale = torch.tensor(entry["scale"], dtype=torch.float32).view(-1, *([1] * (codes.dim() - 1)))
        out[entry["name"]] = (codes, codes.to(torch.float32) * scale)
    return out


def integer_weights(export_dir: str | Path) -> dict[str, IntegerWeights]:
    """The packed layers whose input is quantized, as an integer model runs them."""
    return {entry["name"]: IntegerWeights(codes, torch.tensor(entry["scale"], dtype=torch.float32),
                                          entry["input_scale"], entry["input_bits"], entry["input_signed"],
                                          entry["input_narrow"])
            for entry, codes in read_packed(export_dir) if entry["input_bits"] is not None}


def load_float_params(model: nn.Module, path: Path) -> None:
    """Load ``float.npz`` (biases, BatchNorm, float weights) into ``model``; the rest stays."""
    with np.load(path) as npz:
        state = {key: torch.from_numpy(npz[key]) for key in npz.files}
    load_model_state(model, {**model.state_dict(), **state}, path)


@torch.no_grad()
def check_packed(export_dir: Path, model: nn.Module, batches: list[Tensor], logits: Tensor,
                 rerun: Tensor | None = None) -> Check:
    """Run the packed export as an integer model: the net's own forward, its parameters from
    ``float.npz`` and each quantized layer's accumulators computed exactly from ``weights.bin``
    and ``weights.json``; they must equal those of the PyTorch layer's own integer codes, each
    layer's from the same input codes: rounding noise upstream (see :func:`required_matching`)
    never makes them differ, a wrong code does."""
    net = copy.deepcopy(model)
    load_float_params(net, export_dir / FLOAT_FILE)
    floats = float_layers(net)
    reference = integer_reference(net, integer_weights(export_dir))
    out = torch.cat([reference(x) for x in batches])
    layers = integer_layers(net)
    exact = all(layer.exact for layer in layers)
    return compare("quant_kernels.intops", out, logits, rerun, ok=exact, exact_accumulators=exact,
                   max_accumulator_error=max((layer.max_acc_error for layer in layers), default=0),
                   float_layers=floats)


# ---------------------------------------------------------------------------- tables


def export_table(results: list[ExportResult]) -> Any:
    """One row per exported file: its check against PyTorch, and the packed size."""
    rows = []
    for r in results:
        for fmt, file in r.files.items():
            c = r.checks.get(fmt)
            rows.append([r.name, file, c and c.runtime, c and c.max_abs_logit_diff, c and percent(c.matching),
                         c and percent(c.required_matching), c and percent(c.torch_self_matching),
                         c and percent(c.top1_agreement), c and _check_detail(c), c and ("ok" if c.ok else "FAILED"),
                         r.packed_bytes if fmt == "packed" else None,
                         r.theoretical_bytes if fmt == "packed" else None])
    columns = ["name", "file", "run by", "max |dlogit|", "matching", "needed", "PyTorch batch 1", "same top-1",
               "also", "check", "bytes", "size_bits/8"]
    return table("exports", columns, rows)


def _check_detail(c: Check) -> str | None:
    """A format's own measure in words: QCDQ's test top-1, the packed model's accumulators."""
    if c.test_top1 is not None:
        paired = "" if c.test_discordant is None else f", {c.test_change:+d} of {c.test_discordant} discordant images"
        return (f"test top-1 {percent(c.test_top1)} (PyTorch {percent(c.torch_test_top1)}{paired}; "
                f"onnxruntime optimized {percent(c.optimized_test_top1)})")
    if c.exact_accumulators is not None:
        return "exact accumulators" if c.exact_accumulators else f"accumulators off by {c.max_accumulator_error:.3g}"
    return None
