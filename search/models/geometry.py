"""The shapes of a ResNet: channels, strides and feature-map sizes of every layer.

One source for both users of the shapes: :class:`search.models.resnet.ResNet` builds its
layers from them, and :func:`search.budget.fast_count` counts parameters and FLOPs from
them without building anything. A shape rule changed here changes both.

Sizes are the side of a square feature map. Every convolution pads ``kernel // 2``, so a
3x3 (padding 1) and a 1x1 (padding 0) convolution of stride ``s`` both take a side ``n``
to ``(n - 1) // s + 1``, as does option A's ``::s`` subsampling.
"""

from __future__ import annotations

from dataclasses import dataclass

from search.config import InvalidValue, ModelConfig, ResNetConfig, Stage, Stem, TorchvisionResNetConfig, TrialConfig
from search.config.blocks import BLOCK_TYPES, BlockType

__all__ = [
    "StemGeometry",
    "ConvGeometry",
    "BlockGeometry",
    "StageGeometry",
    "ResNetGeometry",
    "resnet_geometry",
    "block_convs",
    "conv_output_size",
    "torchvision_as_resnet",
    "check_fits",
]

# Every image is decoded as RGB (search.data.decode), whatever its file holds.
IMAGE_CHANNELS = (3, 1)  # images are decoded as RGB, or as grayscale (data.channels)


@dataclass(frozen=True)
class StemGeometry:
    """The stem's convolution, and the map after it and after the optional max-pool.

    Attributes:
        in_channels: Channels of the input images.
        out_channels: The stem's width.
        kernel: Side of the convolution's kernel.
        stride: Stride of the convolution.
        padding: Padding of the convolution, ``kernel // 2``.
        conv_size: Side after the convolution, where its BatchNorm and squeeze-excite run.
        out_size: Side of the stem's output: after the 3x3, stride 2 max-pool if there is one.
    """

    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    padding: int
    conv_size: int
    out_size: int


@dataclass(frozen=True)
class BlockGeometry:
    """One residual block.

    Attributes:
        in_channels: Channels of the block's input.
        width: The block's inner width (``planes`` in torchvision).
        out_channels: ``width * expansion`` of the block type.
        stride: 2 in the first block of every stage after the first, else 1.
        in_size: Side of the block's input.
        out_size: Side of its output (and of everything after its strided convolution).
    """

    in_channels: int
    width: int
    out_channels: int
    stride: int
    in_size: int
    out_size: int

    @property
    def reshapes(self) -> bool:
        """Whether output and input differ in shape, so that the shortcut cannot be the identity."""
        return self.stride != 1 or self.in_channels != self.out_channels


@dataclass(frozen=True)
class ConvGeometry:
    """One convolution of a block's main path (padding ``kernel // 2``).

    Attributes:
        in_channels: Its input channels.
        out_channels: Its output channels.
        kernel: Side of its kernel.
        stride: Its stride.
        in_size: Side of its input.
        out_size: Side of its output.
    """

    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    in_size: int
    out_size: int


def block_convs(kind: BlockType, block: BlockGeometry) -> tuple[ConvGeometry, ...]:
    """The main path of ``block`` as convolutions, by the rules of :mod:`search.config.blocks`:
    every convolution outputs the width but the last (``out_channels``), and the strided one
    takes the input size to the output size."""
    convs: list[ConvGeometry] = []
    channels, size = block.in_channels, block.in_size
    for index, conv in enumerate(kind.convs):
        out_channels = block.out_channels if index == len(kind.convs) - 1 else block.width
        stride, out_size = (block.stride, block.out_size) if conv.strided else (1, size)
        convs.append(ConvGeometry(channels, out_channels, conv.kernel, stride, size, out_size))
        channels, size = out_channels, out_size
    return tuple(convs)


@dataclass(frozen=True)
class StageGeometry:
    """A stage: its blocks, first to last (at least one)."""

    blocks: tuple[BlockGeometry, ...]

    @property
    def out_channels(self) -> int:
        return self.blocks[-1].out_channels

    @property
    def out_size(self) -> int:
        return self.blocks[-1].out_size


@dataclass(frozen=True)
class ResNetGeometry:
    """The whole network's shapes.

    Attributes:
        stem: The stem.
        stages: The stages, first to last (at least one).
        pooled_size: Side of the map after pooling: 1 for global pooling, else
            ``AvgPool2d(pool_kernel)``'s output.
    """

    stem: StemGeometry
    stages: tuple[StageGeometry, ...]
    pooled_size: int

    @property
    def out_channels(self) -> int:
        """Channels of the last stage's output."""
        return self.stages[-1].out_channels

    @property
    def feature_size(self) -> int:
        """Side of the last stage's feature map."""
        return self.stages[-1].out_size

    @property
    def head_features(self) -> int:
        """Inputs of the classifier: channels x pooled positions."""
        return self.out_channels * self.pooled_size * self.pooled_size


def resnet_geometry(config: ResNetConfig, image_size: int) -> ResNetGeometry:
    """The shapes of ``ResNet(config, image_size)``.

    Args:
        config: The architecture.
        image_size: Side of the square input images.

    Returns:
        The geometry of the stem, of every block, and of the pooled features.

    Raises:
        InvalidValue: ``pool_kernel`` is larger than the last feature map.
    """
    stem = _stem_geometry(config.stem, config.in_channels, image_size)
    expansion = BLOCK_TYPES[config.block].expansion
    channels, size = stem.out_channels, stem.out_size
    stages: list[StageGeometry] = []
    for index, stage in enumerate(config.stages):
        stride = 1 if index == 0 else 2  # every stage after the first halves the resolution
        blocks: list[BlockGeometry] = []
        for _ in range(stage.blocks):
            out_channels, out_size = stage.width * expansion, conv_output_size(size, 3, stride, 1)
            blocks.append(BlockGeometry(channels, stage.width, out_channels, stride, size, out_size))
            channels, size, stride = out_channels, out_size, 1
        stages.append(StageGeometry(tuple(blocks)))
    return ResNetGeometry(stem, tuple(stages), _pooled_size(config.pool_kernel, size, image_size))


def check_fits(trial: TrialConfig, image_size: int) -> None:
    """Whether a trial's shapes fit its input: what torch would refuse, or take forever over,
    is refused here first. Checked when a fixed spec is read and for every sample before it
    is trained (a sample that does not fit is rejected like one over the budget).

    The model takes 3- or 1-channel images (RGB or grayscale); the stem's kernel is no larger than the image; every
    stage's feature map is at least 1x1, and a fixed pooling window fits the last one; a
    test-time shift is smaller than the image (reflect padding needs that).

    Args:
        trial: The config.
        image_size: The side of its square input.

    Raises:
        InvalidValue: what does not fit, its key relative to the spec (``model.stem.kernel``).
    """
    model: ModelConfig = trial.model
    if isinstance(model, ResNetConfig):
        if model.in_channels not in IMAGE_CHANNELS:
            raise InvalidValue(
                "model.in_channels", "must be 3 or 1: images are decoded as RGB, or grayscale (data.channels)"
            )
        if model.stem.kernel > image_size:
            raise InvalidValue(
                "model.stem.kernel", f"{model.stem.kernel} is larger than the {image_size}x{image_size} input"
            )
    as_resnet = model if isinstance(model, ResNetConfig) else torchvision_as_resnet(model)
    try:
        geometry = resnet_geometry(as_resnet, image_size)
    except InvalidValue as error:
        raise InvalidValue(f"model.{error.key}", error.message) from None
    for index, stage in enumerate(geometry.stages):
        if stage.out_size < 1:
            size = f"{image_size}x{image_size}"
            raise InvalidValue(f"model.stages[{index}]", f"the feature map vanishes for {size} input")
    translate = trial.train.tta.translate
    if translate >= image_size:
        raise InvalidValue("train.tta.translate", f"{translate} must be smaller than the {image_size}px image")


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Side of the output of a convolution or pooling window over a side of ``size``."""
    return (size + 2 * padding - kernel) // stride + 1


def _stem_geometry(stem: Stem, in_channels: int, image_size: int) -> StemGeometry:
    padding = stem.kernel // 2
    conv_size = conv_output_size(image_size, stem.kernel, stem.stride, padding)
    out_size = conv_output_size(conv_size, 3, 2, 1) if stem.maxpool else conv_size
    return StemGeometry(in_channels, stem.width, stem.kernel, stem.stride, padding, conv_size, out_size)


def _pooled_size(pool_kernel: int | None, feature_size: int, image_size: int) -> int:
    """1 for global pooling, else the side after ``AvgPool2d(pool_kernel)`` (stride = kernel).

    Raises:
        InvalidValue: ``pool_kernel`` is larger than the feature map.
    """
    if pool_kernel is None:
        return 1
    if pool_kernel > feature_size:
        raise InvalidValue(
            "pool_kernel",
            f"{pool_kernel} is larger than the last feature map ({feature_size}x{feature_size} "
            f"for {image_size}x{image_size} input)",
        )
    return conv_output_size(feature_size, pool_kernel, pool_kernel, 0)


# torchvision's ResNets: block type and blocks per stage; the widths are 64, 128, 256, 512.
_TORCHVISION_LAYERS: dict[str, tuple[str, tuple[int, ...]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}


def torchvision_as_resnet(config: TorchvisionResNetConfig) -> ResNetConfig:
    """Our config of the same architecture: torchvision's ResNet is our ImageNet-style one
    (7x7 stride 2 stem with max-pool, projection shortcuts, post-activation blocks), so it
    has the same shapes and the same parameter and FLOP counts.
    """
    block, layers = _TORCHVISION_LAYERS[config.name]
    return ResNetConfig(
        num_classes=config.num_classes,
        stem=Stem(64, 7, 2, True),
        stages=tuple(Stage(n, w) for n, w in zip(layers, (64, 128, 256, 512), strict=True)),
        block=block,
    )
