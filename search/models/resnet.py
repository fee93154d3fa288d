"""Our own ResNet, assembled from a :class:`~search.config.model_configs.ResNetConfig`.

Reads like torchvision's ``models/resnet.py``: conv helpers, then one block class for every
registered block type (:mod:`search.config.blocks`) in either activation order, then the
``ResNet`` module. Post-activation blocks follow torchvision (Bottleneck v1.5: stride on
the 3x3); pre-activation follows He et al., "Identity Mappings in Deep Residual Networks"
(2016). Channels, strides and sizes come from :mod:`search.models.geometry`, which
:func:`search.budget.fast_count` also counts from; the layers each shape turns into are
mirrored there (which convs, BatchNorms, SE): change both together.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from search.config import AuxHead, BatchNorm, Head, ResNetConfig
from search.config.blocks import BLOCK_TYPES, BlockType
from search.models.geometry import BlockGeometry, StemGeometry, block_convs, resnet_geometry

__all__ = ["ResNet", "ResidualBlock", "SqueezeExcite"]


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): channel gates from globally pooled features."""

    def __init__(self, channels: int, ratio: int) -> None:
        super().__init__()
        hidden = max(1, channels // ratio)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, bias=True)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, bias=True)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


class PadShortcut(nn.Module):
    """Option A shortcut (He et al. 2015, CIFAR): strided subsampling, zero-padded channels.

    Parameter-free. When a stage narrows (fewer output than input channels, possible in
    a searched config) the extra input channels are dropped instead.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = out_planes - in_planes

    def forward(self, x: Tensor) -> Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra > 0:
            x = F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
        elif self.extra < 0:
            x = x[:, : x.shape[1] + self.extra]
        return x


def make_shortcut(block: BlockGeometry, kind: str, preact: bool) -> nn.Module | None:
    """The shortcut of a block whose shape changes, ``None`` where it does not.

    Args:
        block: The block's shapes.
        kind: ``projection`` (1x1 conv + BN) or ``identity`` (parameter-free option A).
        preact: In a pre-activation network the projection is a bare 1x1 conv: its input
            is already normalised by the block's first BN (He et al. 2016).

    Returns:
        The shortcut module, or ``None`` for the identity.
    """
    if not block.reshapes:
        return None
    in_planes, out_planes, stride = block.in_channels, block.out_channels, block.stride
    if kind == "identity":
        return PadShortcut(in_planes, out_planes, stride)
    if preact:
        return conv1x1(in_planes, out_planes, stride)
    return nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))


class ResidualBlock(nn.Module):
    """A residual block of any registered type (:mod:`search.config.blocks`), in either order.

    Post-activation (torchvision): ``conv{i}`` then ``bn{i}`` then ReLU, the last ReLU after
    the addition. Pre-activation (He et al. 2016; ``preact``): ``bn{i}`` and ReLU before
    ``conv{i}``, nothing after the addition. One class for both, as torchvision injects
    ``norm_layer``: the layer names are those of torchvision's blocks, so weights load across.

    Args:
        kind: The block type (its ``expansion`` and convolutions).
        block: The block's shapes.
        preact: Pre-activation order.
        shortcut: The shortcut where the shape changes, ``None`` for the identity.
        se_ratio: Squeeze-and-excitation on the main path's output, with this ratio.
    """

    def __init__(
        self,
        kind: BlockType,
        block: BlockGeometry,
        preact: bool = False,
        shortcut: nn.Module | None = None,
        se_ratio: int | None = None,
    ) -> None:
        super().__init__()
        self.expansion = kind.expansion
        self.preact = preact
        self.depth = len(kind.convs)
        for index, conv in enumerate(block_convs(kind, block), start=1):
            if preact:
                self.add_module(f"bn{index}", nn.BatchNorm2d(conv.in_channels))
            layer = nn.Conv2d(
                conv.in_channels, conv.out_channels, conv.kernel, conv.stride, conv.kernel // 2, bias=False
            )
            self.add_module(f"conv{index}", layer)
            if not preact:
                self.add_module(f"bn{index}", nn.BatchNorm2d(conv.out_channels))
        self.relu = nn.ReLU(inplace=True)
        self.se = SqueezeExcite(block.out_channels, se_ratio) if se_ratio else nn.Identity()
        self.shortcut = shortcut

    def last_bn(self) -> nn.BatchNorm2d:
        """The BatchNorm whose zero scale makes the block start as the identity."""
        return getattr(self, f"bn{self.depth}")

    def _layer(self, kind: str, index: int) -> nn.Module:
        return getattr(self, f"{kind}{index}")

    def forward(self, x: Tensor) -> Tensor:
        if self.preact:
            return self._forward_preact(x)
        identity = x if self.shortcut is None else self.shortcut(x)
        out = x
        for index in range(1, self.depth + 1):
            out = self._layer("bn", index)(self._layer("conv", index)(out))
            if index < self.depth:
                out = self.relu(out)
        return self.relu(self.se(out) + identity)

    def _forward_preact(self, x: Tensor) -> Tensor:
        # Not in place: ``x`` itself is the identity shortcut.
        out = F.relu(self._layer("bn", 1)(x))
        identity = _preact_shortcut(self.shortcut, x, out)
        out = self._layer("conv", 1)(out)
        for index in range(2, self.depth + 1):
            out = self._layer("conv", index)(self.relu(self._layer("bn", index)(out)))
        return self.se(out) + identity


def _preact_shortcut(shortcut: nn.Module | None, x: Tensor, activated: Tensor) -> Tensor:
    """A projection sees the pre-activated input (He et al. 2016); option A and identity see ``x``."""
    if shortcut is None:
        return x
    if isinstance(shortcut, PadShortcut):
        return shortcut(x)
    return shortcut(activated)


def make_stem(config: ResNetConfig, stem: StemGeometry) -> nn.Sequential:
    """Conv [+ BN + ReLU] [+ SE] [+ max-pool].

    A pre-activation network normalises inside its first block instead of the stem.
    """
    layers: list[nn.Module] = [
        nn.Conv2d(stem.in_channels, stem.out_channels, stem.kernel, stem.stride, stem.padding, bias=False)
    ]
    if not config.preact:
        layers += [nn.BatchNorm2d(stem.out_channels), nn.ReLU(inplace=True)]
    if config.se.name == "stem":
        layers.append(SqueezeExcite(stem.out_channels, config.se.ratio))
    if config.stem.maxpool:
        layers.append(nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    return nn.Sequential(*layers)


def make_stage(config: ResNetConfig, blocks: tuple[BlockGeometry, ...]) -> nn.Sequential:
    """The blocks of one stage, each with its shortcut where its shape changes."""
    kind = BLOCK_TYPES[config.block]
    se_ratio = config.se.ratio if config.se.name == "blocks" else None
    return nn.Sequential(
        *(
            ResidualBlock(kind, b, config.preact, make_shortcut(b, config.shortcut, config.preact), se_ratio)
            for b in blocks
        )
    )


def make_head(in_features: int, head: Head, num_classes: int) -> nn.Sequential:
    """Hidden layers (Linear [+BN] + ReLU [+Dropout]) then the last Linear."""
    layers: list[nn.Module] = []
    for width in head.hidden:
        layers.append(nn.Linear(in_features, width))
        if head.batchnorm:
            layers.append(nn.BatchNorm1d(width))
        layers.append(nn.ReLU(inplace=True))
        if head.dropout > 0:
            layers.append(nn.Dropout(head.dropout))
        in_features = width
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)


def make_aux_head(in_channels: int, aux: AuxHead, num_classes: int) -> nn.Sequential:
    """Auxiliary classifier: global average pool, hidden Linear + ReLU layers, Linear."""
    layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
    for width in aux.hidden:
        layers += [nn.Linear(in_channels, width), nn.ReLU(inplace=True)]
        in_channels = width
    layers.append(nn.Linear(in_channels, num_classes))
    return nn.Sequential(*layers)


class ResNet(nn.Module):
    """A ResNet built from a :class:`ResNetConfig`.

    ``forward`` returns logits, or ``(logits, aux_logits)`` in training mode when the
    config has an auxiliary head (torchvision's GoogLeNet/Inception convention).

    Args:
        config: The architecture.
        image_size: Side of the square input; only ``pool_kernel`` makes the classifier
            depend on it (its input is channels x pooled positions).

    Raises:
        InvalidValue: ``pool_kernel`` does not fit the feature map of ``image_size``.
    """

    def __init__(self, config: ResNetConfig, image_size: int = 32) -> None:
        super().__init__()
        geometry = resnet_geometry(config, image_size)
        self.stem = make_stem(config, geometry.stem)
        self.stages = nn.ModuleList(make_stage(config, stage.blocks) for stage in geometry.stages)

        self.aux_after = config.aux_head.after_stage if config.aux_head is not None else -1
        self.aux_head = (
            make_aux_head(geometry.stages[self.aux_after].out_channels, config.aux_head, config.num_classes)
            if config.aux_head is not None
            else None
        )

        # Pre-activation blocks end on an addition: normalise once before pooling.
        self.final_act = (
            nn.Sequential(nn.BatchNorm2d(geometry.out_channels), nn.ReLU(inplace=True))
            if config.preact
            else nn.Identity()
        )
        self.pool = nn.AdaptiveAvgPool2d(1) if config.pool_kernel is None else nn.AvgPool2d(config.pool_kernel)
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.head = make_head(geometry.head_features, config.head, config.num_classes)

        self._init_weights(config.zero_init_residual)
        self._set_batchnorm(config.batchnorm)

    def _set_batchnorm(self, options: BatchNorm) -> None:
        """Every BatchNorm2d's momentum; a frozen scale stays at its initial 1 (no gradient)."""
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = options.momentum
                if options.frozen_scale:
                    m.weight.requires_grad_(False)

    def _init_weights(self, zero_init_residual: bool) -> None:
        """torchvision's init; ``zero_init_residual`` makes each block start as the identity."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, ResidualBlock):
                    nn.init.constant_(m.last_bn().weight, 0)

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Stem and stages; the auxiliary logits only in training mode."""
        x = self.stem(x)
        aux = None
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index == self.aux_after and self.training and self.aux_head is not None:
                aux = self.aux_head(x)
        return self.final_act(x), aux

    def forward_head(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(torch.flatten(self.pool(x), 1)))

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        x, aux = self.forward_features(x)
        logits = self.forward_head(x)
        return logits if aux is None else (logits, aux)
