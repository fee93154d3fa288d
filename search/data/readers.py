"""The formats a dataset can have on disk, each one :class:`DataFormat` registered in
:data:`FORMATS`: how it is recognised, what identifies it for the cache, and how it is read
into the tensor cache's dict. A new format is one class here and its registration.

- ``cifar10`` / ``cifar100``: torchvision's CIFAR python pickles;
- ``split``: class folders ``train/<class>/*`` + ``test/<class>/*`` (or ``val/``);
- ``tree``: one folder of ``<class>/*`` folders, split into train and test here.

An archive of any of them is a container, not a format: :mod:`search.data.archives` extracts
it and finds the format inside with :func:`find_layout`.
"""

from __future__ import annotations

import pickle
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from search.config import UserError
from search.data.cache import CACHE_FORMAT, ImageWriter, Tensors, cache_dir
from search.data.decode import decode_into, resize_tensor
from search.data.fit import ImageFit
from search.data.images import stored_channels
from search.data.layout import ARCHIVE_SUFFIXES, TORCHVISION_FOLDERS, Layout, class_dirs, entries, image_files
from search.data.progress import Progress
from search.data.splits import stratified_split

# A one-tree class folder loses 1/6 of each class to the test split (CIFAR's 50k/10k ratio),
# chosen with a fixed seed so the test set never moves when data.split_seed changes.
# Changing either changes the cache's contents: bump CACHE_FORMAT with them.
TREE_TEST_FRACTION = 1 / 6
TREE_TEST_SEED = 0

# The labels (int64, train then test) of the images a format wrote, and the class names.
Labels = tuple[torch.Tensor, torch.Tensor, list[str]]
# Image files and labels, train then test, and class names.
FileLists = tuple[list[Path], list[int], list[Path], list[int], list[str]]


class DataFormat:
    """One format of a dataset on disk (see the module docstring).

    Attributes:
        kind: The name of the format, :attr:`Layout.kind` of what it recognises.
    """

    kind: str

    def matches(self, folder: Path, names: set[str]) -> bool:
        """Whether ``folder`` (whose visible entries are ``names``) holds this format."""
        raise NotImplementedError

    def identity(self, root: Path) -> list[Path]:
        """The files and folders whose size and mtime identify the data (the cache key)."""
        raise NotImplementedError

    def read(self, root: Path, fit: ImageFit, writer: ImageWriter) -> Labels:
        """Write the train images, then the test images, to ``writer``; their labels and the classes.

        Raises:
            UserError: What is unreadable or does not make a classification dataset.
        """
        raise NotImplementedError


FORMATS: dict[str, DataFormat] = {}


def register_format(data_format: DataFormat) -> DataFormat:
    """Add a format to :data:`FORMATS`; the first registered that matches a folder wins."""
    if FORMATS.setdefault(data_format.kind, data_format) is not data_format:
        raise ValueError(f"data format {data_format.kind!r} is already registered")
    return data_format


def build(layout: Layout, fit: ImageFit, writer: ImageWriter) -> Tensors:
    """Decode a source into the cache: its uint8 images to ``writer`` (train, then test), and
    the rest of the cache's dict returned: int64 labels, classes, how many images are training ones.

    Args:
        layout: An unpacked layout (not ``archive``).
        fit: The size images are fitted to (``None``: as they are), how, and their channels.
        writer: The cache's images file.

    Raises:
        UserError: An unreadable pickle or image, fewer than two classes, test classes
            unknown to train, or mixed image sizes without ``image_size``.
    """
    train_y, test_y, classes = FORMATS[layout.kind].read(layout.root, fit, writer)
    return {
        "format": CACHE_FORMAT,
        "train_count": len(train_y),
        "train_labels": train_y,
        "test_labels": test_y,
        "classes": list(classes),
    }


def fingerprint(layout: Layout) -> list[list[Any]]:
    """Size and mtime of what identifies a source, cheap enough to check on every load.

    For class folders the mtimes of the folders themselves change when an image is added,
    removed or renamed; an image rewritten in place is not noticed (delete the cache).
    """
    root = layout.root
    paths = [root] if layout.kind == "archive" else FORMATS[layout.kind].identity(root)
    out = []
    for p in paths:
        st = p.stat()
        out.append([str(p.relative_to(root)) if p != root else ".", st.st_size, st.st_mtime_ns])
    return out


# --------------------------------------------------------------------------- finding a format


def find_source(path: Path) -> Layout | None:
    """The dataset at ``path``: an archive, a known format, or one of those one wrapping folder down.

    Args:
        path: An existing file or folder.

    Returns:
        The layout found, or ``None`` if ``path`` holds no dataset.
    """
    if path.is_file():
        return Layout("archive", path) if path.name.lower().endswith(ARCHIVE_SUFFIXES) else None
    layout = find_layout(path)
    if layout is not None:
        return layout
    # A download folder holding just the archive (like ../shared/data) is as good as the archive.
    archives = [p for p in entries(path) if p.is_file() and p.name.lower().endswith(ARCHIVE_SUFFIXES)]
    return Layout("archive", archives[0]) if len(archives) == 1 else None


def find_layout(path: Path, depth: int = 3) -> Layout | None:
    """The unpacked dataset at ``path`` or below wrapping folders (``cifar10/train/...``).

    Args:
        path: A folder.
        depth: How many single wrapping folders may still be descended into.

    Returns:
        The layout found, or ``None``.
    """
    names = {p.name for p in entries(path)}
    for data_format in FORMATS.values():
        if data_format.matches(path, names):
            return Layout(data_format.kind, path)
    if depth == 0:
        return None
    subdirs = [p for p in entries(path) if p.is_dir()]
    for name in TORCHVISION_FOLDERS.values():  # torchvision's root holds the pickle folder beside the tarball
        if name in names:
            return find_layout(path / name, depth - 1)
    return find_layout(subdirs[0], depth - 1) if len(subdirs) == 1 else None


# --------------------------------------------------------------------------- CIFAR pickles


class CifarPickles(DataFormat):
    """torchvision's CIFAR python pickles: they already are uint8 ``N x 3072`` rows."""

    def __init__(self, kind: str, train_names: list[str], test_name: str, meta: tuple[str, str], label_key: str):
        self.kind = kind
        self.train_names, self.test_name = train_names, test_name
        self.meta_file, self.meta_key = meta
        self.label_key = label_key

    def matches(self, folder: Path, names: set[str]) -> bool:
        needed = {*self.train_names, self.test_name, self.meta_file}
        # CIFAR-100's train is a file; a class-folder dataset's train is a folder.
        return needed <= names and (folder / self.train_names[0]).is_file()

    def identity(self, root: Path) -> list[Path]:
        return [root / name for name in (*self.train_names, self.test_name)]

    def read(self, root: Path, fit: ImageFit, writer: ImageWriter) -> Labels:
        """The pickles' square RGB images: every resize mode is the same plain resize of a square;
        ``channels: 1`` takes their luma (Pillow's ITU-R 601 weights)."""
        classes = _load_pickle(root / self.meta_file)[self.meta_key]
        labels = []
        for names, train in ((self.train_names, True), ([self.test_name], False)):
            images, split_labels = _cifar_split(root, names, self.label_key)
            if fit.size is not None and fit.size != images.shape[-1]:
                images = resize_tensor(images, fit.size)
            writer.append(luma(images) if fit.channels == 1 else images, train=train)
            labels.append(split_labels)
        return labels[0], labels[1], list(classes)


def luma(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``N x 3 x H x W`` RGB to ``N x 1 x H x W`` grayscale, as Pillow's ``convert("L")``
    computes it (``(R * 19595 + G * 38470 + B * 7471 + 32768) >> 16``)."""
    weights = torch.tensor([19595, 38470, 7471], dtype=torch.int32).view(1, 3, 1, 1)
    out = [((c.to(torch.int32) * weights).sum(1, keepdim=True) + 32768) >> 16 for c in images.split(4096)]
    return torch.cat(out).to(torch.uint8) if out else images[:, :1]


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


CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
register_format(CifarPickles("cifar10", CIFAR10_TRAIN, "test_batch", ("batches.meta", "label_names"), "labels"))
register_format(CifarPickles("cifar100", ["train"], "test", ("meta", "fine_label_names"), "fine_labels"))


# --------------------------------------------------------------------------- class folders


class ClassFolders(DataFormat):
    """Images in one folder per class; :meth:`list_images` says which files and labels."""

    def list_images(self, root: Path) -> FileLists:
        """Image files and labels, train then test, and the classes (the training folders'
        names, sorted, as torchvision's ImageFolder).

        Raises:
            UserError: Fewer than two classes, or test classes that train lacks.
        """
        raise NotImplementedError

    def read(self, root: Path, fit: ImageFit, writer: ImageWriter) -> Labels:
        return _decode_folders(root, self.list_images(root), fit, writer)


class SplitFolders(ClassFolders):
    """``train/<class>/*`` + ``test/<class>/*`` (or ``val/``): test labels follow train's classes."""

    kind = "split"

    def matches(self, folder: Path, names: set[str]) -> bool:
        test = "test" if "test" in names else "val"  # ImageNet-style trees call their held-out split val
        return "train" in names and test in names and bool(class_dirs(folder / "train") and class_dirs(folder / test))

    def identity(self, root: Path) -> list[Path]:
        splits = [p for p in entries(root) if p.is_dir()]
        return [root, *splits, *(c for s in splits for c in entries(s) if c.is_dir())]

    def list_images(self, root: Path) -> FileLists:
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


class ClassTree(ClassFolders):
    """One tree of ``<class>/*`` folders, split into train and test with a fixed seed."""

    kind = "tree"

    def matches(self, folder: Path, names: set[str]) -> bool:
        return len(class_dirs(folder)) >= 2

    def identity(self, root: Path) -> list[Path]:
        return [root, *(c for c in entries(root) if c.is_dir())]

    def list_images(self, root: Path) -> FileLists:
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


register_format(SplitFolders())
register_format(ClassTree())


def _decode_folders(root: Path, files: FileLists, fit: ImageFit, writer: ImageWriter) -> Labels:
    """Decode the images of a class-folder dataset chunk by chunk into ``writer``, announced on
    stderr with a progress bar (it is the slow step)."""
    train_files, train_labels, test_files, test_labels, classes = files
    total = len(train_files) + len(test_files)
    print(
        f"resnet-search: decoding {total} images from {root} (once; cached in {cache_dir() / 'tensors'})",
        file=sys.stderr,
    )
    if fit.channels is None:  # data.channels: auto, decided before the first chunk fixes the layout
        fit = replace(fit, channels=stored_channels([*train_files, *test_files]))
    with Progress(total, "decoding") as progress:
        train = decode_into(train_files, fit, writer, train=True, progress=progress)
        test = decode_into(test_files, fit, writer, train=False, progress=progress)
    _report_skipped(train.skipped + test.skipped, total)
    if train.shape is not None and test.shape is not None and test.shape != train.shape:
        raise UserError(
            f"train images are {train.shape[-1]}px but test images are {test.shape[-1]}px "
            f"in {root}; set data.image_size to resize both on load"
        )
    train_y = torch.tensor([train_labels[i] for i in train.kept], dtype=torch.int64)
    test_y = torch.tensor([test_labels[i] for i in test.kept], dtype=torch.int64)
    _require_images_per_class(root, classes, train_y, len(train.skipped))
    return train_y, test_y, classes


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


def _require_two_classes(folder: Path, classes: list[str]) -> None:
    if len(classes) < 2:
        raise UserError(
            f"{folder} has {len(classes)} class folder ({', '.join(classes)}); a classifier needs "
            "at least 2: one folder of images per class"
        )
