"""From a model spec to the float model it names, fitted to the task.

A spec names a registered built-in (``resnet_small``), a torchvision model (``torchvision:NAME``,
built with ``num_classes``) or any factory (``package.module:function``, called with ``args``).
Float weights (a state dict the runtime has read) load into it, and the model is fitted to the
task: a stem with other input channels is adapted (RGB weights summed for one channel), a head of
another size is replaced. Every such change comes back as a note for the user, never silently.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

import torch
from torch import fx, nn

from qspos.errors import QsposError
from qspos.models._registry import list_models, registered
from qspos.models.graph import trace

_LAYERS = (nn.Conv2d, nn.Linear)


def build_model(name: str, num_classes: int, in_channels: int, args: Mapping | None = None,
                weights: Mapping[str, torch.Tensor] | None = None) -> tuple[nn.Module, list[str]]:
    """The float model of a spec with ``weights`` loaded, fitted to ``num_classes`` and
    ``in_channels``; and the notes saying what was changed to fit it."""
    model = _instantiate(name, num_classes, in_channels, dict(args or {}))
    return model, fit_model(model, num_classes, in_channels, weights)


def _instantiate(name: str, num_classes: int, in_channels: int, args: dict) -> nn.Module:
    factory = registered(name)
    try:
        if factory is not None:
            return factory(num_classes=num_classes, in_channels=in_channels, **args)
        if name.startswith("torchvision:"):
            import torchvision

            arch = name.split(":", 1)[1]
            if arch not in torchvision.models.list_models():
                raise QsposError(f"model.name: torchvision has no model {arch!r}")
            return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **args)
        if ":" in name:
            module_name, _, fn_name = name.partition(":")
            try:
                fn = getattr(importlib.import_module(module_name), fn_name)
            except (ImportError, AttributeError) as e:
                raise QsposError(f"model.name: cannot import {name!r}: {e}") from None
            model = fn(**args)
            if not isinstance(model, nn.Module):
                raise QsposError(f"model.name: {name} returned a {type(model).__name__}, not an nn.Module")
            return model
    except (TypeError, ValueError) as e:
        raise QsposError(f"model: bad arguments for {name}: {e}") from None
    raise QsposError(f"model.name: unknown model {name!r}; give a built-in ({', '.join(list_models())}), "
                     "'torchvision:NAME' or 'package.module:function'")


def fit_model(model: nn.Module, num_classes: int, in_channels: int,
              weights: Mapping[str, torch.Tensor] | None = None) -> list[str]:
    """Fit ``model`` in place: its stem to ``in_channels``, its head to ``num_classes``, then
    load ``weights`` (a stem or head of the other size in them is adapted or skipped)."""
    stems, heads = ends(model)
    notes = []
    for name in stems:
        stem = model.get_submodule(name)
        if isinstance(stem, nn.Conv2d) and stem.in_channels != in_channels:
            _replace(model, name, _conv_like(stem, in_channels=in_channels))
            notes.append(f"stem {name}: {in_channels} input channel(s) instead of {stem.in_channels}")
    for name in heads:
        head = model.get_submodule(name)
        out = head.out_features if isinstance(head, nn.Linear) else head.out_channels
        if out != num_classes:
            new = (nn.Linear(head.in_features, num_classes, head.bias is not None) if isinstance(head, nn.Linear)
                   else _conv_like(head, out_channels=num_classes))
            _replace(model, name, new)
            notes.append(f"head {name}: replaced by a fresh {num_classes}-class layer (it had {out})")
    if weights is not None:
        notes += _load(model, weights, stems, heads)
    return notes


def ends(model: nn.Module) -> tuple[list[str], list[str]]:
    """The Conv2d/Linear layers first reached from the input and last before the output."""
    gm = trace(model)
    modules = dict(gm.named_modules())

    def is_layer(n: fx.Node) -> bool:
        return n.op == "call_module" and isinstance(modules[n.target], _LAYERS)

    def walk(start: list[fx.Node], step) -> list[str]:  # noqa: ANN001
        found, seen, todo = [], set(), list(start)
        while todo:
            n = todo.pop(0)
            if n in seen:
                continue
            seen.add(n)
            if is_layer(n):
                found.append(n.target)
            else:
                todo.extend(step(n))
        return list(dict.fromkeys(found))

    nodes = list(gm.graph.nodes)
    stems = walk([u for n in nodes if n.op == "placeholder" for u in n.users], lambda n: list(n.users))
    heads = walk([a for n in nodes if n.op == "output" for a in n.all_input_nodes], lambda n: n.all_input_nodes)
    return stems, heads


def _conv_like(conv: nn.Conv2d, in_channels: int | None = None, out_channels: int | None = None) -> nn.Conv2d:
    cin = in_channels or conv.in_channels
    groups = conv.groups if conv.groups == 1 or cin == conv.in_channels else 1
    return nn.Conv2d(cin, out_channels or conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                     conv.dilation, groups, conv.bias is not None, conv.padding_mode)


def _replace(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _load(model: nn.Module, weights: Mapping[str, torch.Tensor], stems: list[str], heads: list[str]) -> list[str]:
    """Load ``weights`` strictly, except a head of another size (skipped) and a stem with other
    input channels (adapted: summed over the channels for one, their mean repeated otherwise)."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in weights if k not in own]
    if missing or unexpected:
        raise QsposError(f"model.args.weights: do not fit the model: missing keys {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
                         f"{' ...' if len(unexpected) > 5 else ''}")
    state, notes = model.state_dict(), []  # the model's own, with the versions of its formats (MNASNet checks them)
    state.update(weights)
    for key, value in weights.items():
        want = own[key].shape
        if value.shape == want:
            continue
        module = key.rpartition(".")[0]
        if module in heads and value.shape[1:] == want[1:]:
            state[key] = own[key]
            if key.endswith("weight"):
                notes.append(f"head {module}: the weights' {value.shape[0]} classes not loaded; "
                             f"{want[0]} fresh ones instead")
        elif module in stems and key.endswith("weight") and value.dim() == 4 and value.shape[0] == want[0]:
            state[key] = _adapt_stem(value, want[1])
            how = "summed over" if want[1] == 1 else "averaged and repeated over"
            notes.append(f"stem {module}: the weights' {value.shape[1]} input channels {how} {want[1]}")
        else:
            raise QsposError(f"model.args.weights: {key} has shape {tuple(value.shape)}, the model's is {tuple(want)}")
    model.load_state_dict(state)
    return notes


def _adapt_stem(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Stem weights for ``in_channels`` inputs that respond to a grey image as the original did
    to the same image in every channel."""
    total = weight.sum(1, keepdim=True)
    return total if in_channels == 1 else (total / in_channels).repeat(1, in_channels, 1, 1)
