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
adds it: that rounding is the fold's only change to the net's outputs, and
:func:`fit_int32_biases` makes it small (each channel's bias and weight scale refitted on
calibration images). The supernet keeps its shared BatchNorms; only the extracted net is folded.

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
from brevitas.nn.mixin.parameter import QuantBiasMixin
from brevitas.nn.quant_layer import QuantWeightBiasInputOutputLayer
from brevitas.quant import Int32Bias
from torch import Tensor, fx, nn

from qspos.core.layers import SignedActQuant

INT16_MAX = 2 ** 15 - 1
OUTPUT_BITS = 8  # a conv output quantized for deployment: int8, what QLinearConv writes
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


def deployment_net(model: nn.Module, calib: Tensor | None, outputs: list[str] | None = None) -> nn.Module:
    """``model`` as an int8 engine runs it: BatchNorm folded (:func:`fold_batchnorm`), every conv
    bias int32 (:func:`quantize_biases`) and fitted (:func:`fit_int32_biases`), every conv output
    that no quantizer follows quantized (:func:`quantize_conv_outputs`), both on ``calib``, images
    of the training split. ``outputs``: the convs whose output to quantize, as
    :func:`output_quantized_convs` names them (a saved deployment net rebuilt to load its state:
    ``calib`` may then be None). A net already in this form is left as it is."""
    folded = fold_batchnorm(model)
    float_biases = float_bias_convs(folded)
    net = quantize_biases(folded)
    if calib is not None:
        fit_int32_biases(net, calib, float_biases)
    return quantize_conv_outputs(net, calib, outputs)


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
    """The quantized convs, in the order the net runs them, whose input is quantized and whose bias
    is not (yet): the biases an integer conv would add unseen by the net."""
    modules = dict(model.named_modules())
    return [node.target for node in _Leaves().trace(model).nodes if node.op == "call_module"
            and isinstance(conv := modules[node.target], QuantConv2d) and conv.bias is not None
            and conv.input_quant.is_quant_enabled and conv.weight_quant.is_quant_enabled
            and not conv.bias_quant.is_quant_enabled]


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


class _Captured(Exception):
    """Stops a calibration forward once the layer it measures has run."""


def _input_and_output(model: nn.Module, layer: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """``layer``'s input and output when ``model`` runs on ``x`` (the rest of the net not run)."""
    seen: list[Tensor] = []

    def capture(m: nn.Module, args: tuple, out: Tensor) -> None:
        seen.extend((args[0], out))
        raise _Captured

    hook = layer.register_forward_hook(capture)
    try:
        model(x)
    except _Captured:
        pass
    finally:
        hook.remove()
    return seen[0], seen[1]


@torch.no_grad()
def fit_int32_biases(model: nn.Module, calib: Tensor, names: list[str], candidates: int = 2) -> nn.Module:
    """``model`` (changed in place and returned) with each int32 bias of the convs ``names`` (in the
    order the net runs them) and its channel's weight scale refitted, by least squares on ``calib``,
    to the output the conv had with its bias in float.

    Why: an int32 bias is a whole number ``k`` of accumulator steps ``s`` (input scale times weight
    scale). With 1-3-bit weights on 2-bit inputs a step is coarse, and rounding ``b`` to ``k * s``
    shifts the whole channel. A channel whose weight codes are all zero (its BatchNorm variance near
    zero, so its folded scale is huge) loses its bias to zero. Per channel, with ``z`` the conv's
    output before the bias, the fit takes the ``k`` (the rounded one and ``candidates`` either side)
    and the factor ``r > 0`` on the channel's weight scale that minimise ``E[(r (z + k s) - (z + b))^2]``
    (closed form in the mean and second moment of ``z``), and scales the float weights and threshold
    by ``r``: the integer codes stay as they are, and the bias is again a whole number of steps.
    The rounded bias is the candidate ``k`` at ``r = 1``, so the fit never does worse on ``calib``;
    an all-zero channel's bias becomes exact. Each conv is fitted after those before it, on the
    inputs they now give it."""
    model.eval()
    for name in names:
        conv = model.get_submodule(name)
        x, y = _input_and_output(model, conv, calib)
        bias = conv.bias_quant(conv.bias, conv.input_quant(x), conv.quant_weight())
        step, target = bias.scale.flatten().double(), conv.bias.double()
        z = (y - bias.value.view(1, -1, 1, 1)).double().transpose(0, 1).flatten(1)
        mean, square = z.mean(1), z.square().mean(1)
        rounded = torch.round(target / step)
        best_k, best_r, best_err = rounded, torch.ones_like(step), (rounded * step - target) ** 2
        for k in (rounded + j for j in range(-candidates, candidates + 1)):
            u_square = square + 2 * k * step * mean + (k * step) ** 2  # E[(z + k s)^2]
            cross = square + (k * step + target) * mean + target * k * step  # E[(z + k s)(z + b)]
            r = cross / u_square  # NaN where z + k s is all zero
            err = square + 2 * target * mean + target ** 2 - cross * r
            better = (r > 0) & (err < best_err)
            best_k, best_r, best_err = (torch.where(better, new, old) for new, old in
                                        ((k, best_k), (r, best_r), (err, best_err)))
        channel = (-1,) + (1,) * (conv.weight.dim() - 1)
        conv.weight.mul_(best_r.view(channel).to(conv.weight.dtype))
        threshold = conv.weight_quant.tensor_quant.scaling_impl.value
        threshold.mul_(best_r.view(channel).expand_as(threshold).to(threshold.dtype))
        conv.bias.copy_((best_k * step * best_r).to(conv.bias.dtype))
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
