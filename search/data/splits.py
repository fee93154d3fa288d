"""Datasets as tensors: the split and dataset types, stratified and balanced splits, channel stats."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from search.config import UserError
from search.data.placement import Placement


@dataclass(frozen=True)
class TensorSplit:
    """One split held as tensors: ``images`` uint8 ``N x 3 x H x W``, ``labels`` int64 ``N``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, ...]:
        """``C x H x W`` of one image, without reading any."""
        return tuple(self.images.shape[1:])

    @property
    def nbytes(self) -> int:
        """The bytes the split's images take, held whole."""
        return len(self) * math.prod(self.image_shape)

    def read(self, rows: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The images at ``rows`` (int64 on the CPU), into ``out`` if given."""
        return torch.index_select(self.images, 0, rows, out=out) if out is not None else self.images[rows]

    def image_blocks(self, rows_per_block: int = 4096) -> Iterator[torch.Tensor]:
        """The images in order, a block of rows at a time: what reads every image (a hash) holds
        one block in memory, not the whole split, however it is stored."""
        for start in range(0, len(self), rows_per_block):
            yield self.read(torch.arange(start, min(start + rows_per_block, len(self))))


class MappedSplit(TensorSplit):
    """The rows ``rows`` of ``source`` (the memory-mapped cache) as a split, never copied whole
    unless asked: :meth:`read` gathers a batch straight from the mapped file, and ``images``
    (what needs the whole tensor: a copy to the device, a hash) copies every row out.

    Attributes:
        source: uint8 ``M x 3 x H x W``, memory-mapped.
        rows: Sorted int64 indices into ``source``.
        labels: int64 labels of ``rows``, in memory.
    """

    source: torch.Tensor
    rows: torch.Tensor

    def __init__(self, source: torch.Tensor, rows: torch.Tensor, labels: torch.Tensor) -> None:
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "labels", labels)

    @property
    def images(self) -> torch.Tensor:
        return self.source.index_select(0, self.rows)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.source.shape[1:])

    def read(self, rows: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        picked = self.rows[rows]
        return torch.index_select(self.source, 0, picked, out=out) if out is not None else self.source[picked]

    def __repr__(self) -> str:
        return f"MappedSplit({len(self)} rows of {tuple(self.source.shape)})"


@dataclass(frozen=True)
class ImageDataset:
    """A loaded dataset: train/val/test splits, class names and the normalization constants.

    ``val`` is held out of the source's training images (stratified); ``test`` is the
    source's own test set and is only for final reports. ``placement`` says whether a trainer
    copies ``train`` to its device whole or streams it (:mod:`search.data.placement`). ``mean``/``std`` are per channel,
    in units of the ``[0, 1]`` image scale; computed ones come from all of the source's
    training images (val included), so that one cached pair serves every split.
    """

    train: TensorSplit
    val: TensorSplit
    test: TensorSplit
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    placement: Placement = Placement()

    @property
    def image_size(self) -> int:
        """Side of the (square) images in pixels."""
        return int(self.train.image_shape[-1])

    @property
    def channels(self) -> int:
        """Channels of the images: 3 (RGB) or 1 (grayscale)."""
        return int(self.train.images.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def train_counts(self) -> dict[str, int]:
        """Training images per class, by class name (in the order of ``classes``)."""
        counts = torch.bincount(self.train.labels, minlength=self.num_classes).tolist()
        return dict(zip(self.classes, counts, strict=True))

    def train_plus_val(self) -> TensorSplit:
        """Train and val concatenated: the training set of a final retraining run."""
        return TensorSplit(
            torch.cat([self.train.images, self.val.images]), torch.cat([self.train.labels, self.val.labels])
        )


def stratified_split(
    labels: torch.Tensor, num_classes: int, fraction: float, seed: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per class, a seeded shuffle of its indices cut into (kept, held out ``fraction``).

    Args:
        labels: int64 labels in ``[0, num_classes)``.
        num_classes: The number of classes (a class without images gets empty tensors).
        fraction: The share of each class held out.
        seed: Seed of the shuffle.

    Returns:
        ``(kept, held)``, each one index tensor per class in shuffled order, so a balanced
        subset is a prefix of each class: a smaller subset is always inside a larger one.
    """
    # Index bookkeeping in numpy: single-threaded, so it stays a few ms on a busy machine
    # where torch's two-thread nonzero/sort on 50k labels took a third of a second.
    y = labels.numpy()
    order = np.argsort(y, kind="stable")  # class by class, ascending index within a class
    groups = np.split(order, np.cumsum(np.bincount(y, minlength=num_classes))[:-1])
    gen = torch.Generator().manual_seed(seed)
    keep, held = [], []
    for group in groups:
        idx = torch.from_numpy(group[torch.randperm(len(group), generator=gen).numpy()])
        # At least one held out of any class that can spare one, so tiny datasets still
        # validate every class.
        k = max(1, round(len(idx) * fraction)) if len(idx) >= 2 else 0
        held.append(idx[:k])
        keep.append(idx[k:])
    return keep, held


def balanced(per_class: list[torch.Tensor], subset: int | None, key: str, classes: Sequence[str]) -> torch.Tensor:
    """Sorted indices of ``subset // num_classes`` images of every class (all images if ``subset`` is None).

    Args:
        per_class: Index tensors per class, as :func:`stratified_split` returns them.
        subset: The total wanted, or ``None`` for all.
        key: The config key that set ``subset``, for messages.
        classes: Class names, for messages.

    Raises:
        UserError: ``subset`` is below the number of classes, or a class has too few images.
    """
    if subset is None:
        return torch.from_numpy(np.sort(torch.cat(per_class).numpy()))
    per = subset // len(per_class)
    if per == 0:
        raise UserError(
            f"data.{key} {subset} is below the number of classes ({len(per_class)}); "
            "a balanced subset needs one image per class"
        )
    for name, idx in zip(classes, per_class, strict=True):
        if len(idx) < per:
            raise UserError(f"data.{key} {subset} needs {per} images per class but class {name!r} has {len(idx)}")
    return torch.from_numpy(np.sort(torch.cat([idx[:per] for idx in per_class]).numpy()))


def take(images: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor) -> TensorSplit:
    """The images and labels at ``idx`` as a split of their own.

    Sorted indices keep source order; ``index_select`` copies out of the memory-mapped cache.
    """
    return TensorSplit(images.index_select(0, idx), labels.index_select(0, idx))


def take_mapped(images: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor) -> MappedSplit:
    """The images and labels at ``idx`` as a split that reads its images from ``images`` on demand."""
    return MappedSplit(images, idx, labels.index_select(0, idx))
