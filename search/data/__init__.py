"""Images in, uint8 tensors out: find a dataset, decode it once, split it, augment whole batches.

The airbench way: the whole dataset is one ``N x 3 x H x W`` uint8 tensor that is moved to
the training device once; augmentation and normalization are tensor ops on a whole batch,
never a per-image Python loop, so the GPU (or the CPU's vector units) is never waiting on a
``DataLoader``.

Sources (see :func:`locate`): torchvision's CIFAR-10/100 python pickles, class-folder trees
(``train/<class>/*`` + ``test/<class>/*``, or one tree of ``<class>/*`` folders that is split
here), and ``.tar.gz``/``.tgz``/``.zip`` archives of either, extracted once into the cache.

Decoding JPEGs is the slow part (about 10 s for CIFAR-10), so it happens once per source:
the result is saved with :func:`torch.save` in the user cache, keyed by the source's path,
size and mtime and by ``image_size``. Every later load (every trial, every Ray worker) maps
that file and takes a fraction of a second.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from search.config import UserError
from search.config import Augment, DataConfig

# Bump when the layout of the tensor cache, the one-tree test split or the decoding changes:
# old cache files are then simply never looked up again.
CACHE_FORMAT = 1

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")

# Where ``torchvision.datasets.CIFAR*(root, download=True)`` puts its pickles under ``root``.
TORCHVISION_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}

EXPECTED_LAYOUT = (
    "expected CIFAR python pickles (cifar-10-batches-py, cifar-100-python), class folders "
    "train/<class>/* + test/<class>/*, one folder of <class>/* folders, or a .tar.gz/.tgz/.zip of one of these"
)
POINT_AT_DATA = "point at local data with --data-dir, data.root or the RESNET_SEARCH_DATA variable"

# A one-tree class folder loses 1/6 of each class to the test split (CIFAR's 50k/10k ratio),
# chosen with a fixed seed so the test set never moves when data.split_seed changes.
TREE_TEST_FRACTION = 1 / 6
TREE_TEST_SEED = 0

# Below this many images a process pool costs more to start than it saves.
POOL_MIN_IMAGES = 2000
DECODE_CHUNK = 1000


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class TensorSplit:
    """One split held as tensors: ``images`` uint8 ``N x 3 x H x W``, ``labels`` int64 ``N``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class ImageDataset:
    """A loaded dataset: train/val/test splits, class names and the normalization constants.

    ``val`` is held out of the source's training images (stratified); ``test`` is the
    source's own test set and is only for final reports. ``mean``/``std`` are per channel,
    in units of the ``[0, 1]`` image scale; computed ones come from all of the source's
    training images (val included), so that one cached pair serves every split.
    """

    train: TensorSplit
    val: TensorSplit
    test: TensorSplit
    classes: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def image_size(self) -> int:
        """Side of the (square) images in pixels."""
        return int(self.train.images.shape[-1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def train_plus_val(self) -> TensorSplit:
        """Train and val concatenated: the training set of a final retraining run."""
        return TensorSplit(
            torch.cat([self.train.images, self.val.images]), torch.cat([self.train.labels, self.val.labels])
        )


@dataclass(frozen=True)
class _Layout:
    """A dataset found on disk: its format and the folder (or archive file) holding it."""

    kind: Literal["cifar10", "cifar100", "split", "tree", "archive"]
    root: Path


# --------------------------------------------------------------------------- locating


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


def locate(config: DataConfig, data_dir: str | Path | None = None, download: bool = True) -> _Layout:
    """Find the dataset: the first named location wins, else the cache, else a download.

    Order: ``data_dir`` (``--data-dir``), ``config.root``, ``$RESNET_SEARCH_DATA``, then the
    user cache. A location the user named must hold data: it is never a download target.

    Args:
        config: The data section of the spec.
        data_dir: The ``--data-dir`` flag, if given.
        download: Whether CIFAR-10/100 may be downloaded into the cache when found nowhere.

    Returns:
        The layout found (an archive is not extracted yet).

    Raises:
        UserError: A named location is missing or holds no dataset, the data is the wrong
            CIFAR, or nothing was found and downloading is off or fails.
    """
    named = [
        (data_dir, "--data-dir"),
        (config.root, "data.root"),
        (os.environ.get("RESNET_SEARCH_DATA"), "RESNET_SEARCH_DATA"),
    ]
    for value, how in named:
        if value is None or str(value) == "":
            continue
        path = Path(value).expanduser()
        if not path.exists():
            raise UserError(f"{how} {path} does not exist; {EXPECTED_LAYOUT}")
        layout = _find_source(path)
        if layout is None:
            raise UserError(f"{how} {path} holds no dataset ({_describe(path)}); {EXPECTED_LAYOUT}")
        return _check_kind(layout, config.dataset)

    cache = cache_dir()
    candidates = [cache / TORCHVISION_FOLDERS[config.dataset]] if config.dataset in TORCHVISION_FOLDERS else []
    candidates.append(cache / config.dataset)  # a folder or archive the user dropped into the cache
    candidates += [cache / f"{config.dataset}{suffix}" for suffix in ARCHIVE_SUFFIXES]
    for candidate in candidates:
        layout = _find_source(candidate) if candidate.exists() else None
        if layout is not None:
            return _check_kind(layout, config.dataset)

    if config.dataset not in TORCHVISION_FOLDERS:
        raise UserError(f"data.dataset {config.dataset} has no default location (looked in {cache}); {POINT_AT_DATA}")
    if not download:
        raise UserError(f"{config.dataset} not found in {cache} and downloading is off; {POINT_AT_DATA}")
    return _download(config.dataset, cache)


def dataset_root(config: DataConfig, data_dir: str | Path | None = None, download: bool = True) -> Path:
    """The folder holding the dataset in its own layout, an archive extracted into the cache first.

    Args / Raises: as :func:`locate`.

    Returns:
        The CIFAR pickle folder or the class-folder root.
    """
    return _materialize(locate(config, data_dir, download)).root


def _find_source(path: Path) -> _Layout | None:
    """The dataset at ``path``: an archive, a known layout, or one of those one wrapping folder down."""
    if path.is_file():
        return _Layout("archive", path) if path.name.lower().endswith(ARCHIVE_SUFFIXES) else None
    layout = _find_layout(path)
    if layout is not None:
        return layout
    # A download folder holding just the archive (like ../shared/data) is as good as the archive.
    archives = [p for p in _entries(path) if p.is_file() and p.name.lower().endswith(ARCHIVE_SUFFIXES)]
    return _Layout("archive", archives[0]) if len(archives) == 1 else None


def _find_layout(path: Path, depth: int = 3) -> _Layout | None:
    """The unpacked dataset at ``path`` or below one wrapping folder (``cifar10/train/...``)."""
    names = {p.name for p in _entries(path)}
    if {f"data_batch_{i}" for i in range(1, 6)} | {"test_batch"} <= names:
        return _Layout("cifar10", path)
    if {"train", "test", "meta"} <= names and (path / "train").is_file():
        return _Layout("cifar100", path)
    test = "test" if "test" in names else "val"  # ImageNet-style trees call their held-out split val
    if "train" in names and test in names and _class_dirs(path / "train") and _class_dirs(path / test):
        return _Layout("split", path)
    if len(_class_dirs(path)) >= 2:
        return _Layout("tree", path)
    if depth == 0:
        return None
    subdirs = [p for p in _entries(path) if p.is_dir()]
    for name in TORCHVISION_FOLDERS.values():  # torchvision's root holds the pickle folder beside the tarball
        if name in names:
            return _find_layout(path / name, depth - 1)
    return _find_layout(subdirs[0], depth - 1) if len(subdirs) == 1 else None


def _entries(path: Path) -> list[Path]:
    """Visible entries of a folder, sorted (hidden files and macOS's ``__MACOSX`` skipped)."""
    try:
        return sorted(p for p in path.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX")
    except (NotADirectoryError, FileNotFoundError, PermissionError):
        return []


def _class_dirs(path: Path) -> list[Path]:
    """Sub-folders of ``path`` that directly hold at least one image file."""

    def has_image(folder: Path) -> bool:
        # scandir stops at the first image: no need to list 5000 files to know.
        with os.scandir(folder) as it:
            return any(os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES and e.is_file() for e in it)

    return [p for p in _entries(path) if p.is_dir() and has_image(p)]


def _require_two_classes(folder: Path, classes: list[str]) -> None:
    if len(classes) < 2:
        raise UserError(f"{folder} has {len(classes)} class folder ({', '.join(classes)}); a classifier needs "
                        "at least 2: one folder of images per class")


def _describe(path: Path) -> str:
    """A short account of what a folder holds, for error messages."""
    if path.is_file():
        return "a file that is not a .tar.gz/.tgz/.zip archive"
    entries = _entries(path)
    if not entries:
        return "an empty folder"
    shown = ", ".join(p.name + ("/" if p.is_dir() else "") for p in entries[:5])
    return f"found {len(entries)} entries: {shown}{', ...' if len(entries) > 5 else ''}"


def _check_kind(layout: _Layout, dataset: str) -> _Layout:
    """Refuse CIFAR-10 pickles for a cifar100 spec and vice versa; class folders fit any name."""
    if layout.kind in ("cifar10", "cifar100") and dataset in ("cifar10", "cifar100") and layout.kind != dataset:
        raise UserError(f"{layout.root} holds {layout.kind} pickles but data.dataset is {dataset}")
    return layout


def _download(dataset: str, cache: Path) -> _Layout:
    """Download CIFAR-10/100 into the cache with torchvision's downloader, announced on stderr."""
    import torchvision

    cls = torchvision.datasets.CIFAR10 if dataset == "cifar10" else torchvision.datasets.CIFAR100
    print(f"resnet-search: downloading {dataset} from {cls.url} into {cache}", file=sys.stderr)
    cache.mkdir(parents=True, exist_ok=True)
    try:
        # torchvision prints progress on stdout, which belongs to our results: send it to stderr.
        with _locked(cache / ".download.lock"), contextlib.redirect_stdout(sys.stderr):
            cls(str(cache), train=True, download=True)
    except Exception as e:  # noqa: BLE001 - URLError, OSError, RuntimeError(checksum): all "no data"
        raise UserError(f"could not download {dataset} from {cls.url} into {cache} ({e}); {POINT_AT_DATA}") from e
    return _Layout(dataset, cache / TORCHVISION_FOLDERS[dataset])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- archives


def _materialize(layout: _Layout) -> _Layout:
    """Extract an archive into the cache once (reused afterwards) and find the dataset inside."""
    if layout.kind != "archive":
        return layout
    archive = layout.root
    st = archive.stat()
    key = _digest([str(archive.resolve()), st.st_size, st.st_mtime_ns])
    dest = cache_dir() / "extracted" / f"{_slug(archive)}-{key[:12]}"
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        with _locked(dest.with_name(dest.name + ".lock")):
            if not dest.exists():  # another worker may have finished while we waited
                print(f"resnet-search: extracting {archive} into {dest}", file=sys.stderr)
                # Extract beside the destination, then rename: a reader never sees half a tree.
                tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=dest.parent))
                try:
                    _extract(archive, tmp)
                    os.replace(tmp, dest)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
    found = _find_layout(dest)
    if found is None:
        raise UserError(f"archive {archive} holds no dataset ({_describe(dest)}); {EXPECTED_LAYOUT}")
    return found


def _extract(archive: Path, dest: Path) -> None:
    """Extract a .tar.gz/.tgz/.zip into ``dest``, refusing anything that could land outside it.

    Raises:
        UserError: A member has an absolute path or ``..``, or is a link, device or FIFO;
            or the archive is unreadable.
    """
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                infos = zf.infolist()
                for info in infos:
                    mode = info.external_attr >> 16
                    # Unix mode 0 means a zip made on Windows: a plain file or folder.
                    if mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                        raise UserError(f"archive {archive}: refusing {info.filename!r}: not a plain file or folder")
                    _check_member_path(archive, info.filename, dest)
                zf.extractall(dest, members=infos)
        else:
            with tarfile.open(archive, "r:*") as tf:
                members = tf.getmembers()
                for m in members:
                    if not (m.isfile() or m.isdir()):
                        what = "a link" if m.issym() or m.islnk() else "a device or FIFO"
                        raise UserError(f"archive {archive}: refusing {m.name!r}: {what}, not a plain file or folder")
                    _check_member_path(archive, m.name, dest)
                if hasattr(tarfile, "data_filter"):
                    # The "data" filter re-checks all of the above and drops odd permissions.
                    tf.extractall(dest, members=members, filter="data")
                else:  # Python before 3.10.12 / 3.11.4: the checks above are the guard
                    tf.extractall(dest, members=members)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        reason = str(e).strip().splitlines()[0].rstrip(":") if str(e).strip() else type(e).__name__
        raise UserError(f"archive {archive} cannot be read ({reason})") from e


def _check_member_path(archive: Path, name: str, dest: Path) -> None:
    """Refuse a member name that is absolute or climbs out of ``dest``."""
    posix = name.replace("\\", "/")
    parts = PurePosixPath(posix).parts
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix) or ".." in parts:
        raise UserError(f"archive {archive}: refusing {name!r}: its path leaves the extraction folder")
    target = (dest / posix).resolve()
    if not target.is_relative_to(dest.resolve()):
        raise UserError(f"archive {archive}: refusing {name!r}: its path leaves the extraction folder")


# --------------------------------------------------------------------------- the tensor cache


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
    tensors = _load_tensors(locate(config, data_dir, download), config.image_size)
    classes = tuple(tensors["classes"])
    images, labels = tensors["train_images"], tensors["train_labels"]

    train_idx, val_idx = _stratified_split(labels, len(classes), config.val_fraction, config.split_seed)
    if sum(len(i) for i in val_idx) == 0:
        raise UserError(
            f"data.val_fraction {config.val_fraction} holds out no image of the {len(labels)} training images"
        )
    train = _take(images, labels, _balanced(train_idx, config.train_subset, "train_subset", classes))
    val = _take(images, labels, _balanced(val_idx, config.val_subset, "val_subset", classes))
    test = TensorSplit(tensors["test_images"], tensors["test_labels"])

    mean = tuple(config.mean) if config.mean is not None else tuple(tensors["mean"])
    std = tuple(config.std) if config.std is not None else tuple(tensors["std"])
    return ImageDataset(train, val, test, classes, mean, std)  # type: ignore[arg-type]


def _load_tensors(layout: _Layout, image_size: int | None) -> dict:
    """The decoded source from the tensor cache, building the cache entry on a miss."""
    key = _digest([CACHE_FORMAT, str(layout.root.resolve()), _fingerprint(layout), image_size])
    path = cache_dir() / "tensors" / f"{_slug(layout.root)}-{key[:16]}.pt"
    if path.exists():
        cached = _read_cache(path)
        if cached is not None:
            return cached
    path.parent.mkdir(parents=True, exist_ok=True)
    # One builder at a time: parallel Ray workers wait for the first, then read its file.
    with _locked(path.with_suffix(".lock")):
        cached = _read_cache(path) if path.exists() else None
        if cached is not None:
            return cached
        tensors = _build(_materialize(layout), image_size)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(tensors, f)
            os.replace(tmp, path)  # atomic: a reader sees the old file, no file, or the whole new one
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return tensors


def _read_cache(path: Path) -> dict | None:
    """A cache file's contents, or ``None`` if it is unreadable or of another format."""
    try:
        # mmap: the pages come from the page cache on demand and are shared between workers.
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - a damaged cache is rebuilt, never fatal
        return None
    return data if isinstance(data, dict) and data.get("format") == CACHE_FORMAT else None


def _fingerprint(layout: _Layout) -> list:
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
        splits = [p for p in _entries(root) if p.is_dir()] if layout.kind == "split" else []
        paths = [root, *splits, *(c for s in splits or [root] for c in _entries(s) if c.is_dir())]
    out = []
    for p in paths:
        st = p.stat()
        out.append([str(p.relative_to(root)) if p != root else ".", st.st_size, st.st_mtime_ns])
    return out


def _build(layout: _Layout, image_size: int | None) -> dict:
    """Decode a source into the cache's dict: uint8 images, int64 labels, classes, mean/std."""
    if layout.kind in ("cifar10", "cifar100"):
        train_x, train_y, test_x, test_y, classes = _read_cifar(layout)
        if image_size is not None and image_size != train_x.shape[-1]:
            train_x, test_x = _resize_tensor(train_x, image_size), _resize_tensor(test_x, image_size)
    else:
        train_files, train_y, test_files, test_y, classes = _list_images(layout)
        print(
            f"resnet-search: decoding {len(train_files) + len(test_files)} images from {layout.root} "
            f"(once; cached in {cache_dir() / 'tensors'})",
            file=sys.stderr,
        )
        train_x = _to_nchw(_decode_images(train_files, image_size))
        test_x = _to_nchw(_decode_images(test_files, image_size))
        if test_files and train_x.shape[1:] != test_x.shape[1:]:
            raise UserError(
                f"train images are {train_x.shape[-1]}px but test images are {test_x.shape[-1]}px "
                f"in {layout.root}; set data.image_size to resize both on load"
            )
        train_y, test_y = torch.tensor(train_y, dtype=torch.int64), torch.tensor(test_y, dtype=torch.int64)
    mean, std = _channel_stats(train_x)
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


def _read_cifar(layout: _Layout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """Read torchvision's CIFAR python pickles directly: they already are uint8 ``N x 3072`` rows."""

    def load(name: str) -> dict:
        try:
            with open(layout.root / name, "rb") as f:
                return pickle.load(f, encoding="latin1")  # pickled by Python 2: bytes keys as str
        except (OSError, pickle.UnpicklingError, EOFError) as e:
            raise UserError(f"{layout.root / name}: not a readable CIFAR pickle ({e})") from e

    if layout.kind == "cifar10":
        label_key, train_names, meta = "labels", [f"data_batch_{i}" for i in range(1, 6)], load("batches.meta")
        classes = meta["label_names"]
    else:
        label_key, train_names, meta = "fine_labels", ["train"], load("meta")
        classes = meta["fine_label_names"]

    def split(names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batches = [load(n) for n in names]
        x = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32)
        y = np.concatenate([np.asarray(b[label_key]) for b in batches])
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.uint8)), torch.from_numpy(y.astype(np.int64))

    train_x, train_y = split(train_names)
    test_x, test_y = split(["test_batch" if layout.kind == "cifar10" else "test"])
    return train_x, train_y, test_x, test_y, list(classes)


def _list_images(layout: _Layout) -> tuple[list[Path], list[int], list[Path], list[int], list[str]]:
    """Image files and labels of a class-folder layout; a one-tree layout is split here.

    Classes are the training folders' names, sorted (as torchvision's ImageFolder).
    """

    def files(folder: Path) -> list[Path]:
        return sorted(p for p in _entries(folder) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())

    if layout.kind == "split":
        names = {p.name for p in _entries(layout.root)}
        train_dir, test_dir = layout.root / "train", layout.root / ("test" if "test" in names else "val")
        class_dirs = _class_dirs(train_dir)
        classes = [d.name for d in class_dirs]
        _require_two_classes(train_dir, classes)
        unknown = sorted({d.name for d in _class_dirs(test_dir)} - set(classes))
        if unknown:
            raise UserError(f"{test_dir} has classes that {train_dir} lacks: {', '.join(unknown[:5])}")
        train = [(f, i) for i, d in enumerate(class_dirs) for f in files(d)]
        test = [(f, classes.index(d.name)) for d in _class_dirs(test_dir) for f in files(d)]
    else:
        class_dirs = _class_dirs(layout.root)
        classes = [d.name for d in class_dirs]
        _require_two_classes(layout.root, classes)
        per_class = [files(d) for d in class_dirs]
        labels = torch.tensor([i for i, fs in enumerate(per_class) for _ in fs], dtype=torch.int64)
        flat = [f for fs in per_class for f in fs]
        keep, held = _stratified_split(labels, len(classes), TREE_TEST_FRACTION, TREE_TEST_SEED)
        train = [(flat[j], int(labels[j])) for j in sorted(torch.cat(keep).tolist())]
        test = [(flat[j], int(labels[j])) for j in sorted(torch.cat(held).tolist())]
    return [f for f, _ in train], [y for _, y in train], [f for f, _ in test], [y for _, y in test], classes


# --------------------------------------------------------------------------- decoding


def _decode_images(paths: Sequence[Path], image_size: int | None) -> np.ndarray:
    """Decode image files into one uint8 ``N x H x W x 3`` array, in a process pool when many.

    Processes, not threads: Pillow holds the GIL for much of a small JPEG's decode, and
    measured threads were slower than one core here.

    Raises:
        UserError: A file is not a readable image, or sizes differ without ``image_size``.
    """
    if not paths:
        side = image_size or 1
        return np.zeros((0, side, side, 3), dtype=np.uint8)
    chunks = [list(paths[i : i + DECODE_CHUNK]) for i in range(0, len(paths), DECODE_CHUNK)]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = min(len(chunks), cpus)
    if len(paths) < POOL_MIN_IMAGES or workers < 2:
        arrays = [_decode_chunk(c, image_size) for c in chunks]
    else:
        import multiprocessing

        # fork: the workers need only Pillow and numpy, and start in milliseconds.
        ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            arrays = list(pool.map(_decode_chunk, chunks, [image_size] * len(chunks)))
    # Each chunk checked its own images; chunks may still disagree with each other.
    for chunk, array in zip(chunks, arrays):
        if array.shape[1:] != arrays[0].shape[1:]:
            raise UserError(
                f"images differ in size ({chunks[0][0]} is {arrays[0].shape[2]}x{arrays[0].shape[1]}, "
                f"{chunk[0]} is {array.shape[2]}x{array.shape[1]}); set data.image_size to resize them on load"
            )
    return np.concatenate(arrays)


def _decode_chunk(paths: Sequence[Path], image_size: int | None) -> np.ndarray:
    """Decode a few images (one pool task); see :func:`_decode_images`."""
    from PIL import Image, ImageOps

    out = []
    for path in paths:
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")  # grayscale, palette, RGBA, CMYK -> RGB (alpha dropped)
                if image_size is not None:
                    # Shorter side to image_size, centre crop; Pillow's resampling is antialiased.
                    im = ImageOps.fit(im, (image_size, image_size), Image.Resampling.BICUBIC)
                arr = np.asarray(im, dtype=np.uint8)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise UserError(f"{path}: not a readable image ({e})") from None
        if image_size is None and (arr.shape[0] != arr.shape[1] or (out and arr.shape != out[0].shape)):
            what = f"{paths[0]} is {out[0].shape[1]}x{out[0].shape[0]}, " if out else ""
            raise UserError(
                f"images differ in size or are not square ({what}{path} is {arr.shape[1]}x{arr.shape[0]}); "
                "set data.image_size to resize them on load"
            )
        out.append(arr)
    return np.stack(out)


def _to_nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def _resize_tensor(images: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bilinear resize of uint8 images, in chunks to bound the float copy."""
    out = [
        F.interpolate(c.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        .round_()
        .clamp_(0, 255)
        .to(torch.uint8)
        for c in images.split(4096)
    ]
    return torch.cat(out)


def _channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std on the [0, 1] scale, accumulated in float64 chunk by chunk."""
    if images.shape[0] == 0:
        return [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    for chunk in images.split(4096):
        x = chunk.to(torch.float64)
        total += x.sum(dim=(0, 2, 3))
        squares += x.square().sum(dim=(0, 2, 3))
    n = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / n
    std = (squares / n - mean.square()).clamp_min(0).sqrt()
    return (mean / 255).tolist(), (std / 255).tolist()


# --------------------------------------------------------------------------- splits


def _stratified_split(
    labels: torch.Tensor, num_classes: int, fraction: float, seed: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per class, a seeded shuffle of its indices cut into (kept, held out ``fraction``).

    Returned per class and in shuffled order, so a balanced subset is a prefix of each
    class: a smaller subset is always inside a larger one.
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


def _balanced(per_class: list[torch.Tensor], subset: int | None, key: str, classes: Sequence[str]) -> torch.Tensor:
    """Indices of ``subset // num_classes`` images of every class (all images if ``subset`` is None).

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
    for name, idx in zip(classes, per_class):
        if len(idx) < per:
            raise UserError(f"data.{key} {subset} needs {per} images per class but class {name!r} has {len(idx)}")
    return torch.from_numpy(np.sort(torch.cat([idx[:per] for idx in per_class]).numpy()))


def _take(images: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor) -> TensorSplit:
    # Sorted indices keep source order; index_select copies out of the memory-mapped cache.
    return TensorSplit(images.index_select(0, idx), labels.index_select(0, idx))


# --------------------------------------------------------------------------- augmentation


def augment_batch(images: torch.Tensor, augment: Augment, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop with padding, horizontal flip and cutout for a whole batch at once.

    Crop and flip are one gather: each output pixel reads the source pixel at a per-sample
    row/column offset (reflected or out of range for zero padding), with the columns of
    flipped samples reversed. The padded batch is never built. Random numbers are drawn on
    the generator's device, so results depend only on the generator's state.

    Args:
        images: ``N x C x H x W`` uint8 or float images on any device.
        augment: Padding (``crop_padding``, ``padding_mode``), ``flip`` and ``cutout`` size.
        generator: Source of randomness (CPU or the images' device); the global RNG if None.

    Returns:
        Augmented images, same shape, dtype and device (the input itself if ``augment``
        does nothing). Cutout fills with 0 (black for uint8, the mean once normalized).
    """
    n, _, h, w = images.shape
    pad, size = augment.crop_padding, augment.cutout
    if n == 0 or (pad == 0 and not augment.flip and size == 0):
        return images
    device = images.device
    gen_device = generator.device if generator is not None else device

    def randint(high: int) -> torch.Tensor:
        return torch.randint(0, high, (n, 1), generator=generator, device=gen_device).to(device)

    # Draw everything up front, in a fixed order: chunking below cannot change the result.
    dy, dx = (randint(2 * pad + 1) - pad, randint(2 * pad + 1) - pad) if pad else (None, None)
    flip = randint(2).bool() if augment.flip else None
    cy, cx = (randint(h), randint(w)) if size else (None, None)

    out = images
    if pad:
        rows, row_ok = _shifted(torch.arange(h, device=device) + dy, h, augment.padding_mode)
        cols, col_ok = _shifted(torch.arange(w, device=device) + dx, w, augment.padding_mode)
        if flip is not None:
            cols, col_ok = torch.where(flip, cols.flip(-1), cols), torch.where(flip, col_ok.flip(-1), col_ok)
        out = _gather(images, rows, cols)
        if augment.padding_mode == "zeros":
            out = out.masked_fill(~(row_ok[:, None, :, None] & col_ok[:, None, None, :]), 0)
    elif flip is not None:
        out = torch.where(flip.view(n, 1, 1, 1), images.flip(-1), images)
    if size:
        # DeVries & Taylor: a size x size square centred anywhere, clipped at the borders.
        ys, xs = torch.arange(h, device=device), torch.arange(w, device=device)
        in_y = (ys >= cy - size // 2) & (ys < cy - size // 2 + size)
        in_x = (xs >= cx - size // 2) & (xs < cx - size // 2 + size)
        out = out.masked_fill(in_y[:, None, :, None] & in_x[:, None, None, :], 0)
    return out


def _shifted(index: torch.Tensor, length: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Map shifted indices back into ``[0, length)``: mirrored (reflect) or clamped + a validity mask."""
    valid = (index >= 0) & (index < length)
    if mode == "reflect":
        # reflect as torch.nn.functional.pad: -1 -> 1, length -> length - 2 (edge not repeated)
        index = index.abs()
        index = torch.where(index > length - 1, 2 * (length - 1) - index, index)
        return index.clamp(0, length - 1), torch.ones_like(valid)
    return index.clamp(0, length - 1), valid


def _gather(images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``out[n, c, i, j] = images[n, c, rows[n, i], cols[n, j]]`` as one flat gather per chunk.

    Measured 2x faster on CPU than a row gather followed by a column gather, and 4x faster
    than advanced indexing. The int64 index is ``N x H x W`` (shared by the channels through
    ``expand``), so chunks bound it to 64 MB however large the batch.
    """
    n, c, h, w = images.shape
    flat = images.reshape(n, c, h * w)
    out = torch.empty_like(images)
    step = max(1, (1 << 23) // (h * w))
    for s in range(0, n, step):
        e = min(n, s + step)
        index = (rows[s:e, :, None] * w + cols[s:e, None, :]).view(e - s, 1, h * w).expand(e - s, c, h * w)
        out[s:e] = flat[s:e].gather(2, index).view(e - s, c, h, w)
    return out


def normalize(
    images: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> torch.Tensor:
    """``(x / 255 - mean) / std`` per channel, as one multiply-add.

    Args:
        images: ``[N x] C x H x W`` uint8 (0..255), or float already on the [0, 1] scale.
        mean: Per-channel mean on the [0, 1] scale; a float32 tensor on ``images``' device
            saves a host-to-device copy per call (which on CUDA waits for the GPU).
        std: Per-channel std on the [0, 1] scale, likewise.
        dtype: Output dtype; the arithmetic is float32 either way (bf16 would round 0..255).
        channels_last: Return a 4-D result in ``channels_last`` memory format (faster convs).

    Returns:
        Normalized float images on the input's device.
    """
    device = images.device
    m = torch.as_tensor(mean, dtype=torch.float32, device=device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=device).view(-1, 1, 1)
    scale = 1 / (s * 255) if images.dtype == torch.uint8 else 1 / s
    x = torch.addcmul(-m / s, images.to(torch.float32), scale)  # x * scale - mean / std
    x = x.to(dtype)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


# --------------------------------------------------------------------------- helpers


def _digest(parts: list) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _slug(path: Path) -> str:
    """A file-name-safe short name for a source, so cache files can be told apart by eye."""
    name = path.name
    for suffix in (*ARCHIVE_SUFFIXES, ".tar"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40] or "data"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (no-op where ``fcntl`` is missing, i.e. Windows)."""
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
