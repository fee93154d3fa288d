"""Named variants as data (timm-style): any of them can be written as a spec's ``model``,
and the tests build and count every one."""

from __future__ import annotations

from search.config import TORCHVISION_ARCHS, ModelConfig, TorchvisionResNetConfig
from search.config.model_configs import AuxHead, Head, ResNetConfig, SqueezeExcite, Stage, Stem

__all__ = ["VARIANTS"]


def _cifar_resnet(depth: int) -> ResNetConfig:
    """He et al. (2015)'s CIFAR ResNet-``depth``: 3 stages of (depth - 2) / 6 blocks, option A."""
    n = (depth - 2) // 6
    return ResNetConfig(
        stem=Stem(16, 3, 1, False),
        stages=(Stage(n, 16), Stage(n, 32), Stage(n, 64)),
        shortcut="identity",
    )


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
