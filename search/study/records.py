"""What a study remembers besides its trials: the data it searched, and the model folders
that hold the weights of its best trials."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import optuna

from search.config import Spec
from search.study.keys import DATA, MODELS

if TYPE_CHECKING:  # torch loads only where data is: export and the studies table stay light
    from search.data import ImageDataset
    from search.data.fingerprint import DataRecord


def record_data(study: optuna.Study, record: DataRecord) -> DataRecord | None:
    """Store the data the study searches; returns the record it replaces when that one differs."""
    before = recorded_data(study)
    study.set_user_attr(DATA, record.as_dict())
    return before if before is not None and before.differences(record) else None


def recorded_data(study: optuna.Study) -> DataRecord | None:
    """The data the study searched, as ``run`` recorded it; None for studies without a record."""
    from search.data.fingerprint import DataRecord

    return DataRecord.from_dict(study.user_attrs.get(DATA))


def study_data(
    study: optuna.Study,
    spec: Spec,
    data_dir: str | Path | None,
    *,
    download: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[ImageDataset, DataRecord]:
    """The study's data: ``data_dir`` if given, else the data ``run`` recorded, checked unchanged.

    Returns:
        The dataset and its record as loaded now.

    Raises:
        UserError: No ``data_dir`` and the recorded data moved or changed (see
            :func:`search.data.fingerprint.load_recorded`), or the data cannot be found.
    """
    from search.data.fingerprint import load_recorded

    owner = f"study {study.study_name}"
    return load_recorded(spec.data, recorded_data(study), data_dir, owner=owner, download=download, log=log)


def kept_models(study: optuna.Study) -> dict[int, Path]:
    """Trial number -> the model folder holding that trial's trained weights (``run --keep``)."""
    stored = study.user_attrs.get(MODELS) or {}
    return {int(number): Path(folder) for number, folder in stored.items()}


def set_kept_models(study: optuna.Study, models: dict[int, Path]) -> None:
    """Store which trials' model folders are kept (replacing the earlier mapping)."""
    study.set_user_attr(MODELS, {str(number): str(folder) for number, folder in sorted(models.items())})
