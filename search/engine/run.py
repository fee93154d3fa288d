"""A search, start to end: :func:`run_search` checks its input, starts Ray, opens the study
under the driver lease, recovers what an earlier driver left running, runs Tune until the
study has its trials, and returns a :class:`SearchSummary`.

A rerun of the same spec and storage continues the study: trials a killed driver left
RUNNING are marked FAIL and their parameters enqueued again. One driver runs a study at a
time (:class:`~search.study.lease.DriverLease`), and its storage waits out a database that
goes away for a while (:class:`~search.study.retrying.RetryingStorage`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from search.config import Spec, UserError
from search.data import load_dataset
from search.engine.bridge import StudyBridge
from search.engine.checks import (
    absolute_data_paths,
    check_resources,
    check_space_fits,
    check_weights,
    check_writable,
    require_space,
)
from search.engine.ray_runtime import logs_to, ray_session
from search.engine.samplers import create_study
from search.engine.trainable import run_trial
from search.engine.types import Log, Trainable
from search.study.lease import DriverLease
from search.study.retrying import RetryingStorage
from search.study.schema import REJECTED, is_finished
from search.study.storage import default_storage, mask_password, open_storage, study_dir
from search.study.trials import recover_interrupted, sort_sign


@dataclass(frozen=True)
class SearchSummary:
    """What a run did, and the top trials of the study."""

    study_name: str
    storage: str
    finished: int
    rejected: int
    wall_time_s: float
    trial_time_s: float
    slots: int
    top: tuple[optuna.trial.FrozenTrial, ...]
    interrupted: bool = False

    @property
    def overhead(self) -> float:
        """Share of the trial slots' wall time not spent training (Ray, start-up, sampling, recording)."""
        capacity = self.wall_time_s * self.slots
        return 1 - self.trial_time_s / capacity if capacity else 0.0


def run_search(
    spec: Spec,
    *,
    storage: str | None = None,
    data_dir: str | None = None,
    address: str | None = None,
    download: bool = True,
    log: Log = print,
    trainable: Trainable = run_trial,
) -> SearchSummary:
    """Run (or continue) the spec's study to ``n_trials`` finished trials.

    Everything that can be wrong with the input is checked before the study is written
    to: the space, pretrained weights, the storage, the study's folder, the data, the
    budget, and the cluster's resources.

    Args:
        spec: A parsed spec with a search space.
        storage: An Optuna storage URL; default ``sqlite:///studies/<name>.db``.
        data_dir: Data location (beats ``data.root``).
        address: A Ray cluster to join (``ray start --head``); default: a local Ray of our own.
        download: Whether a known dataset found nowhere may be downloaded.
        log: Where progress lines go.
        trainable: The Tune trainable (default :func:`run_trial`; tests wrap it to inject faults).

    Returns:
        A summary of the run.

    Raises:
        UserError: bad storage, data, resources, a space none of whose configs fits the
            budget, or another driver running the same study.
    """
    require_space(spec)
    check_weights(spec)
    storage_url = storage or default_storage(spec.study.name)
    opened = RetryingStorage(open_storage(storage_url), on_retry=log)  # a wrong URL or password fails here
    out_dir = study_dir(spec.study.name).resolve()
    check_writable(out_dir)
    spec, data_dir = absolute_data_paths(spec, data_dir)
    data = load_dataset(spec.data, data_dir=data_dir, download=download)  # once, before any trial: builds the cache
    check_space_fits(spec, data.image_size)
    with logs_to(out_dir / "ray.log"), ray_session(address) as cluster:
        use_gpu = check_resources(spec, cluster, log)
        study = create_study(spec, opened)
        with DriverLease(study):
            recovered = recover_interrupted(study)
            if recovered:
                log(f"{recovered} trial(s) left running by an earlier driver were marked FAIL and enqueued again")
            bridge = StudyBridge(
                study,
                spec,
                image_size=data.image_size,
                data_dir=data_dir,
                use_gpu=use_gpu,
                threads=max(1, int(spec.resources.cpu)),
                log=log,
            )
            log(
                f"study {spec.study.name} in {mask_password(storage_url)}: "
                f"{bridge.finished_before}/{spec.study.n_trials} trials finished before this run"
            )
            start = time.monotonic()
            try:
                _tuner(bridge, out_dir, trainable).fit()  # returns early, not raising, on Ctrl-C
            finally:
                stopped = bridge.close_open_trials("the run was stopped before the trial finished")
            wall = time.monotonic() - start
    interrupted = bool(stopped) or (bridge.remaining > 0 and bridge.stop_reason is None)
    if bridge.stop_reason:
        raise UserError(f"{spec.source}: budget: {bridge.stop_reason}")
    return _summary(study, storage_url, bridge, wall, interrupted)


def _tuner(bridge: StudyBridge, out_dir: Path, trainable: Trainable) -> Any:
    """A Tune run whose trials the bridge samples, prunes and records."""
    from ray import tune

    from search.engine.adapters import OptunaPruningScheduler, OptunaSearcher  # imports Ray

    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # the study records results
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no experiment banner: the progress lines are ours
    resources = bridge.spec.resources
    return tune.Tuner(
        tune.with_resources(trainable, {"cpu": resources.cpu, "gpu": resources.gpu if bridge.use_gpu else 0}),
        tune_config=tune.TuneConfig(
            search_alg=OptunaSearcher(bridge),
            scheduler=OptunaPruningScheduler(bridge),
            num_samples=-1,  # until the searcher says FINISHED
            max_concurrent_trials=resources.max_concurrent,
            # A worker (with torch imported) serves trial after trial: start-up is paid
            # once per worker, not once per trial. A stopped trial's worker is reset.
            reuse_actors=True,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=str(out_dir / "ray"),
            verbose=0,
            # A trial whose worker died is started again from scratch this many times
            # before it is recorded FAIL (its epoch reports are not repeated in the study).
            failure_config=tune.FailureConfig(max_failures=resources.max_failures),
        ),
    )


def _summary(
    study: optuna.Study, storage_url: str, bridge: StudyBridge, wall: float, interrupted: bool
) -> SearchSummary:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    return SearchSummary(
        study_name=study.study_name,
        storage=mask_password(storage_url),
        finished=sum(is_finished(t) for t in trials),
        rejected=sum(REJECTED in t.user_attrs for t in trials),
        wall_time_s=wall,
        trial_time_s=bridge.train_seconds,
        slots=bridge.spec.resources.max_concurrent,
        interrupted=interrupted,
        top=tuple(sorted(complete, key=lambda t: sort_sign(study) * t.values[0])[:5]),
    )


def _trial_name(trial: Any) -> str:
    return f"trial_{trial.config['job'].number}"
