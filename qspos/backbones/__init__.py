"""Supernet backbones. Importing this package registers every built-in model."""

from qspos import convert  # noqa: F401  (registers torchvision_resnet)
from qspos.backbones import resnet  # noqa: F401  (registers the ResNet family)
from qspos.backbones.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
