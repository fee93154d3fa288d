"""Reading an unpacked source into the tensor cache's dict: CIFAR pickles or class-folder images."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from search.config import UserError
from search.data.cache import CACHE_FORMAT, Tensors, cache_dir
from search.data.decode import decode_images, resize_tensor, to_nchw
from search.data.layout import Layout, class_dirs, entries, image_files
from search.data.splits import channel_stats, stratified_split

# A one-tree class folder loses 1/6 of each class to the test split (CIFAR's 50k/10k ratio),
# chosen with a fixed seed so the test set never moves when data.split_seed changes.
# Changing either changes the cache's contents: bump CACHE_FORMAT with them.
TREE_TEST_FRACTION = 1 / 6
TREE_TEST_SEED = 0

# Four tensors, train then test: uint8 images N x 3 x H x W and int64 labels N, and class names.
Splits = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]
# Image files and labels, train then test, and class names.
FileLists = tuple[list[Path], list[int], list[Path], list[int], list[str]]


def build(layout: Layout, image_size: int | None) -> Tensors:
    """Decode a source into the cache's dict: uint8 images, int64 labels, classes, mean/std.

    Args:
        layout: An unpacked layout (not ``archive``).
        image_size: Resize images to this square side; ``None`` keeps them as they are.

    Raises:
        UserError: An unreadable pickle or image, fewer than two classes, test classes
            unknown to train, or mixed image sizes without ``image_size``.
    """
    if layout.kind in ("cifar10", "cifar100"):
        train_x, train_y, test_x, test_y, classes = read_cifar(layout)
        if image_size is not None and image_size != train_x.shape[-1]:
            train_x, test_x = resize_tensor(train_x, image_size), resize_tensor(test_x, image_size)
    else:
        train_x, train_y, test_x, test_y, classes = _decode_folders(layout, image_size)
    mean, std = channel_stats(train_x)
    return {
        "format": CACHE_FORMAT,
        "train_images": train_x,
        "train_labels": train_y,
        "test_images": test_x,
        "test_labels": test_y,
        "classes": list(classes),
        "mean": mean,
        "std": std,
    }


def _decode_folders(layout: Layout, image_size: int | None) -> Splits:
    """Decode the images of a class-folder layout, announced on stderr (it is the slow step)."""
    train_files, train_labels, test_files, test_labels, classes = list_images(layout)
    print(
        f"resnet-search: decoding {len(train_files) + len(test_files)} images from {layout.root} "
        f"(once; cached in {cache_dir() / 'tensors'})",
        file=sys.stderr,
    )
    train, test = decode_images(train_files, image_size), decode_images(test_files, image_size)
    _report_skipped(train.skipped + test.skipped, len(train_files) + len(test_files))
    train_x, test_x = to_nchw(train.images), to_nchw(test.images)
    if len(test.kept) and train_x.shape[1:] != test_x.shape[1:]:
        raise UserError(
            f"train images are {train_x.shape[-1]}px but test images are {test_x.shape[-1]}px "
            f"in {layout.root}; set data.image_size to resize both on load"
        )
    train_y = torch.tensor([train_labels[i] for i in train.kept], dtype=torch.int64)
    test_y = torch.tensor([test_labels[i] for i in test.kept], dtype=torch.int64)
    _require_images_per_class(layout.root, classes, train_y, len(train.skipped))
    return train_x, train_y, test_x, test_y, classes


def _report_skipped(skipped: list[tuple[Path, str]], total: int) -> None:
    """One warning line for the files that could not be decoded, counting them."""
    if skipped:
        first, why = skipped[0]
        print(
            f"resnet-search: warning: skipped {len(skipped)} of {total} image files that cannot be decoded "
            f"(first: {first}: {why})",
            file=sys.stderr,
        )


def _require_images_per_class(root: Path, classes: list[str], labels: torch.Tensor, skipped: int) -> None:
    """Every class keeps at least one training image once unreadable files are skipped.

    Raises:
        UserError: a class has no decodable training image.
    """
    counts = torch.bincount(labels, minlength=len(classes)).tolist()
    empty = [name for name, count in zip(classes, counts, strict=True) if count == 0]
    if empty:
        raise UserError(
            f"class {empty[0]!r} in {root} has no training image that can be decoded "
            f"({skipped} file(s) skipped in all); a class needs at least one readable image"
        )


def read_cifar(layout: Layout) -> Splits:
    """Read torchvision's CIFAR python pickles directly: they already are uint8 ``N x 3072`` rows.

    Raises:
        UserError: A pickle is missing or unreadable.
    """
    if layout.kind == "cifar10":
        label_key, train_names, test_name = "labels", [f"data_batch_{i}" for i in range(1, 6)], "test_batch"
        classes = _load_pickle(layout.root / "batches.meta")["label_names"]
    else:
        label_key, train_names, test_name = "fine_labels", ["train"], "test"
        classes = _load_pickle(layout.root / "meta")["fine_label_names"]
    train_x, train_y = _cifar_split(layout.root, train_names, label_key)
    test_x, test_y = _cifar_split(layout.root, [test_name], label_key)
    return train_x, train_y, test_x, test_y, list(classes)


def _load_pickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")  # pickled by Python 2: bytes keys as str
    except (OSError, pickle.UnpicklingError, EOFError) as e:
        raise UserError(f"{path}: not a readable CIFAR pickle ({e})") from e


def _cifar_split(root: Path, names: list[str], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The images and labels of the CIFAR batch files ``names``, concatenated."""
    batches = [_load_pickle(root / n) for n in names]
    x = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32)
    y = np.concatenate([np.asarray(b[label_key]) for b in batches])
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.uint8)), torch.from_numpy(y.astype(np.int64))


def list_images(layout: Layout) -> FileLists:
    """Image files and labels of a class-folder layout; a one-tree layout is split here.

    Classes are the training folders' names, sorted (as torchvision's ImageFolder).

    Raises:
        UserError: Fewer than two classes, or test classes that train lacks.
    """
    if layout.kind == "split":
        return _list_split(layout.root)
    return _list_tree(layout.root)


def _list_split(root: Path) -> FileLists:
    """``train/<class>/*`` + ``test/<class>/*`` (or ``val/``): test labels follow train's classes."""
    names = {p.name for p in entries(root)}
    train_dir, test_dir = root / "train", root / ("test" if "test" in names else "val")
    train_classes = class_dirs(train_dir)
    classes = [d.name for d in train_classes]
    _require_two_classes(train_dir, classes)
    test_classes = class_dirs(test_dir)
    unknown = sorted({d.name for d in test_classes} - set(classes))
    if unknown:
        raise UserError(f"{test_dir} has classes that {train_dir} lacks: {', '.join(unknown[:5])}")
    train = [(f, i) for i, d in enumerate(train_classes) for f in image_files(d)]
    test = [(f, classes.index(d.name)) for d in test_classes for f in image_files(d)]
    return [f for f, _ in train], [y for _, y in train], [f for f, _ in test], [y for _, y in test], classes


def _list_tree(root: Path) -> FileLists:
    """One tree of ``<class>/*`` folders, split into train and test with a fixed seed."""
    folders = class_dirs(root)
    classes = [d.name for d in folders]
    _require_two_classes(root, classes)
    per_class = [image_files(d) for d in folders]
    labels = torch.tensor([i for i, fs in enumerate(per_class) for _ in fs], dtype=torch.int64)
    flat = [f for fs in per_class for f in fs]
    keep, held = stratified_split(labels, len(classes), TREE_TEST_FRACTION, TREE_TEST_SEED)
    train = [(flat[j], int(labels[j])) for j in sorted(torch.cat(keep).tolist())]
    test = [(flat[j], int(labels[j])) for j in sorted(torch.cat(held).tolist())]
    return [f for f, _ in train], [y for _, y in train], [f for f, _ in test], [y for _, y in test], classes


def _require_two_classes(folder: Path, classes: list[str]) -> None:
    if len(classes) < 2:
        raise UserError(
            f"{folder} has {len(classes)} class folder ({', '.join(classes)}); a classifier needs "
            "at least 2: one folder of images per class"
        )
