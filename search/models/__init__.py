"""Models: build a ``nn.Module`` from a model config, and the registry of named variants.

>>> model = build_model(VARIANTS["resnet20"])

The shapes of our ResNets (:mod:`search.models.geometry`) are computed without torch
layers, so that :mod:`search.budget` counts from the same shapes the builder uses.
"""

from __future__ import annotations

import torch.nn as nn

from search.config import (
    TORCHVISION_ARCHS,
    AuxHead,
    Head,
    ModelConfig,
    ResNetConfig,
    SqueezeExcite,
    Stage,
    Stem,
    TorchvisionResNetConfig,
)
from search.models.freezing import apply_freeze, hold_frozen_batchnorm
from search.models.resnet import ResNet
from search.models.torchvision_resnet import build_torchvision_resnet

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


def _cifar_resnet(depth: int) -> ResNetConfig:
    """He et al. (2015)'s CIFAR ResNet-``depth``: 3 stages of (depth - 2) / 6 blocks, option A."""
    n = (depth - 2) // 6
    return ResNetConfig(
        stem=Stem(16, 3, 1, False),
        stages=(Stage(n, 16), Stage(n, 32), Stage(n, 64)),
        shortcut="identity",
    )


# Named variants as data (timm-style): any of them can be written as a spec's ``model``.
VARIANTS: dict[str, ModelConfig] = {
    "resnet20": _cifar_resnet(20),
    "resnet32": _cifar_resnet(32),
    "resnet56": _cifar_resnet(56),
    "preact_resnet18": ResNetConfig(
        stages=(Stage(2, 64), Stage(2, 128), Stage(2, 256), Stage(2, 512)),
        preact=True,
    ),
    # Seed 003: 4 + 4 + 3 basic blocks, SE after the stem, 8x8 average pool; 4,697,742 params.
    "se_resnet_443": ResNetConfig(
        stem=Stem(64, 3, 1, False),
        stages=(Stage(4, 64), Stage(4, 128), Stage(3, 256)),
        se=SqueezeExcite("stem", 16),
        pool_kernel=8,
    ),
    # Seed 000: an ImageNet-style ResNet-34 with a BN + dropout hidden head and an aux head.
    "resnet34_aux": ResNetConfig(
        stem=Stem(64, 7, 2, True),
        stages=(Stage(3, 64), Stage(4, 128), Stage(6, 256), Stage(3, 512)),
        head=Head(hidden=(512,), batchnorm=True, dropout=0.05),
        aux_head=AuxHead(after_stage=2),
    ),
    # A CIFAR ResNet-50: bottleneck blocks on a 3x3 stem, SE in every block.
    "se_resnet50_cifar": ResNetConfig(
        stages=(Stage(3, 64), Stage(4, 128), Stage(6, 256), Stage(3, 512)),
        block="bottleneck",
        se=SqueezeExcite("blocks", 16),
    ),
    **{f"tv_{name}": TorchvisionResNetConfig(name=name) for name in TORCHVISION_ARCHS},
}
