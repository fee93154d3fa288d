"""``resnet-search studies``: every study of a storage (or of ``studies/*.db``), one line each."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.config import UserError
from search.config.secrets import mask_secrets
from search.study.keys import SPEC_TEXT, STATUSES, metric_names, status_counts
from search.study.storage import STUDIES_DIR, open_existing_storage


@dataclass(frozen=True)
class StudyRow:
    """One line of ``resnet-search studies``."""

    storage: str  # masked
    name: str
    counts: dict[str, int]
    best: str
    started: dt.datetime | None
    last: dt.datetime | None
    note: str = ""  # what is odd about the study, and what to do


def list_studies(storage: str | None = None) -> list[StudyRow]:
    """Every study in a storage, or in every ``studies/*.db`` when no storage is given.

    Raises:
        UserError: the storage cannot be opened, or no storage was given and none found.
    """
    if storage:
        urls = [storage]
    else:
        urls = [f"sqlite:///{path}" for path in sorted(STUDIES_DIR.glob("*.db"))]
        if not urls:
            raise UserError(f"no studies/*.db under {Path.cwd()}; pass --storage URL")
    rows = []
    for url in urls:
        backend = open_existing_storage(url)
        for name in optuna.study.get_all_study_names(backend):
            study = optuna.load_study(study_name=name, storage=backend)
            trials = study.get_trials(deepcopy=False)
            starts = [t.datetime_start for t in trials if t.datetime_start]
            ends = [t.datetime_complete for t in trials if t.datetime_complete]
            rows.append(
                StudyRow(
                    mask_secrets(url),
                    name,
                    status_counts(trials),
                    _best_text(study, trials),
                    min(starts, default=None),
                    max(ends, default=None),
                    "" if SPEC_TEXT in study.user_attrs else HALF_CREATED,
                )
            )
    return rows


HALF_CREATED = (
    "no stored spec: its driver was stopped while creating it (the next `resnet-search run` of its spec "
    "completes it), or it was not made by resnet-search run"
)


def _best_text(study: optuna.Study, trials: Sequence[FrozenTrial]) -> str:
    if not any(t.state == TrialState.COMPLETE for t in trials):
        return "-"
    if len(study.directions) > 1:
        return f"{len(study.best_trials)} on the Pareto front"
    return f"{metric_names(study)[0]} {study.best_value:.4g} (trial {study.best_trial.number})"


def studies_table(rows: Sequence[StudyRow]) -> str:
    """``rows`` as a fixed-width text table."""

    def when(value: dt.datetime | None) -> str:
        return value.strftime("%Y-%m-%d %H:%M") if value else "-"

    shown = [status for status in STATUSES if status != "waiting"]  # enqueued trials are not a state to watch
    header = ["storage", "study", *shown, "best", "started", "last"]
    lines = [
        [r.storage, r.name, *(str(r.counts[s]) for s in shown), r.best, when(r.started), when(r.last)] for r in rows
    ]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines)]
    table = "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in [header, *lines])
    notes = [f"note: study {r.name} in {r.storage}: {r.note}" for r in rows if r.note]
    return "\n".join([table, *notes])
