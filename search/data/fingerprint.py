"""What data a study searched or a model trained on, recorded so that it can be found and
checked again: where it was, its classes, its images per split and a hash of the images.

A study (``run``) and a model folder (``model.json``) keep a :class:`DataRecord`; ``retrain``,
``report`` and ``evaluate`` load the recorded data when no ``--data-dir`` is given, and
refuse data that moved or changed (:func:`load_recorded`): never a silent run on other data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.config import DataConfig, UserError
from search.data.load import load_dataset
from search.data.sources import locate
from search.data.splits import ImageDataset

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DataRecord:
    """A dataset as it was used.

    ``location`` is the source as located (a folder or an archive, an absolute path);
    ``counts`` the images of each split after ``data``'s split and subsets; ``sha256`` a
    hash of every split's decoded uint8 images and labels, in order.
    """

    location: str
    classes: tuple[str, ...]
    counts: tuple[int, int, int]  # train, val, test
    image_size: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form, as a study and ``model.json`` store it."""
        return {
            "location": self.location,
            "classes": list(self.classes),
            "counts": dict(zip(SPLITS, self.counts)),
            "image_size": self.image_size,
            "sha256": self.sha256,
        }

    @classmethod
    def from_dict(cls, stored: Any) -> DataRecord | None:
        """The record :meth:`as_dict` wrote; None for anything else (an older study, no record)."""
        try:
            return cls(
                location=str(stored["location"]),
                classes=tuple(str(c) for c in stored["classes"]),
                counts=tuple(int(stored["counts"][s]) for s in SPLITS),  # type: ignore[arg-type]
                image_size=int(stored["image_size"]),
                sha256=str(stored["sha256"]),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def differences(self, other: DataRecord) -> list[str]:
        """What differs in ``other`` (another load of the data), in words; empty when nothing does."""
        found = []
        if other.classes != self.classes:
            found.append(f"classes {', '.join(other.classes)}, recorded {', '.join(self.classes)}")
        for split, theirs, mine in zip(SPLITS, other.counts, self.counts):
            if theirs != mine:
                found.append(f"{split}: {theirs:,} images, recorded {mine:,}")
        if other.image_size != self.image_size:
            found.append(f"images of {other.image_size}px, recorded {self.image_size}px")
        if not found and other.sha256 != self.sha256:
            found.append("the same counts but other images (their hash differs)")
        return found


def fingerprint(data: ImageDataset, location: str | Path) -> DataRecord:
    """The :class:`DataRecord` of a loaded dataset found at ``location``.

    Hashing reads every image once (about 0.2 s for CIFAR-10's 60,000).
    """
    digest = hashlib.sha256()
    for split in (data.train, data.val, data.test):
        for block in split.image_blocks():  # the same bytes as the whole split's, a block in memory at a time
            digest.update(block.contiguous().numpy().data)
        digest.update(split.labels.contiguous().numpy().data)
    return DataRecord(
        location=str(Path(location).resolve()),
        classes=tuple(data.classes),
        counts=(len(data.train), len(data.val), len(data.test)),
        image_size=data.image_size,
        sha256=digest.hexdigest(),
    )


def source_location(config: DataConfig, data_dir: str | Path | None) -> Path:
    """Where the data that :func:`load_dataset` just loaded for ``config`` and ``data_dir`` is."""
    return locate(config, data_dir, download=False).root.resolve()


def load_recorded(
    config: DataConfig,
    record: DataRecord | None,
    data_dir: str | Path | None,
    *,
    owner: str,
    download: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[ImageDataset, DataRecord]:
    """Load the data of ``owner`` (a study, a model): ``data_dir`` if given, else the recorded data.

    Recorded data that moved or changed is refused; data the user named with ``--data-dir``
    is loaded as asked, with one line on what differs from the record.

    Args:
        config: The data section (split, subsets, image size).
        record: What ``owner`` recorded; None for owners without a record (older studies):
            then the data is looked for as :func:`load_dataset` does.
        data_dir: The ``--data-dir`` flag.
        owner: Names the owner in messages (``study smoke``, ``model runs/x``).
        download: Whether a known dataset found nowhere may be downloaded.
        log: Receives the line on data that differs from the record.

    Returns:
        The dataset and its record as loaded now.

    Raises:
        UserError: The recorded data is gone, unreadable or differs (the message names the
            recorded location, what differs, and ``data_dir=`` as the way out).
    """
    if data_dir is not None or record is None:
        data = load_dataset(config, data_dir=data_dir, download=download)
        actual = fingerprint(data, source_location(config, data_dir))
        differs = record.differences(actual) if record is not None else []
        if differs:
            log(f"note: {actual.location} is not the data {owner} used ({'; '.join(differs)}); going on as asked")
        return data, actual
    where = record.location
    way_out = "pass data_dir=D to use data elsewhere"
    if not Path(where).exists():
        raise UserError(f"{owner} used the data at {where}, which no longer exists; {way_out}")
    try:
        data = load_dataset(config, data_dir=where, download=False)
    except UserError as error:
        raise UserError(f"{owner} used the data at {where}, which cannot be loaded now ({error}); {way_out}") from None
    actual = fingerprint(data, where)
    differs = record.differences(actual)
    if differs:
        raise UserError(
            f"the data at {where} is not what {owner} used ({'; '.join(differs)}); "
            "pass data_dir=D to use it, or other data, knowingly"
        )
    return data, actual
