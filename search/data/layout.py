"""What a dataset on disk is called: the :class:`Layout` found, and looking at folders by name.

Nothing here reads an image or writes a file. The formats themselves, and recognising them,
are in :mod:`search.data.readers`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")

# Where ``torchvision.datasets.CIFAR*(root, download=True)`` puts its pickles under ``root``.
TORCHVISION_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}

EXPECTED_LAYOUT = (
    "expected CIFAR python pickles (cifar-10-batches-py, cifar-100-python), class folders "
    "train/<class>/* + test/<class>/*, one folder of <class>/* folders, or a .tar.gz/.tgz/.zip of one of these"
)


@dataclass(frozen=True)
class Layout:
    """A dataset found on disk: its format and the folder (or archive file) holding it.

    ``kind`` is a format of :data:`search.data.readers.FORMATS`, or ``archive`` for a
    ``.tar.gz``/``.tgz``/``.zip`` not extracted yet.
    """

    kind: str
    root: Path


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
