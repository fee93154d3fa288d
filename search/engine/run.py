"""A search, start to end: :func:`run_search` checks its input, starts Ray, opens the study
under the driver lease, recovers what an earlier driver left running, runs Tune until the
study has its trials, and returns a :class:`SearchSummary`.

A rerun of the same spec and storage continues the study: trials a killed driver left
RUNNING are marked FAIL and their parameters enqueued again, as are those an earlier run's
time budget stopped. Before the first trial the run says what it will do
(:mod:`~search.engine.preflight`); its observers (:mod:`~search.engine.events`: the live
view, plain progress lines, TensorBoard, MLflow) hear of every trial. One driver runs a study at a
time (:class:`~search.study.lease.DriverLease`), and its storage waits out a database that
goes away for a while (:class:`~search.study.retrying.RetryingStorage`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from search.config import InvalidValue, Spec, UserError
from search.config.units import format_duration
from search.data import ImageDataset, load_dataset
from search.engine.bridge import StudyBridge
from search.engine.checks import (
    absolute_data_paths,
    check_resources,
    check_space_fits,
    check_weights,
    check_writable,
    require_space,
    trial_image_size,
    with_device,
)
from search.engine.events import RunEnd, RunObserver, RunStart
from search.engine.keep import DEFAULT_KEEP, ModelKeeper, record_run_data
from search.engine.preflight import preflight, slots
from search.engine.progress import PlainProgress
from search.engine.ray_runtime import logs_to, ray_session
from search.engine.samplers import create_study, max_epochs
from search.engine.tracking import tracking_observers
from search.engine.trainable import run_trial
from search.engine.types import Log, Trainable
from search.study.lease import DriverLease
from search.study.records import kept_models
from search.study.retrying import RetryingStorage
from search.study.schema import REJECTED, is_finished
from search.study.storage import default_storage, mask_password, open_storage, storage_gone_check, study_dir
from search.study.trials import recover_interrupted, requeue_stopped, sort_sign


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
    ended_by: str | None = None  # why the run ended before its trials (the time budget)

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
    timeout: float | str | None = None,
    n_trials: int | None = None,
    observers: Sequence[RunObserver] | None = None,
    keep: int = DEFAULT_KEEP,
    device: str | None = None,
) -> SearchSummary:
    """Run (or continue) the spec's study to ``n_trials`` finished trials, or until its time budget.

    Everything that can be wrong with the input is checked before the study is written to: the space, pretrained
    weights, the storage, the study's folder, the data, the budget, and the cluster's resources.

    Args:
        spec: A parsed spec with a search space.
        storage: An Optuna storage URL; default ``sqlite:///studies/<name>.db``.
        data_dir: Data location (beats ``data.root``).
        address: A Ray cluster to join (``ray start --head``); default: a local Ray of our own.
        download: Whether a known dataset found nowhere may be downloaded.
        log: Where progress lines go.
        trainable: The Tune trainable (default :func:`run_trial`; tests wrap it to inject faults).
        timeout: A time budget from now (seconds, or ``"90s"``, ``"30m"``, ``"2h"``, ``"1d"``; beats ``study.timeout``):
            no trial starts after it and running trials stop at their next epoch report (FAIL, ``interrupted``).
        n_trials: Finished trials the study should have (beats ``study.n_trials``).
        observers: Told of every trial's start, epoch reports and end; default: plain
            progress lines to ``log``. The trackers of the spec's ``tracking`` are added.
        keep: The study's best ``keep`` complete trials keep their weights, as model folders
            in ``studies/<study>/models`` (:mod:`~search.engine.keep`); 0: trials send none.
        device: ``cpu`` or ``cuda`` (required) for every trial, whatever ``resources.gpu`` says (:func:`with_device`).

    Returns:
        A summary of the run.

    Raises:
        UserError: bad storage, data, resources, a bad timeout, a space none of whose configs
            fits the budget, a tracker whose extra is not installed, or another driver
            running the same study.
    """
    started = time.monotonic()
    spec = with_device(with_budgets(spec, timeout, n_trials), device)
    require_space(spec)
    check_weights(spec)
    told = [*(observers if observers is not None else [PlainProgress(log)]), *tracking_observers(spec)]
    storage_url = storage or default_storage(spec.study.name)
    opened = RetryingStorage(  # a wrong URL or password fails here
        open_storage(storage_url), on_retry=log, still_there=storage_gone_check(storage_url)
    )
    out_dir = study_dir(spec.study.name).resolve()
    check_writable(out_dir)
    spec, data_dir = absolute_data_paths(spec, data_dir)
    data = load_dataset(spec.data, data_dir=data_dir, download=download)  # once, before any trial: builds the cache
    image_size = trial_image_size(spec.data, data_dir, data)  # the dry run asks the same function
    check_space_fits(spec, image_size)
    with logs_to(out_dir / "ray.log"), ray_session(address) as cluster:
        use_gpu = check_resources(spec, cluster, log, require_gpu=device == "cuda")
        study = create_study(spec, opened)
        with DriverLease(study):
            _recover(study, log)
            keeper = ModelKeeper(study, spec, out_dir, keep, record_run_data(study, data, spec, data_dir, log), log)
            bridge = _bridge(study, spec, image_size, data_dir, use_gpu, log, told, started)
            bridge.notify("run_started", _run_start(bridge, cluster, data, storage_url, started))
            start = time.monotonic()
            try:
                _tuner(bridge, out_dir, trainable, keeper).fit()  # returns early, not raising, on Ctrl-C
            finally:
                stopped = bridge.close_open_trials("the run was stopped before the trial finished")
                keeper.settle()
                ended_by = _end_run(bridge)
            wall = time.monotonic() - start
    interrupted = bool(stopped) or (bridge.remaining > 0 and bridge.stop_reason is None and not bridge.out_of_time)
    if bridge.stop_reason:
        raise UserError(f"{spec.source}: budget: {bridge.stop_reason}")
    return replace(_summary(study, storage_url, bridge, wall, interrupted), ended_by=ended_by)


def with_budgets(spec: Spec, timeout: float | str | None, n_trials: int | None) -> Spec:
    """``spec`` with this run's time budget and trial count, where given.

    Raises:
        UserError: ``timeout`` is not a duration, or ``n_trials`` is below 1.
    """
    if n_trials is not None and n_trials < 1:
        raise UserError(f"n_trials must be at least 1, got {n_trials}")
    try:
        study = replace(
            spec.study,
            timeout=spec.study.timeout if timeout is None else timeout,
            n_trials=spec.study.n_trials if n_trials is None else n_trials,
        )
    except InvalidValue as error:
        raise UserError(f"{error.key}: {error.message}") from None
    return replace(spec, study=study)


def _bridge(
    study: optuna.Study,
    spec: Spec,
    image_size: int,
    data_dir: str | None,
    use_gpu: bool,
    log: Log,
    observers: list[RunObserver],
    started: float,
) -> StudyBridge:
    """The run's bridge to its study, with its observers and the deadline of its time budget."""
    timeout_s = spec.study.timeout_s
    return StudyBridge(
        study,
        spec,
        image_size=image_size,
        data_dir=data_dir,
        use_gpu=use_gpu,
        threads=max(1, int(spec.resources.cpu)),
        log=log,
        observers=observers,
        deadline=None if timeout_s is None else started + timeout_s,
    )


def _recover(study: optuna.Study, log: Log) -> None:
    """Enqueue again what earlier runs did not finish: trials a killed driver left RUNNING, and
    trials an earlier run's time budget stopped."""
    recovered = recover_interrupted(study)
    if recovered:
        log(f"{recovered} trial(s) left running by an earlier driver were marked FAIL and enqueued again")
    stopped = requeue_stopped(study)
    if stopped:
        log(f"{stopped} trial(s) stopped by an earlier run's time budget are enqueued again")


def _run_start(bridge: StudyBridge, cluster: dict, data: ImageDataset, storage_url: str, started: float) -> RunStart:
    """The pre-run block (printed by the observers) and what the progress views need."""
    spec = bridge.spec
    measured = preflight(
        spec,
        cluster=cluster,
        use_gpu=bridge.use_gpu,
        image_size=bridge.image_size,
        n_train=len(data.train.labels),
        to_run=max(0, bridge.remaining),
        timeout_s=spec.study.timeout_s,
        storage_url=storage_url,
        finished_before=bridge.finished_before,
    )
    ended = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return RunStart(
        study_name=spec.study.name,
        n_trials=spec.study.n_trials,
        finished_before=bridge.finished_before,
        slots=slots(spec, cluster, bridge.use_gpu),
        epochs=max_epochs(spec),
        started=started,
        objectives=tuple(o.metric for o in spec.study.objectives),
        maximize=spec.study.objectives[0].direction == "maximize",
        timeout_s=spec.study.timeout_s,
        epoch_s=measured.epoch_s,
        probe_flops=measured.probe_flops,
        mean_flops=measured.mean_flops,
        lines=tuple(measured.lines),
        finished=tuple(bridge.study.get_trials(deepcopy=False, states=ended)),
    )


def _end_run(bridge: StudyBridge) -> str | None:
    """Tell the observers the run is over (with the model folders kept); returns why it ended
    before its trials (the time budget), or None."""
    ended_by = _ended_by(bridge, bridge.spec.study.timeout_s)
    kept = {number: str(folder) for number, folder in kept_models(bridge.study).items()}
    bridge.notify("run_ended", RunEnd(ended_by, kept))
    return ended_by


def _ended_by(bridge: StudyBridge, timeout_s: float | None) -> str | None:
    if not bridge.out_of_time or timeout_s is None:
        return None
    return (
        f"the time budget of {format_duration(timeout_s)} ended the run: no trial started after it, "
        f"{bridge.tally.stopped} running trial(s) were stopped (FAIL, interrupted; the next run trains them again)"
    )


def _tuner(bridge: StudyBridge, out_dir: Path, trainable: Trainable, keeper: ModelKeeper) -> Any:
    """A Tune run whose trials the bridge samples, prunes and records, and whose best trials'
    weights the keeper keeps."""
    from ray import tune

    from search.engine.adapters import KeepModels, OptunaPruningScheduler, OptunaSearcher  # imports Ray

    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # the study records results
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no experiment banner: the progress lines are ours
    resources = bridge.spec.resources
    return tune.Tuner(
        tune.with_resources(trainable, {"cpu": resources.cpu, "gpu": resources.gpu if bridge.use_gpu else 0}),
        tune_config=tune.TuneConfig(
            search_alg=OptunaSearcher(bridge, keeper.output),
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
            # One checkpoint per trial (its model folder, with its final report); the keeper
            # keeps those of the study's best trials.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[KeepModels(keeper)],
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
