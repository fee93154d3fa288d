"""The user cache and its uint8 tensor files: where they live, their key, reading, writing, locking.

A source is decoded once; the result is saved with :func:`torch.save` under
``<cache>/tensors/<slug>-<key>.pt``, the key hashing the cache format, the source's path, its
:func:`fingerprint` (sizes and mtimes) and how images are fitted (size, resize mode,
channels). Every later load (every trial, every Ray worker) maps that file and takes a fraction of a second.

Each file carries a CRC-32 of its tensors' bytes and of the rest of its contents, written with
it and checked on every load (about 35 ms for CIFAR-10's 180 MB): a damaged file (bytes
zeroed or flipped on disk) is rebuilt with a one-line warning, never trained on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from search.config import UserError
from search.data.layout import ARCHIVE_SUFFIXES

# Bump when the layout of the tensor cache, the one-tree test split or the decoding changes:
# old cache files are then simply never looked up again.
CACHE_FORMAT = 2  # 2: with a checksum
CHECKSUM_KEY = "checksum"

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


def tensor_path(root: Path, identity: list[Any], fit_key: Any) -> Path:
    """The cache file for the source at ``root`` decoded as ``fit_key`` says (which need not exist
    yet): :meth:`search.data.fit.ImageFit.cache_key`, the size alone for the default fit.
    ``identity`` is its fingerprint (:func:`search.data.readers.fingerprint`)."""
    key = digest([CACHE_FORMAT, str(root.resolve()), identity, fit_key])
    return cache_dir() / "tensors" / f"{slug(root)}-{key[:16]}.pt"


def load_or_build(path: Path, build: Callable[[], Tensors]) -> Tensors:
    """The cache file at ``path``, made by ``build()`` first if it is missing or unreadable.

    Args:
        path: The cache file (see :func:`tensor_path`).
        build: Decodes the source into the dict to cache; called at most once, under a lock.

    Returns:
        The cached dict (memory-mapped when read from disk).

    Raises:
        UserError: on a miss, the cache folder cannot be made or written.
    """
    if path.exists():
        cached = read_cache(path)
        if cached is not None:
            return cached
    with _writable(path.parent):
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
    """A cache file's contents, or ``None`` if it is unreadable, damaged or of another format.

    A file of this format that cannot be read or fails its checksum is reported on stderr
    (one line): the caller rebuilds it.
    """
    try:
        # mmap: the pages come from the page cache on demand and are shared between workers.
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001 - a damaged cache is rebuilt, never fatal
        _warn_damaged(path, f"unreadable: {type(error).__name__}")
        return None
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        return None  # another format: never looked up under this name, so left alone
    if data.get(CHECKSUM_KEY) != checksum(data):
        _warn_damaged(path, "its checksum does not match its contents")
        return None
    return data


def _warn_damaged(path: Path, why: str) -> None:
    print(f"resnet-search: warning: the data cache {path} is damaged ({why}); rebuilding it", file=sys.stderr)


def checksum(tensors: Tensors) -> int:
    """CRC-32 of every entry but the checksum itself: each tensor's bytes, the rest as JSON.

    Args:
        tensors: The cache's dict.

    Returns:
        The checksum (changes with any byte of any tensor, and with the classes or stats).
    """
    crc = 0
    for key in sorted(k for k in tensors if k != CHECKSUM_KEY):
        value = tensors[key]
        crc = zlib.crc32(key.encode(), crc)
        if isinstance(value, torch.Tensor):
            crc = zlib.crc32(value.contiguous().view(torch.uint8).numpy().data, crc)
        else:
            crc = zlib.crc32(json.dumps(value, sort_keys=True).encode(), crc)
    return crc


def write_cache(path: Path, tensors: Tensors) -> None:
    """Save ``tensors`` with their checksum to ``path`` atomically: a reader sees the old file,
    no file, or the whole new one.

    Raises:
        UserError: the cache folder cannot be written (read-only, full, not a folder).
    """
    with _writable(path.parent):
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save({**tensors, CHECKSUM_KEY: checksum(tensors)}, f)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


@contextlib.contextmanager
def _writable(folder: Path) -> Iterator[None]:
    """Turns an ``OSError`` while writing into the cache into one line naming it and the fix."""
    try:
        yield
    except OSError as error:
        raise UserError(
            f"the data cache {folder} cannot be written ({error.strerror or error}); "
            "set RESNET_SEARCH_CACHE to a writable folder"
        ) from None


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
    with _writable(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a")  # noqa: SIM115 - closed below, after the lock is released
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
