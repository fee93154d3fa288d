"""The model section of a spec: our ResNet's parts and torchvision's ResNets, as typed,
frozen configs. Bounds of numeric fields live in field metadata (see :func:`bounded`)."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal, Union

from search.config.blocks import BlockName
from search.config.errors import InvalidValue
from search.config.parsing import bounded


@dataclass(frozen=True)
class Stem:
    """The first convolution: 3x3 stride 1 for CIFAR, 7x7 stride 2 + max-pool for ImageNet."""

    width: int = bounded(64, ge=1, le=16384)
    kernel: int = bounded(3, ge=1, le=11)  # torchvision's ImageNet stem is 7; larger ones take forever
    stride: int = bounded(1, ge=1, le=8)
    maxpool: bool = False


@dataclass(frozen=True)
class Stage:
    """A run of residual blocks at one width; every stage after the first halves the resolution."""

    blocks: int = bounded(2, ge=1, le=100)  # ResNet-152's largest stage has 36
    width: int = bounded(64, ge=1, le=16384)


@dataclass(frozen=True)
class SqueezeExcite:
    """Squeeze-and-excitation: ``none``, once after the ``stem`` (seed 003), or in every block."""

    name: Literal["none", "stem", "blocks"] = "none"
    ratio: int = bounded(16, ge=1, le=1024)


@dataclass(frozen=True)
class Head:
    """Classifier: optional hidden layers (Linear [+BN] + ReLU [+dropout]) before the last Linear."""

    hidden: tuple[int, ...] = bounded((), ge=1, le=65536)  # each hidden layer's size
    batchnorm: bool = False
    dropout: float = bounded(0.0, ge=0.0, le=0.99)


@dataclass(frozen=True)
class AuxHead:
    """Auxiliary classifier after stage ``after_stage`` (0-based), as in seed 000."""

    after_stage: int = bounded(2, ge=0)  # before the last stage: checked in ResNetConfig
    hidden: tuple[int, ...] = bounded((), ge=1, le=65536)


@dataclass(frozen=True)
class BatchNorm:
    """Every BatchNorm2d of the network: ``momentum`` of its running statistics (torch's
    convention: the weight of the newest batch), and ``frozen_scale`` (its scale stays 1
    and never trains; only the shift learns, as in airbench)."""

    momentum: float = bounded(0.1, gt=0.0, le=1.0)
    frozen_scale: bool = False


@dataclass(frozen=True)
class ResNetConfig:
    """Our own ResNet: CIFAR-style by default, ImageNet-style with a 7x7 stem and max-pool.

    ``width`` of a Bottleneck stage is its inner width; its output is ``4 * width``
    (torchvision's convention). ``shortcut: identity`` is the parameter-free option A
    (strided subsampling, zero-padded channels) where shapes change.
    ``pool_kernel: null`` pools globally; an integer is a fixed ``AvgPool2d`` (seed 003: 8).
    ``zero_init_residual`` starts each block's last BatchNorm scale at 0 (the block starts
    as the identity); ``batchnorm`` sets every BatchNorm2d's momentum and frozen scale.
    ``init_from`` is a model folder (what ``train``, ``retrain`` and ``run`` write) whose
    weights the model starts from; ``freeze`` then keeps part of it fixed: ``none`` trains
    everything, ``all_but_last_stage`` the last stage and the head, ``all_but_head`` only
    the head (a linear probe; with the final pre-activation BatchNorm and the aux head).
    ``freeze_batchnorm`` keeps the BatchNorm layers of the frozen part in eval mode while the
    rest trains: their running statistics stay as loaded (false: they follow the new data).
    """

    name: Literal["resnet"] = "resnet"
    num_classes: int = bounded(10, ge=2, le=100_000)
    in_channels: int = bounded(3, ge=1, le=3)  # RGB; 1: grayscale (data.channels: 1 sets it)
    stem: Stem = Stem()
    stages: tuple[Stage, ...] = (Stage(2, 64), Stage(2, 128), Stage(2, 256))
    block: BlockName = "basic"  # a name of search.config.blocks.BLOCK_TYPES
    preact: bool = False
    shortcut: Literal["projection", "identity"] = "projection"
    se: SqueezeExcite = SqueezeExcite()
    pool_kernel: int | None = bounded(None, ge=1, le=1024)
    dropout: float = bounded(0.0, ge=0.0, le=0.99)
    head: Head = Head()
    aux_head: AuxHead | None = None
    zero_init_residual: bool = False
    batchnorm: BatchNorm = BatchNorm()
    init_from: str | None = None
    freeze: Literal["none", "all_but_last_stage", "all_but_head"] = "none"
    freeze_batchnorm: bool = True

    def __post_init__(self) -> None:
        if self.zero_init_residual and self.batchnorm.frozen_scale:
            raise InvalidValue("zero_init_residual", "cannot be combined with batchnorm.frozen_scale (zeros stay 0)")
        if not 1 <= len(self.stages) <= 4:
            raise InvalidValue("stages", f"a ResNet has 1 to 4 stages, got {len(self.stages)}")
        if self.aux_head is not None and self.aux_head.after_stage >= len(self.stages) - 1:
            raise InvalidValue(
                "aux_head.after_stage",
                f"must name a stage before the last (0 to {len(self.stages) - 2}), got {self.aux_head.after_stage}",
            )
        _check_freeze(self)


def _check_freeze(config: ResNetConfig) -> None:
    """Freezing needs a last stage apart from the rest, and exact trainable counts: it does not
    combine with ``batchnorm.frozen_scale`` (a from-scratch trick, not a fine-tuning one)."""
    if config.freeze == "all_but_last_stage" and len(config.stages) < 2:
        raise InvalidValue("freeze", "all_but_last_stage needs at least 2 stages; use all_but_head or none")
    if config.freeze != "none" and config.batchnorm.frozen_scale:
        raise InvalidValue("freeze", f"{config.freeze} cannot be combined with batchnorm.frozen_scale")


TorchvisionArch = Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
TORCHVISION_ARCHS: tuple[TorchvisionArch, ...] = typing.get_args(TorchvisionArch)


@dataclass(frozen=True)
class TorchvisionResNetConfig:
    """torchvision's ImageNet ResNet, its ``fc`` replaced for ``num_classes``.

    ``weights`` is a local state-dict file, or the name of a torchvision weights enum
    member (``IMAGENET1K_V1``) looked up in the torch hub cache; never downloaded.
    ``freeze``: ``none`` trains everything, ``all_but_last_stage`` trains ``layer4`` and
    the head, ``all_but_head`` trains only the head (a linear probe). ``init_from`` is a
    model folder to start from instead of ``weights``. ``freeze_batchnorm``: as for our ResNet.
    """

    name: TorchvisionArch = "resnet18"
    num_classes: int = bounded(1000, ge=2, le=100_000)
    weights: str | None = None
    freeze: Literal["none", "all_but_last_stage", "all_but_head"] = "none"
    freeze_batchnorm: bool = True
    dropout: float = bounded(0.0, ge=0.0, le=0.99)
    init_from: str | None = None

    def __post_init__(self) -> None:
        if self.weights is not None and self.init_from is not None:
            raise InvalidValue("init_from", "start from weights or from init_from, not both")


ModelConfig = Union[ResNetConfig, TorchvisionResNetConfig]
