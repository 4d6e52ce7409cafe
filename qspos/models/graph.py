"""What a model's graph says about its channels: which are coupled, which may shrink, and which
layer inputs are provably non-negative.

The model is traced with ``torch.fx`` and its shapes propagated once. Every tensor with a channel
dimension (dim 1) holds a *channel space*; operations that must see the same channels on both
sides (BatchNorm, depthwise convs, elementwise activations, pooling, residual adds, the multiply
of a squeeze-excitation) merge spaces, so each merged class is one **channel group**: it takes one
width or none. A group is *pinned* (kept at its width) for every reason the graph gives:
concatenations, grouped convs, a flatten of more than one pixel, the network's input and output,
a single channel, and every operation this analysis does not model exactly (a split, a slice, a
view other than a flatten, a reduction over the channels, a tensor of lower rank broadcast over
them, any op it does not know). Only the ops listed below are modelled; pinning is the safe side:
an unknown op only costs a width choice, never a wrong network.

Why torch.fx and not torch-pruning's ``DependencyGraph``: the same trace also proves which inputs
are non-negative (for unsigned activation quantizers) and names every coupling, which ``qspos
space`` prints; torch-pruning gives the coupling only, through autograd, without the op names.
"""

from __future__ import annotations

import contextlib
import io
import math
import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from qspos.core.union_find import UnionFind
from qspos.errors import QsposError

# modules and functions that keep every channel where it is (elementwise, pooling, padding)
_KEEP_MODULES = (
    nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.GELU, nn.LeakyReLU,
    nn.ELU, nn.Mish, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout2d, nn.AlphaDropout, nn.MaxPool2d,
    nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample, nn.ZeroPad2d,
)
_KEEP_FUNCTIONS = {
    F.relu, F.relu6, F.hardswish, F.hardsigmoid, F.silu, F.gelu, F.leaky_relu, F.elu, F.mish, F.dropout,
    F.dropout2d, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.interpolate,
    F.pad, torch.relu, torch.sigmoid, torch.tanh, F.sigmoid, F.tanh, torch.clamp, torch.clip,
}
_KEEP_FUNCTION_NAMES = {"stochastic_depth", "drop_path"}  # torchvision's and timm's, fx-wrapped
_KEEP_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "clamp", "clamp_", "clip", "contiguous",
                 "clone", "float", "to", "type_as", "detach"}
_BINARY = {operator.add, operator.iadd, operator.mul, operator.imul, operator.sub, operator.isub,
           operator.truediv, operator.itruediv, torch.add, torch.mul, torch.sub, torch.div}
_BINARY_METHODS = {"add", "add_", "mul", "mul_", "sub", "sub_", "div", "div_"}
_FLATTEN = {torch.flatten}
_FLATTEN_METHODS = {"flatten", "view", "reshape"}
_CAT = {torch.cat, torch.concat}
# reads of a tensor's size: no channel is used
_SIZE_METHODS = {"size", "dim", "numel"}
_SIZE_ATTRS = {"shape", "ndim", "dtype", "device"}
# what makes a tensor non-negative, and what keeps it so
_NONNEG_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardsigmoid, nn.Sigmoid, nn.Softmax)
_NONNEG_FUNCTIONS = {F.relu, F.relu6, F.hardsigmoid, torch.relu, torch.sigmoid, F.sigmoid, F.softmax, torch.softmax}
_NONNEG_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "softmax"}
_PRESERVE_MODULES = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                     nn.AdaptiveMaxPool2d, nn.Upsample, nn.ZeroPad2d, nn.Flatten)
_PRESERVE_FUNCTIONS = {F.dropout, F.dropout2d, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
                       F.adaptive_max_pool2d, F.interpolate, torch.flatten, torch.cat, torch.concat,
                       operator.add, operator.iadd, operator.mul, operator.imul, torch.add, torch.mul,
                       operator.getitem}
_PRESERVE_METHODS = {"flatten", "view", "reshape", "contiguous", "clone", "mean", "add", "add_", "mul", "mul_",
                     "float", "to", "detach"}


@dataclass
class LayerNode:
    """One Conv2d/Linear of the model, as the graph sees it."""

    name: str  # module path
    module: nn.Module
    in_group: int  # channel group of its input channels
    out_group: int  # channel group of its output channels (a depthwise conv's equals its input's)
    input_nonneg: bool  # the graph proves its input >= 0 (unsigned activation quantizer)
    depthwise: bool
    order: int  # position in the forward pass


@dataclass
class ChannelGroup:
    """Coupled channels: one width (the first k channels in every member) or none."""

    id: int
    channels: int
    producers: list[str] = field(default_factory=list)  # layers whose outputs are these channels
    norms: list[str] = field(default_factory=list)  # BatchNorm2d modules normalising them
    consumers: list[str] = field(default_factory=list)  # layers reading them (depthwise ones excepted)
    pinned: list[str] = field(default_factory=list)  # why the group keeps its width

    @property
    def shrinkable(self) -> bool:
        return not self.pinned and bool(self.producers)


@dataclass
class GraphInfo:
    layers: dict[str, LayerNode]  # in forward order
    groups: dict[int, ChannelGroup]
    first: list[str]  # layers reading the network input (through no other layer)
    last: list[str]  # layers writing the network output (through no other layer)
    norm_inputs: dict[str, str] = field(default_factory=dict)  # BatchNorm2d -> the layer it directly reads


# subclasses of these that keep the base forward compute what the base does: leaves, like it
_LEAF_BASES = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)
# subclasses with their own forward that compute exactly what the base does
_SAME_AS_BASE = {"timm.layers.linear.Linear"}  # casts its weight only under TorchScript


class _Tracer(fx.Tracer):
    """fx's tracer, with Conv2d/Linear/BatchNorm2d subclasses that keep the base's forward as
    leaves (fx traces through every module outside ``torch.nn``, so a ``class MyConv(nn.Conv2d)``
    would become an ``F.conv2d`` call and never be converted)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, _LEAF_BASES) and (f"{type(m).__module__}.{type(m).__qualname__}" in _SAME_AS_BASE
                                           or any(type(m).forward is b.forward for b in _LEAF_BASES)):
            return True
        return super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    """The model's fx graph (its own forward; torch.nn modules stay leaves)."""
    try:
        graph = _Tracer().trace(model)
    except Exception as e:  # noqa: BLE001 - fx raises anything the forward raises
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise QsposError(f"model: torch.fx cannot trace {type(model).__name__}: {first} (the forward must not "
                         "branch on tensor values; wrap such code in a function marked torch.fx.wrap)") from None
    return fx.GraphModule(model, graph, type(model).__name__)


class _Spaces:
    """Channel spaces joined when coupled, with each one's channel count and each set's pin reasons."""

    def __init__(self) -> None:
        self.sets: UnionFind[int] = UnionFind()
        self.channels: list[int] = []
        self.reasons: dict[int, list[str]] = {}

    def new(self, channels: int, reason: str | None = None) -> int:
        s = len(self.channels)
        self.sets.add(s)
        self.channels.append(channels)
        if reason:
            self.pin(s, reason)
        return s

    def find(self, s: int) -> int:
        return self.sets.find(s)

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.sets.union(ra, rb)
            self.reasons.setdefault(ra, []).extend(self.reasons.pop(rb, []))
        return ra

    def pin(self, s: int, reason: str) -> None:
        r = self.reasons.setdefault(self.find(s), [])
        if reason not in r:
            r.append(reason)


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    args = list(node.args) + list(node.kwargs.values())
    flat: list = []
    for a in args:
        flat.extend(a if isinstance(a, (list, tuple)) else [a])
    return [a for a in flat if isinstance(a, fx.Node) and _shape(a) is not None]


def _reads_size(node: fx.Node) -> bool:
    """A read of a tensor's size, rank, dtype or device: it runs on whatever width a path has (an
    op that then uses the size is judged on its own)."""
    if node.op == "call_method":
        return node.target in _SIZE_METHODS
    return node.op == "call_function" and node.target is getattr and node.args[1] in _SIZE_ATTRS


def _spatial_dims(node: fx.Node, x: fx.Node) -> bool:
    """Whether a reduction ``node`` of ``x`` (``x.mean((2, 3))``) runs over spatial dims only."""
    dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    dims = dims if isinstance(dims, (tuple, list)) else [dims]
    rank = len(_shape(x))
    return all(isinstance(d, int) and 2 <= d % rank for d in dims)


def _where(node: fx.Node) -> str:
    """Where ``node`` happens: the innermost module running it (the model itself: its name)."""
    stack = node.meta.get("nn_module_stack") or {}
    return f"in {next(reversed(stack))}" if stack else f"at {node.name}"


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"{type(modules[node.target]).__name__} {node.target}"
    if node.op == "call_method":
        return f".{node.target}() {_where(node)}"
    return f"{getattr(node.target, '__name__', node.target)}() {_where(node)}"


def _traced(model: nn.Module, input_shape: tuple[int, ...]) -> fx.GraphModule:
    """The model's graph in train mode, the graph the supernet is trained through (a model with
    extra train-mode outputs shows them), its shapes propagated in eval mode. The graph keeps the
    train-mode branches of the modules it traced through (a timm BatchNormAct2d updates its
    statistics): the buffers are restored after the propagation."""
    was_training = model.training
    buffers = [(b, b.clone()) for b in model.buffers()]
    try:
        model.train()
        gm = trace(model)
        model.eval()
        # ShapeProp prints the traceback of a failing node itself: the user gets one line instead
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            ShapeProp(gm).propagate(torch.zeros(2, *input_shape))
    except QsposError:
        raise
    except Exception as e:  # noqa: BLE001
        cause = e.__cause__ or e  # ShapeProp wraps the node's own error
        text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise QsposError(f"model: a forward of a {tuple(input_shape)} input failed: {text}") from None
    finally:
        model.train(was_training)
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
    return gm


def _output(gm: fx.GraphModule, name: str) -> fx.Node:
    """The network's one output tensor. A model returning more in train mode (the auxiliary
    logits of GoogLeNet and Inception) would be trained on a tuple, and its auxiliary heads
    searched and costed as inner layers: refused, saying what it returns."""
    (value,) = next(n for n in reversed(gm.graph.nodes) if n.op == "output").args
    if isinstance(value, fx.Node) and _shape(value) is not None:
        return value
    held = value.meta.get("tensor_meta") if isinstance(value, fx.Node) else value
    if held is None:
        what = "None"
    elif isinstance(held, (tuple, list, dict)):
        what = f"{len(held)} values ({type(held).__name__.removeprefix('immutable_')})"  # fx's own dict, list
    else:
        what = f"a value of type {type(held).__name__}"
    raise QsposError(f"model: {name}'s forward returns {what} in train mode, not one tensor (qspos trains, "
                     "searches and exports the one output of a model: build it without auxiliary outputs, "
                     "e.g. torchvision's aux_logits=False)")


def analyse(model: nn.Module, input_shape: tuple[int, ...]) -> GraphInfo:
    """Trace ``model`` on one input of ``input_shape`` (C, H, W) and find its layers' channel
    groups, the groups that may shrink, and the layers whose inputs are non-negative."""
    gm = _traced(model, input_shape)
    _refuse_hidden_layers(gm, dict(model.named_modules()))
    _output(gm, type(model).__name__)
    a = _Analysis(dict(gm.named_modules()))
    for node in gm.graph.nodes:
        a.visit(node)
    info = _collect(a.spaces, a.layers, a.norms, *_ends(gm, a.layers))
    info.norm_inputs = a.norm_inputs
    return info


class _Analysis:
    """One pass over a traced graph, node by node: the channel space of every tensor, the
    non-negative ones, and the channel spaces each Conv2d/Linear reads and writes."""

    def __init__(self, modules: dict[str, nn.Module]):
        self.modules = modules
        self.spaces = _Spaces()
        self.space_of: dict[fx.Node, int] = {}
        self.nonneg: dict[fx.Node, bool] = {}
        self.layers: dict[str, tuple[nn.Module, int, int, bool, bool]] = {}
        self.norms: list[tuple[str, int]] = []
        self.norm_inputs: dict[str, str] = {}

    def space(self, node: fx.Node) -> int:
        if node not in self.space_of:  # a tensor made by an op we did not model: keep it as it is
            self.space_of[node] = self.spaces.new(_shape(node)[1] if len(_shape(node)) > 1 else 1,
                                                  f"made {_where(node)}")
        return self.space_of[node]

    def keep(self, node: fx.Node, src: fx.Node) -> None:
        if len(_shape(src)) > 1 and _shape(src)[1] == _shape(node)[1]:
            self.space_of[node] = self.space(src)
        else:  # a channel-keeping op used otherwise (a pad of the channels): not modelled
            self.opaque(node, _tensor_args(node))

    def opaque(self, node: fx.Node, args: list[fx.Node]) -> None:
        reason = f"passes through {_describe(node, self.modules)}"
        for a in args:
            self.spaces.pin(self.space(a), reason)
        out = _shape(node)
        if out is not None and len(out) > 1:
            self.space_of[node] = self.spaces.new(out[1], reason)

    def visit(self, node: fx.Node) -> None:
        spaces, space_of = self.spaces, self.space_of
        shape = _shape(node)
        args = _tensor_args(node)
        self.nonneg[node] = _proves_nonneg(node, self.modules, args, self.nonneg)
        if node.op == "placeholder":
            if shape is not None and len(shape) > 1:
                space_of[node] = spaces.new(shape[1], "network input")
        elif node.op == "output":
            for a in args:
                spaces.pin(self.space(a), "network output")
        elif shape is None or len(shape) < 2:  # no channel dim out: sizes, or a split or reduction of the channels
            if args and not _reads_size(node):
                self.opaque(node, args)
        elif node.op == "get_attr":
            space_of[node] = spaces.new(shape[1], f"tensor {node.target} used directly")
        elif not args:
            space_of[node] = spaces.new(shape[1], f"made {_where(node)}")
        elif node.op == "call_module":
            self._module(node, self.modules[node.target], args)
        elif node.op in ("call_function", "call_method"):
            self._function(node, args, shape)
        else:
            self.opaque(node, args)

    def _module(self, node: fx.Node, m: nn.Module, args: list[fx.Node]) -> None:
        spaces, space_of, x = self.spaces, self.space_of, args[0]
        if isinstance(m, nn.Conv2d):
            depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
            if depthwise:
                self.keep(node, x)
            elif m.groups > 1:
                spaces.pin(self.space(x), f"read by grouped conv {node.target} ({m.groups} groups)")
                space_of[node] = spaces.new(m.out_channels, f"output of grouped conv {node.target}")
            else:
                space_of[node] = spaces.new(m.out_channels)
            self.layers[node.target] = (m, self.space(x), space_of[node], self.nonneg[x], depthwise)
        elif isinstance(m, nn.Linear):
            if len(_shape(x)) != 2:  # its cost, masks and integer check all take (N, features)
                raise QsposError(f"model: cannot convert {node.target}: a Linear applied to a {len(_shape(x))}-D "
                                 f"input {tuple(_shape(x))} (as in ConvNeXt's channels-last blocks); qspos "
                                 "converts a Linear on (N, features) inputs only: write it as a 1x1 Conv2d")
            space_of[node] = spaces.new(m.out_features)
            self.layers[node.target] = (m, self.space(x), space_of[node], self.nonneg[x], False)
        elif isinstance(m, nn.BatchNorm2d):
            self.keep(node, x)
            self.norms.append((node.target, self.space(x)))
            if x.op == "call_module" and x.target in self.layers:
                self.norm_inputs[node.target] = x.target
        elif isinstance(m, nn.modules.conv._ConvNd):  # Conv1d/3d, transposed convs: no searchable form
            raise QsposError(f"model: cannot convert {node.target}: {type(m).__name__} (qspos quantizes Conv2d "
                             "and Linear layers; their BitOps would be missing from every budget)")
        elif isinstance(m, _KEEP_MODULES):
            self.keep(node, x)
        elif isinstance(m, nn.Flatten):
            _flatten(node, x, spaces, space_of, self.space, self.modules)
        else:
            self.opaque(node, args)

    def _function(self, node: fx.Node, args: list[fx.Node], shape: tuple[int, ...]) -> None:
        spaces, space_of, x = self.spaces, self.space_of, args[0]
        target = node.target
        name = getattr(target, "__name__", str(target))
        if target in _KEEP_FUNCTIONS or target in _KEEP_METHODS or name in _KEEP_FUNCTION_NAMES:
            self.keep(node, x)
        elif target in _BINARY or target in _BINARY_METHODS:
            _binary(node, args, spaces, space_of, self.space)
        elif target in _FLATTEN or target in _FLATTEN_METHODS:
            _flatten(node, x, spaces, space_of, self.space, self.modules)
        elif target == "mean" and _spatial_dims(node, x):
            self.keep(node, x)  # a global average over the spatial dims
        elif target in _CAT or target == "cat":
            dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
            joined = dim in (1, -3)
            reason = f"concatenated {_where(node)}" if joined else f"passes through {_describe(node, self.modules)}"
            for a in args:
                spaces.pin(self.space(a), reason)
            space_of[node] = spaces.new(shape[1], reason)
        else:
            self.opaque(node, args)


def _refuse_hidden_layers(gm: fx.GraphModule, modules: dict[str, nn.Module]) -> None:
    """A Conv2d/Linear whose forward the trace went into (a subclass with its own forward) would
    stay a float layer without a word, and one whose weight the forward reads directly would not
    fit its searchable form: refuse them, naming them. (``modules``: the model's own; the graph
    module holds only bare stand-ins for modules it traced through.)"""
    for node in gm.graph.nodes:
        if node.op != "get_attr":
            continue
        owner, _, attr = node.target.rpartition(".")
        m = modules.get(owner)
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        if _Tracer().is_leaf_module(m, owner):
            raise QsposError(f"model: cannot convert {owner}: the forward reads its {attr} directly (qspos "
                             "converts layers that are called, not read)")
        raise QsposError(f"model: cannot convert {owner}: {type(m).__module__}.{type(m).__qualname__} subclasses "
                         f"{'Conv2d' if isinstance(m, nn.Conv2d) else 'Linear'} with its own forward, so what it "
                         "computes is not known (use the torch.nn layer)")


def _binary(node: fx.Node, args: list[fx.Node], spaces: _Spaces, space_of: dict, space) -> None:
    """Channel-wise multiplies (a squeeze-excitation's gate) merge the channels of their
    operands; adds and subtractions of two feature maps are residual joins, which keep their
    width (a residual stream stays as the model has it). Operands of the output's rank with its
    channels merge, one-channel outputs included (``x - out(u)`` of a denoiser). An operand
    broadcast over the channels (one channel of several) is a scale: it leaves them alone and
    keeps its one channel. An operand of lower rank lines its dims up with the output's last
    ones, which this analysis does not follow: both keep their channels."""
    out = _shape(node)
    same = [a for a in args if len(_shape(a)) == len(out)]
    full = [a for a in same if _shape(a)[1] == out[1]]
    lower = [a for a in args if a not in same and math.prod(_shape(a)) > 1]  # scalars aside
    if not full:  # the output's channels come from a lower-rank operand
        space_of[node] = spaces.new(out[1], f"broadcast {_where(node)}")
        for a in args:
            spaces.pin(space(a), f"broadcast {_where(node)}")
        return
    root = space(full[0])
    for a in full[1:]:
        root = spaces.union(root, space(a))
    name = getattr(node.target, "__name__", str(node.target)).strip("_")
    if len(full) > 1 and name.lstrip("i") in ("add", "sub"):
        spaces.pin(root, f"feeds the residual add {_where(node)}")
    for a in [a for a in same if a not in full] + lower:  # a one-channel map broadcast over the channels
        spaces.pin(space(a), f"broadcast {_where(node)}")
    if lower:
        spaces.pin(root, f"broadcast with a {len(_shape(lower[0]))}-D tensor {_where(node)}")
    space_of[node] = root


def _flatten(node: fx.Node, x: fx.Node, spaces: _Spaces, space_of: dict, space, modules: dict) -> None:
    """A flatten to (N, features) of one pixel per channel keeps the channels; of more, it
    interleaves them; any other view or reshape (of the channels into two dims, ...) is not
    modelled."""
    src, out = _shape(x), _shape(node)
    pixels = math.prod(src[2:])
    flat = len(out) == 2 and out == (src[0], src[1] * pixels)
    if flat and pixels == 1:
        space_of[node] = space(x)
        return
    if flat:
        reason = f"flattened with {'x'.join(map(str, src[2:]))} pixels {_where(node)}"
    else:
        reason = f"passes through {_describe(node, modules)}"
    spaces.pin(space(x), reason)
    space_of[node] = spaces.new(out[1] if len(out) > 1 else 1, reason)


def _proves_nonneg(node: fx.Node, modules: dict[str, nn.Module], args: list[fx.Node],
                   nonneg: dict[fx.Node, bool]) -> bool:
    """Whether the graph proves ``node``'s output >= 0: made by a ReLU-like op, or by an op that
    keeps the sign (pooling, flatten, concatenation, add/multiply) of non-negative inputs."""
    if node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, _NONNEG_MODULES):
            return True
        preserve = isinstance(m, _PRESERVE_MODULES)
    elif node.op == "call_function":
        if node.target in _NONNEG_FUNCTIONS:
            return True
        if node.target is torch.clamp or node.target is torch.clip:
            lo = node.kwargs.get("min", node.args[1] if len(node.args) > 1 else None)
            return isinstance(lo, (int, float)) and lo >= 0
        preserve = node.target in _PRESERVE_FUNCTIONS or getattr(node.target, "__name__", "") in _KEEP_FUNCTION_NAMES
        scalars_ok = all(not isinstance(a, (int, float)) or a >= 0 for a in node.args)
        preserve = preserve and scalars_ok
    elif node.op == "call_method":
        if node.target in _NONNEG_METHODS:
            return True
        if node.target in ("clamp", "clamp_", "clip", "clip_"):  # x.clamp(min=0, ...), x.clamp(0, 6)
            lo = node.kwargs.get("min", node.args[1] if len(node.args) > 1 else None)
            return isinstance(lo, (int, float)) and lo >= 0
        preserve = node.target in _PRESERVE_METHODS and all(
            not isinstance(a, (int, float)) or a >= 0 for a in node.args[1:] if node.target in ("add", "mul"))
    else:
        return False
    return preserve and bool(args) and all(nonneg.get(a, False) for a in args)


def _ends(gm: fx.GraphModule, layers: dict) -> tuple[list[str], list[str]]:
    """The layers reading the network input and those writing its output, each through no other
    layer: found from the graph's placeholders and its output (a classifier followed by a softmax
    is still the last layer; a layer merely coupled with the output channels is not)."""

    def reach(start: list[fx.Node], step) -> set[str]:
        found, seen, todo = set(), set(), list(start)
        while todo:
            node = todo.pop()
            if node in seen or _reads_size(node):
                continue
            seen.add(node)
            if node.op == "call_module" and node.target in layers:
                found.add(node.target)
            else:
                todo.extend(step(node))
        return found

    nodes = list(gm.graph.nodes)
    first = reach([n for n in nodes if n.op == "placeholder"], lambda n: list(n.users))
    last = reach([n for n in nodes if n.op == "output"], lambda n: n.all_input_nodes) - first
    return [n for n in layers if n in first], [n for n in layers if n in last]


def _collect(spaces: _Spaces, layers: dict, norms: list[tuple[str, int]], first: list[str],
             last: list[str]) -> GraphInfo:
    groups: dict[int, ChannelGroup] = {}

    def group(s: int) -> ChannelGroup:
        r = spaces.find(s)
        if r not in groups:
            pinned = list(spaces.reasons.get(r, []))
            if spaces.channels[r] == 1:
                pinned.append("one channel")  # nothing to narrow; grown, it would no longer broadcast
            groups[r] = ChannelGroup(r, spaces.channels[r], pinned=pinned)
        return groups[r]

    nodes: dict[str, LayerNode] = {}
    for order, (name, (m, sin, sout, nn_in, depthwise)) in enumerate(layers.items()):
        gin, gout = group(sin), group(sout)
        nodes[name] = LayerNode(name, m, gin.id, gout.id, nn_in, depthwise, order)
        gout.producers.append(name)
        if not depthwise:
            gin.consumers.append(name)
    for name, s in norms:
        group(s).norms.append(name)
    for name in first:  # the fixed first layers keep their outputs
        g = groups[nodes[name].out_group]
        if not nodes[name].depthwise:
            g.pinned.append(f"output of the fixed first layer {name}")
    return GraphInfo(nodes, groups, first, last)
