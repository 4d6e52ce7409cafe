"""One registry of supernet backbones, timm-style: ``@register_model`` on a factory function.

Private: the public face is ``qspos.models`` (which registers the built-in models first)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from qspos.errors import QsposError

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered backbone at max width; kwargs go to its factory."""
    try:
        factory = _MODELS[name]
    except KeyError:
        raise QsposError(f"model.name: unknown model {name!r}; known: {', '.join(list_models())}") from None
    try:
        return factory(**kwargs)
    except (TypeError, ValueError) as e:
        raise QsposError(f"model: bad arguments for {name}: {e}") from None
