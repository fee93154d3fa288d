"""The user cache and its uint8 tensor files: where they live, their key, reading, writing, locking.

A source is decoded once; the result is saved with :func:`torch.save` under
``<cache>/tensors/<slug>-<key>.pt``, the key hashing the cache format, the source's path, its
:func:`fingerprint` (sizes and mtimes) and ``image_size``. Every later load (every trial,
every Ray worker) maps that file and takes a fraction of a second.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from search.data.layout import ARCHIVE_SUFFIXES, Layout, entries

# Bump when the layout of the tensor cache, the one-tree test split or the decoding changes:
# old cache files are then simply never looked up again.
CACHE_FORMAT = 1

Tensors = dict[str, Any]


def cache_dir() -> Path:
    """The user cache: ``$RESNET_SEARCH_CACHE``, else ``$XDG_CACHE_HOME/resnet-search`` or ``~/.cache/resnet-search``.

    It holds the tensor cache (``tensors/``), extracted archives (``extracted/``) and
    torchvision's CIFAR downloads.
    """
    env = os.environ.get("RESNET_SEARCH_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "resnet-search"


def tensor_path(layout: Layout, image_size: int | None) -> Path:
    """The cache file for a source decoded at ``image_size`` (which need not exist yet)."""
    key = digest([CACHE_FORMAT, str(layout.root.resolve()), fingerprint(layout), image_size])
    return cache_dir() / "tensors" / f"{slug(layout.root)}-{key[:16]}.pt"


def load_or_build(path: Path, build: Callable[[], Tensors]) -> Tensors:
    """The cache file at ``path``, made by ``build()`` first if it is missing or unreadable.

    Args:
        path: The cache file (see :func:`tensor_path`).
        build: Decodes the source into the dict to cache; called at most once, under a lock.

    Returns:
        The cached dict (memory-mapped when read from disk).
    """
    if path.exists():
        cached = read_cache(path)
        if cached is not None:
            return cached
    path.parent.mkdir(parents=True, exist_ok=True)
    # One builder at a time: parallel Ray workers wait for the first, then read its file.
    with locked(path.with_suffix(".lock")):
        cached = read_cache(path) if path.exists() else None
        if cached is not None:
            return cached
        tensors = build()
        write_cache(path, tensors)
    return tensors


def read_cache(path: Path) -> Tensors | None:
    """A cache file's contents, or ``None`` if it is unreadable or of another format."""
    try:
        # mmap: the pages come from the page cache on demand and are shared between workers.
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - a damaged cache is rebuilt, never fatal
        return None
    return data if isinstance(data, dict) and data.get("format") == CACHE_FORMAT else None


def write_cache(path: Path, tensors: Tensors) -> None:
    """Save ``tensors`` to ``path`` atomically: a reader sees the old file, no file, or the whole new one."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(tensors, f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fingerprint(layout: Layout) -> list[list[Any]]:
    """Size and mtime of what identifies a source, cheap enough to check on every load.

    For class folders the mtimes of the folders themselves change when an image is added,
    removed or renamed; an image rewritten in place is not noticed (delete the cache).
    """
    root = layout.root
    if layout.kind == "archive":
        paths = [root]
    elif layout.kind == "cifar10":
        paths = [root / f"data_batch_{i}" for i in range(1, 6)] + [root / "test_batch"]
    elif layout.kind == "cifar100":
        paths = [root / "train", root / "test"]
    else:
        splits = [p for p in entries(root) if p.is_dir()] if layout.kind == "split" else []
        paths = [root, *splits, *(c for s in splits or [root] for c in entries(s) if c.is_dir())]
    out = []
    for p in paths:
        st = p.stat()
        out.append([str(p.relative_to(root)) if p != root else ".", st.st_size, st.st_mtime_ns])
    return out


def digest(parts: list[Any]) -> str:
    """SHA-256 hex digest of ``parts`` as canonical JSON: the cache key of files and folders."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def slug(path: Path) -> str:
    """A file-name-safe short name for a source, so cache files can be told apart by eye."""
    name = path.name
    for suffix in (*ARCHIVE_SUFFIXES, ".tar"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40] or "data"


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (no-op where ``fcntl`` is missing, i.e. Windows).

    The lock file is created, with its folder, if missing, and left behind afterwards.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
