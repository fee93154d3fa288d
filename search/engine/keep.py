"""The weights of a search's best trials (``run --keep K``), through Ray Tune's checkpoints.

A trial that finishes sends its model folder with its final report as a Tune checkpoint
(:func:`~search.engine.trainable.report_with_model`); Ray copies it from the node that
trained it into the run's storage path (``studies/<study>/ray``), keeping one per trial
(``CheckpointConfig(num_to_keep=1)``). On the driver, :class:`ModelKeeper` moves each
arrival to ``studies/<study>/models/trial_<N>`` and, whenever a trial ends, keeps the
folders of the study's best K complete trials (by the first objective) and deletes the
others: a trial that drops out of the top K loses its weights. The study records which
folders it keeps (:data:`~search.study.keys.MODELS`).

Ray needs its storage path reachable from every node (a shared filesystem on a real
multi-node cluster, as Ray documents); a node that cannot reach it still reports its
result, and the driver says that trial's weights were lost.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import optuna
from optuna.trial import TrialState

from search.config import Spec
from search.data.fingerprint import DataRecord
from search.engine.events import Log, ignore
from search.engine.trainable import TrialOutput
from search.study.records import kept_models, record_data, set_kept_models
from search.study.trials import sort_sign

DEFAULT_KEEP = 3
MODELS_FOLDER = "models"


class ModelKeeper:
    """The driver's side of ``--keep``: receives trials' model folders and keeps the best K.

    Args:
        study: The study (only the driver writes to it).
        spec: The run's spec (sent to the trials for their ``config.yaml``).
        out_dir: The study's folder; model folders go to ``<out_dir>/models``.
        keep: How many of the best trials keep their weights; 0: trials send none (and the
            folders kept by earlier runs stay as they are).
        data: The record of the run's data (for each ``model.json``).
        log: Receives a line when a trial's weights were lost.
    """

    def __init__(
        self, study: optuna.Study, spec: Spec, out_dir: Path, keep: int, data: DataRecord | None, log: Log = ignore
    ) -> None:
        self.study = study
        self.keep = keep
        self.folder = out_dir / MODELS_FOLDER
        self.log = log
        self.output = TrialOutput(spec=spec, data=data, cwd=os.getcwd(), keep=keep > 0)

    def arrived(self, number: int, checkpoint: str) -> Path:
        """A trial's model folder reached the storage (at ``checkpoint``): move it to the study's
        models folder and record it.

        Returns:
            Where it is now.
        """
        target = self.folder / f"trial_{number}"
        self.folder.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)  # a stale folder of an earlier attempt at this trial
        shutil.move(checkpoint, target)
        models = kept_models(self.study)
        models[number] = target
        set_kept_models(self.study, models)
        return target

    def lost(self, number: int, reason: str) -> None:
        self.log(f"trial {number}: its weights could not be kept ({reason})")

    def settle(self) -> list[int]:
        """Keep the model folders of the best K complete trials, delete the others' (those of
        trials still running wait for their outcome).

        Returns:
            The trials whose folders were deleted.
        """
        if self.keep < 1:
            return []
        models = kept_models(self.study)
        states = {t.number: t for t in self.study.get_trials(deepcopy=False) if t.number in models}
        complete = [t for t in states.values() if t.state == TrialState.COMPLETE]
        best = sorted(complete, key=lambda t: (sort_sign(self.study) * t.values[0], t.number))[: self.keep]
        keepers = {t.number for t in best}
        dropped = [n for n in models if n not in keepers and (n not in states or states[n].state != TrialState.RUNNING)]
        for number in dropped:
            shutil.rmtree(models.pop(number), ignore_errors=True)
        if dropped:
            set_kept_models(self.study, models)
        return dropped


def record_run_data(study: optuna.Study, record: DataRecord, log: Log) -> DataRecord:
    """Record the run's data on the study (``retrain``, ``report``, ``evaluate`` and the next
    ``run`` find it there); data that differs from what an earlier run of the study recorded
    is said in one line."""
    replaced = record_data(study, record)
    if replaced is not None:
        log(
            f"note: study {study.study_name} was searched on other data before "
            f"({'; '.join(replaced.differences(record))}); its record now names {record.location}"
        )
    return record
