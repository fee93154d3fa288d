"""The model section of a spec: our ResNet's parts and torchvision's ResNets, as typed,
frozen configs. Bounds of numeric fields live in field metadata (see :func:`bounded`)."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal, Union

from search.config.bounds import bounded
from search.config.errors import InvalidValue


@dataclass(frozen=True)
class Stem:
    """The first convolution: 3x3 stride 1 for CIFAR, 7x7 stride 2 + max-pool for ImageNet."""

    width: int = bounded(64, ge=1)
    kernel: int = bounded(3, ge=1)
    stride: int = bounded(1, ge=1)
    maxpool: bool = False


@dataclass(frozen=True)
class Stage:
    """A run of residual blocks at one width; every stage after the first halves the resolution."""

    blocks: int = bounded(2, ge=1)
    width: int = bounded(64, ge=1)


@dataclass(frozen=True)
class SqueezeExcite:
    """Squeeze-and-excitation: ``none``, once after the ``stem`` (seed 003), or in every block."""

    name: Literal["none", "stem", "blocks"] = "none"
    ratio: int = bounded(16, ge=1)


@dataclass(frozen=True)
class Head:
    """Classifier: optional hidden layers (Linear [+BN] + ReLU [+dropout]) before the last Linear."""

    hidden: tuple[int, ...] = ()
    batchnorm: bool = False
    dropout: float = bounded(0.0, ge=0.0, le=0.99)


@dataclass(frozen=True)
class AuxHead:
    """Auxiliary classifier after stage ``after_stage`` (0-based), as in seed 000."""

    after_stage: int = bounded(2, ge=0)
    hidden: tuple[int, ...] = ()


@dataclass(frozen=True)
class ResNetConfig:
    """Our own ResNet: CIFAR-style by default, ImageNet-style with a 7x7 stem and max-pool.

    ``width`` of a Bottleneck stage is its inner width; its output is ``4 * width``
    (torchvision's convention). ``shortcut: identity`` is the parameter-free option A
    (strided subsampling, zero-padded channels) where shapes change.
    ``pool_kernel: null`` pools globally; an integer is a fixed ``AvgPool2d`` (seed 003: 8).
    """

    name: Literal["resnet"] = "resnet"
    num_classes: int = bounded(10, ge=2)
    in_channels: int = bounded(3, ge=1)
    stem: Stem = Stem()
    stages: tuple[Stage, ...] = (Stage(2, 64), Stage(2, 128), Stage(2, 256))
    block: Literal["basic", "bottleneck"] = "basic"
    preact: bool = False
    shortcut: Literal["projection", "identity"] = "projection"
    se: SqueezeExcite = SqueezeExcite()
    pool_kernel: int | None = bounded(None, ge=1)
    dropout: float = bounded(0.0, ge=0.0, le=0.99)
    head: Head = Head()
    aux_head: AuxHead | None = None
    zero_init_residual: bool = False

    def __post_init__(self) -> None:
        if not 1 <= len(self.stages) <= 4:
            raise InvalidValue("stages", f"a ResNet has 1 to 4 stages, got {len(self.stages)}")
        if self.aux_head is not None and self.aux_head.after_stage >= len(self.stages) - 1:
            raise InvalidValue(
                "aux_head.after_stage",
                f"must name a stage before the last (0 to {len(self.stages) - 2}), got {self.aux_head.after_stage}",
            )


TorchvisionArch = Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
TORCHVISION_ARCHS: tuple[TorchvisionArch, ...] = typing.get_args(TorchvisionArch)


@dataclass(frozen=True)
class TorchvisionResNetConfig:
    """torchvision's ImageNet ResNet, its ``fc`` replaced for ``num_classes``.

    ``weights`` is a local state-dict file, or the name of a torchvision weights enum
    member (``IMAGENET1K_V1``) looked up in the torch hub cache; never downloaded.
    ``freeze``: ``none`` trains everything, ``all_but_last_stage`` trains ``layer4`` and
    the head, ``all_but_head`` trains only the head (a linear probe).
    """

    name: TorchvisionArch = "resnet18"
    num_classes: int = bounded(1000, ge=2)
    weights: str | None = None
    freeze: Literal["none", "all_but_last_stage", "all_but_head"] = "none"
    dropout: float = bounded(0.0, ge=0.0, le=0.99)


ModelConfig = Union[ResNetConfig, TorchvisionResNetConfig]
