"""Recognising a dataset on disk: CIFAR python pickles, class-folder trees, or an archive of either.

Nothing here reads an image or writes a file: these functions only look at names, so that
:func:`search.data.sources.locate` can tell quickly whether a folder holds a dataset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")

# Where ``torchvision.datasets.CIFAR*(root, download=True)`` puts its pickles under ``root``.
TORCHVISION_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}

EXPECTED_LAYOUT = (
    "expected CIFAR python pickles (cifar-10-batches-py, cifar-100-python), class folders "
    "train/<class>/* + test/<class>/*, one folder of <class>/* folders, or a .tar.gz/.tgz/.zip of one of these"
)

LayoutKind = Literal["cifar10", "cifar100", "split", "tree", "archive"]


@dataclass(frozen=True)
class Layout:
    """A dataset found on disk: its format and the folder (or archive file) holding it.

    ``split`` is ``train/<class>/*`` + ``test/<class>/*`` (or ``val/``), ``tree`` one folder
    of ``<class>/*`` folders, ``archive`` a ``.tar.gz``/``.tgz``/``.zip`` not extracted yet.
    """

    kind: LayoutKind
    root: Path


def find_source(path: Path) -> Layout | None:
    """The dataset at ``path``: an archive, a known layout, or one of those one wrapping folder down.

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
    if {f"data_batch_{i}" for i in range(1, 6)} | {"test_batch"} <= names:
        return Layout("cifar10", path)
    if {"train", "test", "meta"} <= names and (path / "train").is_file():
        return Layout("cifar100", path)
    test = "test" if "test" in names else "val"  # ImageNet-style trees call their held-out split val
    if "train" in names and test in names and class_dirs(path / "train") and class_dirs(path / test):
        return Layout("split", path)
    if len(class_dirs(path)) >= 2:
        return Layout("tree", path)
    if depth == 0:
        return None
    subdirs = [p for p in entries(path) if p.is_dir()]
    for name in TORCHVISION_FOLDERS.values():  # torchvision's root holds the pickle folder beside the tarball
        if name in names:
            return find_layout(path / name, depth - 1)
    return find_layout(subdirs[0], depth - 1) if len(subdirs) == 1 else None


def entries(path: Path) -> list[Path]:
    """Visible entries of a folder, sorted (hidden files and macOS's ``__MACOSX`` skipped); ``[]`` if unreadable."""
    try:
        return sorted(p for p in path.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX")
    except (NotADirectoryError, FileNotFoundError, PermissionError):
        return []


def class_dirs(path: Path) -> list[Path]:
    """Sub-folders of ``path`` that directly hold at least one image file, sorted."""
    return [p for p in entries(path) if p.is_dir() and _has_image(p)]


def _has_image(folder: Path) -> bool:
    # scandir stops at the first image: no need to list 5000 files to know.
    with os.scandir(folder) as it:
        return any(os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES and e.is_file() for e in it)


def image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted by name."""
    return sorted(p for p in entries(folder) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def describe(path: Path) -> str:
    """A short account of what a file or folder holds, for error messages."""
    if path.is_file():
        return "a file that is not a .tar.gz/.tgz/.zip archive"
    found = entries(path)
    if not found:
        return "an empty folder"
    shown = ", ".join(p.name + ("/" if p.is_dir() else "") for p in found[:5])
    return f"found {len(found)} entries: {shown}{', ...' if len(found) > 5 else ''}"
