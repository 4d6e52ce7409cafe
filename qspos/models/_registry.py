"""One registry of built-in float backbones, timm-style: ``@register_model`` on a factory taking
``num_classes``, ``in_channels`` and its own arguments.

Private: the public face is ``qspos.models`` (which registers the built-in models first)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_MODELS)


def registered(name: str) -> Callable[..., nn.Module] | None:
    """The factory registered as ``name``, if any."""
    return _MODELS.get(name)
