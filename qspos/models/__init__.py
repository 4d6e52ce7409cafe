"""Models: the registry of built-in backbones, building a model spec, and the conversion of any
model into a supernet's searchable network.

Layer 2: uses ``qspos.core``; reads no config and no file. A spec is a registered name
(``resnet_small``; add your own with ``@register_model``), ``torchvision:NAME`` or
``package.module:function``; :func:`build_model` makes the float model, :func:`convert` its
searchable form (any CNN that ``torch.fx`` can trace).
"""

from qspos.models import resnet  # noqa: F401  (register the built-in models)
from qspos.models._builder import build_model, fit_model
from qspos.models._registry import list_models, register_model
from qspos.models.conversion import Converted, LayerEntry, convert

__all__ = ["Converted", "LayerEntry", "build_model", "convert", "fit_model", "list_models", "register_model"]
