"""Supernet backbones: the model registry, the built-in ResNets and conversion of users' models.

Layer 2: uses ``qspos.core``; reads no config and no file. Importing this package registers every
built-in model; add your own with ``@register_model`` on a factory taking ``num_classes``,
``in_channels`` and ``max_width``.
"""

from qspos.models import convert, resnet  # noqa: F401  (register the built-in models)
from qspos.models._registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
