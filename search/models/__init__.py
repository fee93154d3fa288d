"""Models: build a ``nn.Module`` from a model config, and the registry of named variants.

>>> model = build_model(VARIANTS["resnet20"])

The shapes of our ResNets (:mod:`search.models.geometry`) are computed without torch
layers, so that :mod:`search.budget` counts from the same shapes the builder uses.
"""

from __future__ import annotations

import torch.nn as nn

from search.config import ModelConfig, ResNetConfig, TorchvisionResNetConfig
from search.models.freezing import apply_freeze, hold_frozen_batchnorm
from search.models.resnet import ResNet
from search.models.torchvision_resnet import build_torchvision_resnet
from search.models.variants import VARIANTS

__all__ = ["build_model", "VARIANTS", "ResNet"]


def build_model(config: ModelConfig, image_size: int = 32) -> nn.Module:
    """A freshly initialised model for ``config``; deterministic given torch's RNG state.

    Args:
        config: Our own :class:`ResNetConfig` or a :class:`TorchvisionResNetConfig`.
        image_size: Side of the square input images. Only a ResNetConfig with an integer
            ``pool_kernel`` depends on it (the classifier's input is channels x pooled
            positions); globally pooled models accept any size.

    Returns:
        The model in training mode (with ``freeze`` and ``freeze_batchnorm``, the BatchNorm
        layers of the frozen part stay in eval mode).

    Raises:
        InvalidValue: ``pool_kernel`` is larger than the last feature map.
        UserError: Torchvision weights cannot be found or do not fit.
    """
    model: nn.Module
    if isinstance(config, ResNetConfig):
        model = ResNet(config, image_size)
        apply_freeze(model, config)
    elif isinstance(config, TorchvisionResNetConfig):
        model = build_torchvision_resnet(config)
    else:
        raise TypeError(f"not a model config: {type(config).__name__}")
    hold_frozen_batchnorm(model, config)
    return model
