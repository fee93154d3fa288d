"""Loading a dataset: locate it, read the tensor cache (decoding on a miss), split it per the config."""

from __future__ import annotations

from pathlib import Path

from search.config import DataConfig, UserError
from search.data.archives import materialize
from search.data.cache import Tensors, load_or_build, tensor_path
from search.data.fit import ImageFit
from search.data.layout import Layout
from search.data.placement import Placement
from search.data.readers import build, fingerprint
from search.data.sources import locate
from search.data.splits import ImageDataset, TensorSplit, balanced, stratified_split, take, take_mapped

# A channel that never varies (a constant background, a blank alpha-derived channel) has std 0:
# normalizing by it would turn every pixel into NaN. One grey level keeps it a constant 0 instead.
MIN_STD = 1 / 255


def load_dataset(config: DataConfig, data_dir: str | Path | None = None, download: bool = True) -> ImageDataset:
    """Load a dataset as uint8 tensors, decoding images only the first time.

    Args:
        config: Where the data is, ``image_size``, the validation split, subsets, mean/std.
        data_dir: The ``--data-dir`` flag; beats ``config.root``.
        download: Whether CIFAR-10/100 may be downloaded when found nowhere (never in tests).

    Returns:
        The dataset: ``train`` (after holding out ``val`` and taking ``train_subset``),
        ``val``, ``test``, class names, and mean/std (from the config, else from the
        source's training images).

    Raises:
        UserError: No data where named or anywhere, an unsafe or unreadable archive, a
            corrupt image, mixed image sizes without ``image_size``, or subsets that the
            classes cannot fill.
    """
    tensors = load_tensors(locate(config, data_dir, download), ImageFit.of(config))
    classes = tuple(tensors["classes"])
    images, labels = tensors["train_images"], tensors["train_labels"]

    train_idx, val_idx = stratified_split(labels, len(classes), config.val_fraction, config.split_seed)
    if sum(len(i) for i in val_idx) == 0:
        raise UserError(
            f"data.val_fraction {config.val_fraction} holds out no image of the {len(labels)} training images"
        )
    # The training split stays in the mapped cache: the trainer copies it whole or streams it.
    train = take_mapped(images, labels, balanced(train_idx, config.train_subset, "train_subset", classes))
    val = take(images, labels, balanced(val_idx, config.val_subset, "val_subset", classes))
    test = TensorSplit(tensors["test_images"], tensors["test_labels"])

    channels = int(images.shape[1])
    mean = _per_channel(config.mean, "mean", channels) or tuple(tensors["mean"])
    std = _per_channel(config.std, "std", channels) or tuple(max(s, MIN_STD) for s in tensors["std"])
    placement = Placement(config.on_device, config.device_memory_budget_mb)
    return ImageDataset(train, val, test, classes, mean, std, placement)


def _per_channel(values: tuple[float, ...] | None, key: str, channels: int) -> tuple[float, ...] | None:
    """``data.mean`` or ``data.std``, one per channel of the images (``channels: auto`` decides late).

    Raises:
        UserError: as many values as the images have channels.
    """
    if values is not None and len(values) != channels:
        raise UserError(
            f"data.{key} has {len(values)} values, but the images have {channels} channel(s) "
            "(data.channels): give one per channel"
        )
    return tuple(values) if values is not None else None


def load_tensors(layout: Layout, fit: ImageFit) -> Tensors:
    """The decoded source, fitted as ``fit`` says, from the tensor cache, building the cache entry on a miss.

    The key is taken from ``layout`` as located, so an archive is only extracted when its
    tensors are not cached yet.
    """
    path = tensor_path(layout.root, fingerprint(layout), fit.cache_key())
    return load_or_build(path, lambda writer: build(materialize(layout), fit, writer))
