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
from typing import Any, NamedTuple

import optuna
from optuna.trial import TrialState

from search.budget import CountReport
from search.budget.survey import sample_space
from search.config import InvalidValue, Spec, TrialConfig, UserError
from search.config.secrets import mask_secrets, without_secrets
from search.config.units import format_duration
from search.data import ImageDataset
from search.data.fingerprint import DataRecord, load_recorded
from search.engine.bridge import RunGoal, StudyBridge, TrialSetup
from search.engine.checks import (
    absolute_data_paths,
    check_against_data,
    check_resources,
    check_weights,
    check_writable,
    require_space,
    with_device,
)
from search.engine.cost import (
    Concurrency,
    TrialCost,
    local_resources,
    probe_cost,
    probe_device,
    trial_concurrency,
    trial_threads,
)
from search.engine.events import Log, RunEnd, RunObserver, RunStart, Trainable, ignore
from search.engine.keep import ModelKeeper, record_run_data
from search.engine.options import RunOptions
from search.engine.preflight import RunPlan, preflight_lines, training_set_placement
from search.engine.progress import PlainProgress
from search.engine.ray_runtime import logs_to, ray_session, starts_local_ray, stop_if_ray_is_lost
from search.engine.samplers import check_designs, create_study
from search.engine.startup import StartUp, machine_key, record_startup, stored_startup
from search.engine.tracking import tracking_observers
from search.study.keys import REJECTED, REPEAT_OF, is_finished
from search.study.lease import DriverLease
from search.study.records import kept_models, recorded_data, study_data
from search.study.retrying import RetryingStorage
from search.study.storage import default_storage, open_storage, storage_gone_check, study_dir
from search.study.trials import find_study, recover_interrupted, requeue_stopped, sort_sign

STOPPED = "the run was stopped before the trial finished"  # why a trial the run stopped is FAIL


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
    trials_run: int = 0  # trials this run sent to Ray
    startup: StartUp | None = None  # what this run's trials paid before their first step
    nothing_to_run: str | None = None  # the one line of a run that had nothing to do
    repeats: int = 0  # trials of the study answered from a trained trial's record (``repeat_of``), not trained

    @property
    def overhead(self) -> float | None:
        """Share of the trial slots' wall time not spent training (Ray, start-up, sampling,
        recording); None for a run that trained no trial."""
        capacity = self.wall_time_s * self.slots
        return 1 - self.trial_time_s / capacity if capacity and self.trials_run else None


def run_search(spec: Spec, options: RunOptions | None = None) -> SearchSummary:
    """Run (or continue) the spec's study: to ``study.n_trials`` finished trials in all, or
    ``options.n_trials`` more in this run; the time budget may end it first.

    Everything that can be wrong with the input is checked before the study is written to:
    the space, weights, the storage, the study's folder, the data, the budget, the cluster's
    resources. A study that has its trials already gets one line (no data loaded, no Ray).

    Args:
        spec: A parsed spec with a search space.
        options: Where and how this run goes (storage, data, Ray, device, time budget, trials,
            weights kept, observers; :class:`~search.engine.options.RunOptions`); default: all
            defaults.

    Returns:
        A summary of the run.

    Raises:
        UserError: bad storage, data, resources, a bad timeout, a space none of whose configs
            fits the budget, a tracker not installed or not answering, data the study recorded
            that moved or changed, or another driver running the same study.
    """
    options = options or RunOptions()
    log = options.log
    started = time.monotonic()
    spec = with_device(with_budgets(spec, options.timeout, options.n_trials), options.device)
    require_space(spec)
    check_designs(spec)
    check_weights(spec, configs := sample_space(spec))  # the run's one sample of its space; all read it
    if starts_local_ray(options.address):  # fail before the data loads and Ray starts; Ray's count is checked again
        bound = {**local_resources(), "CPU": float(os.cpu_count() or 1)}  # every CPU: Ray may count more than ours
        check_resources(spec, bound, ignore, require_gpu=options.device == "cuda")
    views = options.observers if options.observers is not None else [PlainProgress(log)]
    told = [*views, *tracking_observers(spec)]
    spec = without_secrets(spec)  # the study and Ray get masked URIs; the trackers hold the real ones
    storage_url = options.storage or default_storage(spec.study.name)
    opened = RetryingStorage(  # a wrong URL or password fails here
        open_storage(storage_url), on_retry=log, still_there=storage_gone_check(storage_url)
    )
    earlier, before, target = _goal(opened, spec, options.n_trials)
    if target <= before:
        return _nothing_to_run(spec, storage_url, before)
    ready = _prepare(spec, earlier, options, configs)
    spec = ready.spec
    with logs_to(ready.out_dir / "ray.log"), ray_session(options.address) as cluster:
        use_gpu = check_resources(spec, cluster, log, require_gpu=options.device == "cuda")
        concurrency = trial_concurrency(spec, cluster, use_gpu)
        study = create_study(spec, opened, ready.survey.max_epochs)
        with DriverLease(study):
            _recover(study, log)
            kept = record_run_data(study, ready.record, log)
            keeper = ModelKeeper(study, spec, ready.out_dir, options.keep, kept, log)
            bridge = _bridge(study, ready, use_gpu, options, told, RunGoal(target, _deadline(spec, started)))
            bridge.notify("run_started", _run_start(bridge, ready, storage_url, cluster, concurrency, started))
            start = time.monotonic()
            try:
                _fit(bridge, ready.out_dir, options.trainable, keeper, concurrency.slots)  # returns early on Ctrl-C
            finally:
                stopped = bridge.close_open_trials(STOPPED)
                keeper.settle()
                ended_by = _end_run(bridge)
            wall = time.monotonic() - start
    return _outcome(bridge, study, storage_url, _Ended(wall, bool(stopped), concurrency.slots, ended_by))


class _Ended(NamedTuple):
    """How Tune's part of a run ended: its wall time, whether trials were stopped, its slots,
    and why it ended before its trials (None: they finished)."""

    wall: float
    stopped: bool
    slots: int
    ended_by: str | None


def _outcome(bridge: StudyBridge, study: optuna.Study, storage_url: str, ended: _Ended) -> SearchSummary:
    """The run's summary.

    Raises:
        UserError: the budget ended the run (every sample rejected).
    """
    wall, stopped, slots, ended_by = ended
    interrupted = stopped or (bridge.remaining > 0 and bridge.stop_reason is None and not bridge.out_of_time)
    if bridge.stop_reason:
        raise UserError(f"{bridge.spec.source}: budget: {bridge.stop_reason}")
    return replace(_summary(study, storage_url, bridge, wall, interrupted, slots), ended_by=ended_by)


def with_budgets(spec: Spec, timeout: float | str | None, n_trials: int | None) -> Spec:
    """``spec`` with this run's time budget, where given (``n_trials`` is checked here and
    counted by the run: it adds trials, the study's total stays ``study.n_trials``).

    Raises:
        UserError: ``timeout`` is not a duration, or ``n_trials`` is below 1.
    """
    if n_trials is not None and n_trials < 1:
        raise UserError(f"n_trials must be at least 1, got {n_trials}")
    try:
        study = replace(spec.study, timeout=spec.study.timeout if timeout is None else timeout)
    except InvalidValue as error:
        raise UserError(f"{error.key}: {error.message}") from None
    return replace(spec, study=study)


def _goal(storage: RetryingStorage, spec: Spec, n_trials: int | None) -> tuple[optuna.Study | None, int, int]:
    """The study as earlier runs left it (None: a new one), its finished trials, and the finished
    trials it has when this run is done: ``n_trials`` more, or ``study.n_trials`` in all."""
    earlier = find_study(storage, spec.study.name)
    before = sum(is_finished(t) for t in earlier.get_trials(deepcopy=False)) if earlier is not None else 0
    return earlier, before, spec.study.n_trials if n_trials is None else before + n_trials


def _nothing_to_run(spec: Spec, storage_url: str, finished: int) -> SearchSummary:
    """The summary of a run whose study already has its ``study.n_trials`` finished trials."""
    line = (
        f"study {spec.study.name} has {finished} finished trials and study.n_trials is {spec.study.n_trials}: "
        "nothing to run (--n-trials N runs N more)"
    )
    return SearchSummary(spec.study.name, mask_secrets(storage_url), finished, 0, 0.0, 0.0, 0, (), nothing_to_run=line)


@dataclass(frozen=True)
class _Ready:
    """A run's input, checked and measured before Ray starts: the spec with absolute data paths,
    the study's folder, the data (and where the trials load it), the input size, and the probe."""

    spec: Spec
    out_dir: Path
    data: ImageDataset
    record: DataRecord
    data_dir: str | None
    image_size: int
    survey: CountReport
    cost: TrialCost | None
    probe_error: str | None


def _prepare(spec: Spec, earlier: optuna.Study | None, options: RunOptions, configs: Sequence[TrialConfig]) -> _Ready:
    """Check the study's folder, load the data (the study's recorded data unless
    ``options.data_dir`` names other), check the budget against it, and probe the cost, as
    ``run --dry-run`` does. The probe runs before Ray starts: the processes Ray starts would slow it."""
    out_dir = study_dir(spec.study.name).resolve()
    check_writable(out_dir)
    spec, data_dir = absolute_data_paths(spec, options.data_dir)
    # Loaded once, before any trial: this builds the cache.
    data, record, data_dir = run_data(spec, earlier, data_dir, options.download)
    image_size, survey = check_against_data(spec, data_dir, data, configs)  # the dry run asks the same trial_image_size
    local = trial_concurrency(spec, local_resources(), use_gpu=probe_device(spec) == "cuda")
    trials = earlier.get_trials(deepcopy=False) if earlier is not None else ()
    cost, error = None, None
    try:
        n_train = len(data.train.labels)
        cost = probe_cost(spec, image_size, n_train, slots=local.slots, data_dir=data_dir, trials=trials, survey=survey)
    except RuntimeError as failure:  # e.g. out of memory on the driver's device: the run itself may still fit
        error = f"on {probe_device(spec)} with {trial_threads(spec)} thread(s): {failure}"
    return _Ready(spec, out_dir, data, record, data_dir, image_size, survey, cost, error)


def run_data(
    spec: Spec, earlier: optuna.Study | None, data_dir: str | None, download: bool
) -> tuple[ImageDataset, DataRecord, str | None]:
    """The run's data: ``data_dir`` if given; else, for a study that recorded its data, that
    data (refused if it moved or changed, as ``retrain`` does); else where the spec says.

    Returns:
        The dataset, its record, and the location the trials load it from.

    Raises:
        UserError: the data cannot be found, or the recorded data moved or changed.
    """
    if earlier is not None:
        # The line on data that differs from the record comes once, from record_run_data.
        data, record = study_data(earlier, spec, data_dir, download=download, log=ignore)
        if data_dir is None and recorded_data(earlier) is not None:
            data_dir = record.location  # the trials load the data checked here
        return data, record, data_dir
    data, record = load_recorded(spec.data, None, data_dir, owner=f"study {spec.study.name}", download=download)
    return data, record, data_dir


def _recover(study: optuna.Study, log: Log) -> None:
    """Enqueue again what earlier runs did not finish: trials a killed driver left RUNNING, and
    trials an earlier run's time budget stopped."""
    recovered = recover_interrupted(study)
    if recovered:
        log(f"{recovered} trial(s) left running by an earlier driver were marked FAIL and enqueued again")
    stopped = requeue_stopped(study)
    if stopped:
        log(f"{stopped} trial(s) stopped by an earlier run's time budget are enqueued again")


def _bridge(
    study: optuna.Study, ready: _Ready, use_gpu: bool, options: RunOptions, observers: list[RunObserver], goal: RunGoal
) -> StudyBridge:
    """The run's bridge to its study, with its observers and its goal: its target of finished
    trials and the deadline of its time budget."""
    setup = TrialSetup(ready.image_size, ready.data_dir, use_gpu, trial_threads(ready.spec))
    return StudyBridge(study, ready.spec, setup, goal=goal, observers=observers, log=options.log)


def _deadline(spec: Spec, started: float) -> float | None:
    """The ``time.monotonic()`` at which the run's time budget is spent; None: no budget."""
    timeout_s = spec.study.timeout_s
    return None if timeout_s is None else started + timeout_s


def _run_start(
    bridge: StudyBridge, ready: _Ready, storage_url: str, cluster: dict, concurrency: Concurrency, started: float
) -> RunStart:
    """The pre-run block (printed by the observers) and what the progress views need."""
    spec, cost = bridge.spec, ready.cost
    plan = RunPlan(
        spec=spec,
        storage_url=storage_url,
        finished_before=bridge.finished_before,
        target=bridge.target,
        to_run=max(0, bridge.remaining),
        cluster=cluster,
        use_gpu=bridge.setup.use_gpu,
        concurrency=concurrency,
        n_train=len(ready.data.train.labels),
        class_counts=ready.data.train_counts(),
        cost=cost,
        probe_error=ready.probe_error,
        training_set=training_set_placement(spec, ready.data, bridge.setup.use_gpu),
    )
    ended = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return RunStart(
        study_name=spec.study.name,
        n_trials=bridge.target,
        finished_before=bridge.finished_before,
        slots=concurrency.slots,
        epochs=ready.survey.max_epochs,
        started=started,
        objectives=tuple(o.metric for o in spec.study.objectives),
        maximize=spec.study.objectives[0].direction == "maximize",
        timeout_s=spec.study.timeout_s,
        epoch_s=cost.epoch_s if cost else None,
        probe_flops=cost.flops if cost else None,
        mean_flops=cost.mean_flops if cost else None,
        cold_s=cost.startup.cold_s if cost else None,
        warm_s=cost.startup.warm_s if cost else None,
        lines=tuple(preflight_lines(plan)),
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
        f"{bridge.tally.interrupted} running trial(s) were stopped (FAIL, interrupted; the next run trains them again)"
    )


def _fit(bridge: StudyBridge, out_dir: Path, trainable: Trainable, keeper: ModelKeeper, slots: int) -> None:
    """Tune's run. Where a SIGTERM stopped Ray with the driver, the running trials are recorded
    and the driver exits at once (:func:`~search.engine.ray_runtime.stop_if_ray_is_lost`)."""
    with stop_if_ray_is_lost(lambda: bridge.close_open_trials(STOPPED), bridge.log):
        _tuner(bridge, out_dir, trainable, keeper, slots).fit()


def _tuner(bridge: StudyBridge, out_dir: Path, trainable: Trainable, keeper: ModelKeeper, slots: int) -> Any:
    """A Tune run whose trials the bridge samples, prunes and records, and whose best trials'
    weights the keeper keeps; ``slots`` trials at once (:func:`~search.engine.cost.trial_concurrency`:
    Tune asks for no more trials than Ray can start, so every trial it has is training)."""
    from ray import tune

    from search.engine.adapters import KeepModels, OptunaPruningScheduler, OptunaSearcher  # imports Ray

    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # the study records results
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no experiment banner: the progress lines are ours
    resources = bridge.spec.resources
    return tune.Tuner(
        tune.with_resources(trainable, {"cpu": resources.cpu, "gpu": resources.gpu if bridge.setup.use_gpu else 0}),
        tune_config=tune.TuneConfig(
            search_alg=OptunaSearcher(bridge, keeper.output),
            scheduler=OptunaPruningScheduler(bridge),
            num_samples=-1,  # until the searcher says FINISHED
            max_concurrent_trials=slots,
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
    study: optuna.Study, storage_url: str, bridge: StudyBridge, wall: float, interrupted: bool, slots: int
) -> SearchSummary:
    trials = study.get_trials(deepcopy=False)
    startup = stored_startup([t for t in trials if t.number in bridge.startup_measured], of="this run")
    if startup is not None:  # what runs measure beats a probe: the next new study's estimate starts from it
        source = f"a run of study {study.study_name}: {startup.source.replace('this run', 'it')}"
        record_startup(machine_key(probe_device(bridge.spec), slots), replace(startup, source=source))
    complete = [t for t in trials if t.state == TrialState.COMPLETE and REPEAT_OF not in t.user_attrs]
    return SearchSummary(
        study_name=study.study_name,
        storage=mask_secrets(storage_url),
        finished=sum(is_finished(t) for t in trials),
        rejected=sum(REJECTED in t.user_attrs for t in trials),
        repeats=sum(REPEAT_OF in t.user_attrs for t in trials),
        wall_time_s=wall,
        trial_time_s=bridge.train_seconds,
        slots=slots,
        interrupted=interrupted,
        top=tuple(sorted(complete, key=lambda t: sort_sign(study) * t.values[0])[:5]),
        trials_run=bridge.launched,
        startup=startup,
    )


def _trial_name(trial: Any) -> str:
    return f"trial_{trial.config['job'].number}"
