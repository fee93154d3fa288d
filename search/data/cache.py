"""The user cache and its uint8 tensor files: where they live, their key, reading, writing, locking.

A source is decoded once, into two files under ``<cache>/tensors/``: ``<slug>-<key>.u8``, the
raw uint8 ``N x C x H x W`` images (train then test), and ``<slug>-<key>.pt`` (:func:`torch.save`)
with the labels, classes, mean/std and the images' shape. The key hashes the cache format, the
source's path, its :func:`fingerprint` (sizes and mtimes) and how images are fitted (size,
resize mode, channels). Every later load (every trial, every Ray worker) maps the images file
and takes a fraction of a second.

The images are written chunk by chunk as they are decoded (:class:`ImageWriter`), straight to
the file: building the cache of 100,000 images holds one chunk in memory, not the whole set
(twice, as a list and then its concatenation).

The ``.pt`` file carries a CRC-32 of the images' bytes and of the rest of its contents, written
with it and checked on every load (about 35 ms for CIFAR-10's 180 MB): a damaged file (bytes
zeroed or flipped on disk) is rebuilt with a one-line warning, never trained on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
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
from search.config.files import atomic_file
from search.data.layout import ARCHIVE_SUFFIXES

# Bump when the layout of the tensor cache, the one-tree test split or the decoding changes:
# old cache files are then simply never looked up again.
CACHE_FORMAT = 3  # 2: with a checksum; 3: the images in a raw file beside it, written in chunks
CHECKSUM_KEY = "checksum"
IMAGES_SUFFIX = ".u8"
STATS_PIXELS = 1 << 22  # uint8 values per float64 chunk of the channel sums
CRC_BLOCK = 16 << 20  # bytes read at a time to check the images file

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


class ImageWriter:
    """The cache's images file as it is written: uint8 ``n x C x H x W`` chunks appended in order,
    their CRC-32 and the training images' channel sums kept as they pass.

    Attributes:
        path: The file being written (a temporary name; :func:`write_cache` renames it).
        shape: ``C x H x W`` of the images, set by the first chunk.
        count: Images written so far.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.shape: tuple[int, ...] | None = None
        self.count = 0
        self.crc = 0
        self._file = open(path, "wb")  # noqa: SIM115 - closed by close()
        self._train = 0
        self._sums = torch.zeros(0, dtype=torch.float64)
        self._squares = torch.zeros(0, dtype=torch.float64)

    def append(self, images: torch.Tensor, *, train: bool) -> None:
        """Write ``images`` (uint8, of the first chunk's image shape) after those already written."""
        if not len(images):
            return
        if self.shape is None:
            self.shape = tuple(images.shape[1:])
            self._sums = self._squares = torch.zeros(self.shape[0], dtype=torch.float64)
        data = images.contiguous().numpy().data
        self._file.write(data)
        self.crc = zlib.crc32(data, self.crc)
        self.count += len(images)
        if train:
            self._train += len(images)
            # float64 a few MB at a time: 1,000 images of 224 px would be 1.2 GB of it at once.
            for chunk in images.split(max(1, STATS_PIXELS // math.prod(images.shape[1:]))):
                x = chunk.to(torch.float64)
                self._sums = self._sums + x.sum(dim=(0, 2, 3))
                self._squares = self._squares + x.square().sum(dim=(0, 2, 3))

    def stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training images on the [0, 1] scale (0 for a constant channel)."""
        if not self._train or self.shape is None:
            channels = 3 if self.shape is None else self.shape[0]
            return [0.5] * channels, [0.25] * channels
        n = self._train * self.shape[1] * self.shape[2]
        mean = self._sums / n
        std = (self._squares / n - mean.square()).clamp_min(0).sqrt()
        return (mean / 255).tolist(), (std / 255).tolist()

    def close(self) -> None:
        self._file.close()


def load_or_build(path: Path, build: Callable[[ImageWriter], Tensors]) -> Tensors:
    """The cache file at ``path``, made by ``build()`` first if it is missing or unreadable.

    Args:
        path: The cache file (see :func:`tensor_path`).
        build: Decodes the source, writing its images (train, then test) to the writer it is
            given, and returns the rest of the cache's dict (``train_count``: how many of the
            images are training images); called at most once, under a lock.

    Returns:
        The cached dict, its ``train_images`` and ``test_images`` memory-mapped.

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
        with _writable(path.parent):
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=IMAGES_SUFFIX, dir=path.parent)
            os.close(fd)
        try:
            writer = ImageWriter(Path(tmp))
            try:
                rest = build(writer)
            finally:
                writer.close()
            write_cache(path, rest, writer)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    cached = read_cache(path)
    if cached is None:
        raise UserError(f"the data cache {path} cannot be read back after writing it; delete it and retry")
    return cached


def read_cache(path: Path) -> Tensors | None:
    """A cache file's contents, or ``None`` if it is unreadable, damaged or of another format.

    A file of this format that cannot be read or fails its checksum is reported on stderr
    (one line): the caller rebuilds it.
    """
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - a damaged cache is rebuilt, never fatal
        _warn_damaged(path, f"unreadable: {type(error).__name__}")
        return None
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        return None  # another format: never looked up under this name, so left alone
    if data.get(CHECKSUM_KEY) != checksum(data):
        _warn_damaged(path, "its checksum does not match its contents")
        return None
    try:
        images = _map_images(path.with_suffix(IMAGES_SUFFIX), data)
    except (OSError, RuntimeError, ValueError, TypeError) as error:
        _warn_damaged(path, f"its images file is unreadable: {error}")
        return None
    if _file_crc(path.with_suffix(IMAGES_SUFFIX)) != data["images_crc"]:
        _warn_damaged(path, "its images' checksum does not match them")
        return None
    n_train = int(data["train_count"])
    return {**data, "train_images": images[:n_train], "test_images": images[n_train:]}


def _file_crc(path: Path) -> int:
    """CRC-32 of a file read block by block: through the page cache, not the mapping, so that
    checking a 15 GB images file does not make every page of it part of the process's memory."""
    crc = 0
    buffer = bytearray(CRC_BLOCK)
    view = memoryview(buffer)
    with open(path, "rb") as f:
        while n := f.readinto(buffer):
            crc = zlib.crc32(view[:n], crc)
    return crc


def _map_images(raw: Path, data: Tensors) -> torch.Tensor:
    """The images file mapped (copy-on-write: the pages come from the page cache on demand and
    are shared between workers), checked to be as long as the shape recorded says.

    Raises:
        ValueError: the file's length differs from the recorded shape's.
    """
    shape = [int(n) for n in data["images_shape"]]
    count = math.prod(shape)
    size = raw.stat().st_size
    if size != count:
        raise ValueError(f"{size:,} bytes, not {count:,}")
    if count == 0:
        return torch.zeros(shape, dtype=torch.uint8)
    return torch.from_file(str(raw), shared=False, size=count, dtype=torch.uint8).view(shape)


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


def write_cache(path: Path, rest: Tensors, writer: ImageWriter) -> None:
    """Save the images ``writer`` wrote and ``rest`` (labels, classes...) with their checksums, atomically:
    the images file is renamed into place first, then the ``.pt`` file that vouches for it, so a
    reader sees no file, the old pair or the new one (a mismatched pair fails its checksum).

    Raises:
        UserError: the cache folder cannot be written (read-only, full, not a folder).
    """
    shape = [writer.count, *(writer.shape or (3, 1, 1))]
    mean, std = writer.stats()
    entries = {"mean": mean, "std": std, **rest, "images_shape": shape, "images_crc": writer.crc}
    with _writable(path.parent):
        os.replace(writer.path, path.with_suffix(IMAGES_SUFFIX))
        with atomic_file(path) as f:
            torch.save({**entries, CHECKSUM_KEY: checksum(entries)}, f)


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
