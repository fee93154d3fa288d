"""The residual block types, registered once: what the config allows, the builder builds, the
geometry shapes and the fast counter counts all read :data:`BLOCK_TYPES`.

A block type is data: its ``expansion`` and its main path as a list of convolutions. The
rules that turn the list into layers are shared by every type (and by both activation
orders), so a new type is one :func:`register_block` call here plus its test:

- each convolution but the last outputs the block's ``width``; the last outputs
  ``width * expansion`` (torchvision's ``planes * expansion``);
- the one ``strided`` convolution carries the block's stride (a stage's first block halves
  the resolution there), and every convolution pads ``kernel // 2``;
- post-activation (torchvision): conv, BatchNorm, ReLU per convolution, no ReLU after the
  last BatchNorm but after the residual addition;
- pre-activation (He et al. 2016): BatchNorm, ReLU, conv per convolution, nothing after the
  addition.

The registry lives in the config layer because the config's allowed names come from it;
:mod:`search.models.resnet` and :mod:`search.budget` turn the same entries into modules and
counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal


@dataclass(frozen=True)
class BlockConv:
    """One convolution of a block's main path: its kernel side, and whether it carries the stride."""

    kernel: int
    strided: bool = False


@dataclass(frozen=True)
class BlockType:
    """A residual block type.

    Attributes:
        name: What ``model.block`` says.
        expansion: Output channels per unit of the block's width.
        convs: The main path's convolutions in order; exactly one is ``strided``.
    """

    name: str
    expansion: int
    convs: tuple[BlockConv, ...]

    def __post_init__(self) -> None:
        strided = sum(conv.strided for conv in self.convs)
        if strided != 1 or self.expansion < 1:
            raise ValueError(f"block type {self.name!r}: needs one strided conv and expansion >= 1")


BLOCK_TYPES: dict[str, BlockType] = {}


def register_block(block: BlockType) -> BlockType:
    """Add ``block`` to :data:`BLOCK_TYPES`; a name is registered once."""
    if block.name in BLOCK_TYPES:
        raise ValueError(f"block type {block.name!r} is already registered")
    BLOCK_TYPES[block.name] = block
    return block


# Two 3x3 convs (He et al. 2015).
register_block(BlockType("basic", 1, (BlockConv(3, strided=True), BlockConv(3))))
# 1x1 reduce, 3x3 with the stride (torchvision's v1.5), 1x1 expand to 4x.
register_block(BlockType("bottleneck", 4, (BlockConv(1), BlockConv(3, strided=True), BlockConv(1))))

if TYPE_CHECKING:
    BlockName = str
else:  # the parser reads the allowed names from this Literal, made from the registry
    BlockName = Literal[tuple(BLOCK_TYPES)]
