"""The deployment net of an extracted net: BatchNorm folded into its quantized convs, every conv
output quantized, so that an int8 engine runs each conv as an integer conv. Export writes it (QCDQ);
fine-tuning may train it from its first step (``finetune.fold_bn: start``), so that the net it
measures is the one deployed.

Why: an int8 engine runs ``DequantizeLinear -> Conv -> QuantizeLinear`` as one integer conv only
when no BatchNorm stands between the conv and the next quantize step, and it cannot fold one into
weights that are dequantized at run time. The fold is exact on the weights: they are quantized per
output channel, so a channel's factor ``gamma / sqrt(var + eps)`` goes into its learned scale
(its threshold times ``|factor|``) and the float weights times ``factor``, which leaves every
integer code as it was (negated on a channel with a negative factor: exact, as the codes are
narrow-range). The folded bias ``beta + (bias - mean) * factor`` is quantized as an int32 at the
accumulator's scale (``input_scale * weight_scale``, Brevitas' ``Int32Bias``), as an integer conv
adds it: that rounding is the fold's only change to the net's outputs (none on a channel whose
codes are all zero: :func:`exact_zero_channel_biases`). The supernet keeps its shared
BatchNorms; only the extracted net is folded.

A conv whose output feeds anything but quantized layers (the last conv of a residual block, whose
output goes to the add; a stem feeding a shortcut) has no quantize step after it, so an engine runs
it in float. :func:`quantize_conv_outputs` gives each such conv an 8-bit signed per-tensor output
quantizer, its threshold the largest |output| on calibration images from the training split: the
deployment's second change to the outputs, a rounding of at most half an 8-bit step. Not a conv
whose integer products may overflow int16 pairs (:func:`int16_pairs_exact`): the file keeps it a
float conv (:mod:`qspos.formats.qcdq_graph`), which such a quantizer would not speed up.

Which convs get an output quantizer depends on their weights (:func:`int16_pairs_exact`), so a
deployment net trained and saved is rebuilt from the names of those convs
(:func:`output_quantized_convs`), not from its weights.
"""

from __future__ import annotations

import copy
import operator

import torch
import torch.nn.functional as F
from brevitas.nn import QuantConv2d, QuantIdentity
from brevitas.nn.mixin.parameter import QuantBiasMixin, QuantWeightMixin
from brevitas.nn.quant_layer import QuantWeightBiasInputOutputLayer
from brevitas.quant import Int32Bias
from torch import Tensor, fx, nn

from qspos.core.layers import SignedActQuant, WeightQuant

INT16_MAX = 2 ** 15 - 1
INT8_BITS = 8
INT8_CODE_MAX = 2 ** (INT8_BITS - 1) - 1  # the largest int8 weight code of the narrow range
# The largest scaled weight code (int8_weight_codes): int16 pairs exact on any uint8 input
# (int16_pairs_fit(255, 64)). At 127 onnxruntime's AVX2 integer conv saturates on inputs above
# 129 (benchmarks/results/int8_conv.md: exact exactly where the pairs fit); MobileNetV2's uniform
# W1A4 once failed at 64 (85% of checked images matched) but did not again on another seed
# (benchmarks/results/export_trained/README.md).
SCALED_CODE_MAX = 64
OUTPUT_BITS = INT8_BITS  # a conv output quantized for deployment: int8, what QLinearConv writes
PASS_THROUGH_MODULES = (nn.Identity, nn.ReLU, nn.ReLU6)  # what a quantize step after them may absorb
PASS_THROUGH_FUNCTIONS = (F.relu, torch.relu, F.relu6)


class QuantizedOutput(nn.Sequential):
    """A conv and the 8-bit quantizer of its output that the deployment net adds."""


class _Leaves(fx.Tracer):
    """Traces a net down to its Brevitas layers, torch.nn modules and quantized outputs, which it
    does not enter."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return type(m).__module__.startswith("brevitas.") or isinstance(m, QuantizedOutput) or \
            super().is_leaf_module(m, qualname)


def deployment_net(model: nn.Module, calib: Tensor | None, outputs: list[str] | None = None,
                   int8_codes: bool = False) -> nn.Module:
    """``model`` as an int8 engine runs it: BatchNorm folded (:func:`fold_batchnorm`), every conv
    bias int32 (:func:`quantize_biases`, exact on channels whose codes are all zero:
    :func:`exact_zero_channel_biases`), every conv output that no quantizer follows quantized
    (:func:`quantize_conv_outputs`, calibrated on ``calib``, images of the training split).
    ``outputs``: the convs whose output to quantize, as
    :func:`output_quantized_convs` names them (a saved deployment net rebuilt to load its state:
    ``calib`` may then be None). ``int8_codes``: the folded weights as the int8 codes a file holds,
    with accumulator steps finer than their bits allow (:func:`int8_weight_codes`; for export only:
    a net that goes on training keeps its low-bit quantizers). A net already in this form is left
    as it is."""
    return quantize_conv_outputs(folded_int32(model, int8_codes), calib, outputs)


def folded_int32(model: nn.Module, int8_codes: bool = False) -> nn.Module:
    """``model`` with BatchNorm folded and int32 biases (:func:`int32_biases`), its weights as int8
    codes with ``int8_codes`` (:func:`int8_weight_codes`): :func:`deployment_net` before its conv
    outputs are quantized."""
    model = fold_batchnorm(model)
    if int8_codes:
        int8_weight_codes(model, float_bias_convs(model))
    return int32_biases(model)


def output_quantized_convs(model: nn.Module) -> list[str]:
    """The convs of a deployment net that carry an output quantizer (:class:`QuantizedOutput`)."""
    return [name for name, m in model.named_modules() if isinstance(m, QuantizedOutput)]


def int16_pairs_fit(largest_input: int, largest_weight: int) -> bool:
    """Does a sum of two products of input and weight codes fit in int16? ``largest_input``: the
    largest input code as the kernel sees it, uint8 (a signed input shifted by 128: 255)."""
    return 2 * largest_input * largest_weight <= INT16_MAX


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, BatchNorm) module names where the BatchNorm is the only reader of a quantized conv
    whose input is quantized (what an integer conv can absorb)."""
    graph = _Leaves().trace(model)
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        src = node.args[0]
        if isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1:
            conv = modules[src.target]
            if isinstance(conv, QuantConv2d) and conv.input_quant.is_quant_enabled and \
                    conv.weight_quant.is_quant_enabled:
                pairs.append((src.target, node.target))
    return pairs


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every foldable BatchNorm (:func:`conv_bn_pairs`) folded into its
    conv (weights, scale, float bias) and replaced by an identity."""
    model = copy.deepcopy(model).eval()
    for conv_name, bn_name in conv_bn_pairs(model):
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        channel = (-1,) + (1,) * (conv.weight.dim() - 1)
        conv.weight.mul_(factor.view(channel))
        threshold = conv.weight_quant.tensor_quant.scaling_impl.value
        threshold.mul_(factor.abs().view(channel).expand_as(threshold) if threshold.numel() > 1 else factor.abs())
        conv.bias = nn.Parameter(bn.bias + (bias - bn.running_mean) * factor)
        parent, _, leaf = bn_name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, nn.Identity())
    return model.eval()


def float_bias_convs(model: nn.Module) -> list[str]:
    """The quantized convs whose input is quantized and whose bias is not (yet): the biases an
    integer conv would add unseen by the net."""
    return [name for name, conv in model.named_modules() if isinstance(conv, QuantConv2d)
            and conv.bias is not None and conv.input_quant.is_quant_enabled
            and conv.weight_quant.is_quant_enabled and not conv.bias_quant.is_quant_enabled]


@torch.no_grad()
def quantize_biases(model: nn.Module) -> nn.Module:
    """``model`` (changed in place and returned) with every float bias of :func:`float_bias_convs`
    an int32 at the accumulator's scale (Brevitas' ``Int32Bias``), as an integer conv adds it
    (a float bias would be rounded by the engine, unseen by the net)."""
    for name in float_bias_convs(model):
        conv = model.get_submodule(name)
        bias = conv.bias
        QuantBiasMixin.__init__(conv, bias_quant=Int32Bias)
        conv.bias = nn.Parameter(bias.detach().clone())
    return model


def int32_biases(model: nn.Module) -> nn.Module:
    """``model`` (changed in place and returned) with its float conv biases int32, as the deployment
    net holds them: rounded (:func:`quantize_biases`), exact on all-zero channels
    (:func:`exact_zero_channel_biases`)."""
    names = float_bias_convs(model)  # before quantize_biases makes them int32
    return exact_zero_channel_biases(quantize_biases(model), names)


@torch.no_grad()
def int8_weight_codes(model: nn.Module, names: list[str]) -> nn.Module:
    """``model`` (changed in place and returned) with the low-bit weights of the convs ``names``
    quantized as 8-bit: each channel's codes times the largest whole ``k`` that keeps them within
    ``SCALED_CODE_MAX`` (int16 pairs exact on any input: :func:`int16_pairs_fit`), its scale
    divided by ``k``. The weights are the same; the accumulator's step (input scale times weight
    scale) is ``k`` times finer, and so is the rounding of the int32 bias that an integer conv adds.

    Why: an int8 engine reads int8 weight codes whatever their bits, and a 1-2-bit channel's
    accumulator step is large against its folded bias: rounding the biases to whole steps cost
    MobileNetV2's uniform W2A2 net 4.0 test points (``deploy_rounding_mobilenet_v2_uniform.md``);
    its QCDQ file read 4.30 points below PyTorch, with int8 codes 0.51
    (``export_trained/mobilenet_v2_seed0_int8codes127.md``, codes up to 127)."""
    for name in names:
        conv = model.get_submodule(name)
        weight = conv.quant_weight()
        if int(weight.bit_width) >= INT8_BITS:
            continue
        largest = weight.int().flatten(1).abs().amax(1).clamp_min(1)
        k = (SCALED_CODE_MAX // largest).clamp_min(1)
        channel = (-1,) + (1,) * (conv.weight.dim() - 1)
        threshold = (weight.scale.flatten() / k * INT8_CODE_MAX).view(channel)
        conv.weight.copy_(weight.value)
        QuantWeightMixin.__init__(conv, weight_quant=WeightQuant, weight_bit_width=INT8_BITS,
                                  weight_scaling_init=threshold)
    return model


@torch.no_grad()
def exact_zero_channel_biases(model: nn.Module, names: list[str]) -> nn.Module:
    """``model`` (changed in place and returned) with each channel of the convs ``names`` whose
    weight codes are all zero given the weight scale that makes its int32 bias exact: one
    accumulator step (input scale times weight scale) equal to the bias.

    Why: such a channel outputs its bias alone, so its BatchNorm's variance is near zero, its folded
    weight scale is huge (accumulator steps of 50-400 against biases under 1 on ResNet-14's 2-bit
    nets), and rounding the bias to a whole number of steps gives 0: the channel's whole output is
    lost. Its codes being zero, any weight scale computes the same weights, so the fix is exact.
    Other channels keep their rounded bias: refitting their scale and bias by least squares on
    calibration images lowered the conv outputs' error but lost up to 0.56 test points
    (``benchmarks/results/export_trained/seed0_lsfit.md``)."""
    for name in names:
        conv = model.get_submodule(name)
        weight = conv.quant_weight()
        zero = (weight.int().flatten(1) == 0).all(1) & (conv.bias != 0)
        if not zero.any():
            continue
        wanted = conv.bias.abs() / conv.input_quant.scale().flatten()
        factor = torch.where(zero, wanted / weight.scale.flatten(), torch.ones_like(wanted))
        channel = (-1,) + (1,) * (conv.weight.dim() - 1)
        conv.weight.mul_(factor.view(channel))
        threshold = conv.weight_quant.tensor_quant.scaling_impl.value
        threshold.mul_(factor.view(channel).expand_as(threshold))
    return model


def unquantized_conv_outputs(model: nn.Module) -> list[str]:
    """The quantized convs whose output reaches something other than a quantized layer's input
    (through identities and ReLUs, which the next quantize step absorbs) and whose integer
    products an int8 engine sums exactly (:func:`int16_pairs_exact`)."""
    graph = _Leaves().trace(model)
    modules = dict(model.named_modules())
    return [node.target for node in graph.nodes if node.op == "call_module"
            and isinstance(modules[node.target], QuantConv2d) and int16_pairs_exact(modules[node.target])
            and not _only_quantized_readers(node, modules)]


def int16_pairs_exact(conv: QuantConv2d) -> bool:
    """Does a pair of products of ``conv``'s input and weight codes fit in int16, as x86 integer
    kernels without VNNI sum them (:func:`int16_pairs_fit`)?"""
    bits = int(conv.input_quant.bit_width())
    largest_input = 255 if conv.input_quant.is_signed else 2 ** bits - 1
    return int16_pairs_fit(largest_input, int(conv.quant_weight().int().abs().max()))


def _only_quantized_readers(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    for user in node.users:
        target = modules.get(user.target) if user.op == "call_module" else user.target
        layer = target[0] if isinstance(target, QuantizedOutput) else target
        if isinstance(layer, QuantWeightBiasInputOutputLayer) and layer.input_quant.is_quant_enabled:
            continue
        passes = isinstance(target, PASS_THROUGH_MODULES) or target in PASS_THROUGH_FUNCTIONS or \
            (user.op == "call_method" and target == "relu")
        if not passes or not _only_quantized_readers(user, modules):
            return False
    return True


@torch.no_grad()
def quantize_conv_outputs(model: nn.Module, calib: Tensor | None, names: list[str] | None = None) -> nn.Module:
    """``model`` (changed in place and returned) with an 8-bit signed output quantizer after each
    conv of ``names`` (default :func:`unquantized_conv_outputs`), its threshold the largest
    |output| on ``calib`` (1 without it: a threshold that a saved state replaces)."""
    names = unquantized_conv_outputs(model) if names is None else names
    peaks = {n: torch.tensor(1.0) for n in names}
    if calib is not None:
        hooks = [model.get_submodule(n).register_forward_hook(
            lambda m, args, out, name=n: operator.setitem(peaks, name, out.detach().abs().max())) for n in names]
        model.eval()(calib)
        for h in hooks:
            h.remove()
    for name in names:
        parent, _, leaf = name.rpartition(".")
        quant = QuantIdentity(act_quant=SignedActQuant, bit_width=OUTPUT_BITS,
                              scaling_init=peaks[name].clamp_min(1e-8), return_quant_tensor=False)
        setattr(model.get_submodule(parent), leaf, QuantizedOutput(model.get_submodule(name), quant))
    return model.eval()
