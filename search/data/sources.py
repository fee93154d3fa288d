"""Finding the dataset: a location the user named, else the user cache, else a CIFAR download."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from search.config import DataConfig, UserError
from search.data.archives import materialize
from search.data.cache import cache_dir, locked
from search.data.layout import (
    ARCHIVE_SUFFIXES,
    EXPECTED_LAYOUT,
    TORCHVISION_FOLDERS,
    Layout,
    describe,
)
from search.data.readers import find_source

# The library names its parameter (``data_dir=``); the CLI shows it as its flag (``--data-dir``).
POINT_AT_DATA = "point at local data with data_dir=PATH, data.root or the RESNET_SEARCH_DATA variable"


def locate(config: DataConfig, data_dir: str | Path | None = None, download: bool = True) -> Layout:
    """Find the dataset: the first named location wins, else the cache, else a download.

    Order: ``data_dir`` (``--data-dir``), ``config.root``, ``$RESNET_SEARCH_DATA``, then the
    user cache. A location the user named must hold data: it is never a download target.

    Args:
        config: The data section of the spec.
        data_dir: The ``data_dir=`` argument (``--data-dir``), if given.
        download: Whether CIFAR-10/100 may be downloaded into the cache when found nowhere.

    Returns:
        The layout found (an archive is not extracted yet).

    Raises:
        UserError: A named location is missing or holds no dataset, the data is the wrong
            CIFAR, or nothing was found and downloading is off or fails.
    """
    layout = _in_named_location(config, data_dir)
    if layout is None:
        layout = _in_cache(config)
    if layout is not None:
        return _check_kind(layout, config.dataset)

    cache = cache_dir()
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
    return materialize(locate(config, data_dir, download)).root


def _in_named_location(config: DataConfig, data_dir: str | Path | None) -> Layout | None:
    """The dataset at the first location the user named, ``None`` if they named none.

    Raises:
        UserError: The first named location is missing or holds no dataset.
    """
    named = [
        (data_dir, "data_dir="),
        (config.root, "data.root "),
        (os.environ.get("RESNET_SEARCH_DATA"), "RESNET_SEARCH_DATA "),
    ]
    for value, how in named:
        if value is None or str(value) == "":
            continue
        path = Path(value).expanduser()
        if not path.exists():
            raise UserError(f"{how}{path} does not exist; {EXPECTED_LAYOUT}")
        layout = find_source(path)
        if layout is None:
            raise UserError(f"{how}{path} holds no dataset ({describe(path)}); {EXPECTED_LAYOUT}")
        return layout
    return None


def _in_cache(config: DataConfig) -> Layout | None:
    """The dataset in the user cache: torchvision's download, or a folder or archive named after it."""
    cache = cache_dir()
    candidates = [cache / TORCHVISION_FOLDERS[config.dataset]] if config.dataset in TORCHVISION_FOLDERS else []
    candidates.append(cache / config.dataset)  # a folder or archive the user dropped into the cache
    candidates += [cache / f"{config.dataset}{suffix}" for suffix in ARCHIVE_SUFFIXES]
    for candidate in candidates:
        layout = find_source(candidate) if candidate.exists() else None
        if layout is not None:
            return layout
    return None


def _check_kind(layout: Layout, dataset: str) -> Layout:
    """Refuse CIFAR-10 pickles for a cifar100 spec and vice versa; class folders fit any name."""
    if layout.kind in ("cifar10", "cifar100") and dataset in ("cifar10", "cifar100") and layout.kind != dataset:
        raise UserError(f"{layout.root} holds {layout.kind} pickles but data.dataset is {dataset}")
    return layout


def _download(dataset: str, cache: Path) -> Layout:
    """Download CIFAR-10/100 into the cache with torchvision's downloader, announced on stderr.

    Raises:
        UserError: The download failed, whatever the reason.
    """
    import torchvision  # imported here: only a download needs it

    cls = torchvision.datasets.CIFAR10 if dataset == "cifar10" else torchvision.datasets.CIFAR100
    print(f"resnet-search: downloading {dataset} from {cls.url} into {cache}", file=sys.stderr)
    cache.mkdir(parents=True, exist_ok=True)
    try:
        # torchvision prints progress on stdout, which belongs to our results: send it to stderr.
        with locked(cache / ".download.lock"), contextlib.redirect_stdout(sys.stderr):
            cls(str(cache), train=True, download=True)
    except Exception as e:  # noqa: BLE001 - URLError, OSError, RuntimeError(checksum): all "no data"
        raise UserError(f"could not download {dataset} from {cls.url} into {cache} ({e}); {POINT_AT_DATA}") from e
    return Layout(dataset, cache / TORCHVISION_FOLDERS[dataset])
