"""The driver's side of a search: :class:`StudyBridge`, the only process that writes to the study.

Why not ``ray.tune.search.optuna.OptunaSearch``: it hard-codes a NopPruner, tells Optuna
that trials stopped by a Tune scheduler are COMPLETE, and its restore leaves RUNNING trials
behind. Here the study is the single source of truth and only the driver writes to it (so
SQLite never sees parallel writers). The bridge asks the study for configs, checks them
against the budget before anything trains (rejected samples are told PRUNED with a
constraint value, so TPE learns to avoid them, and never count as results), and records
reports, pruning decisions and outcomes. Tune reaches it through the adapters in
:mod:`search.engine.adapters`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import optuna
from optuna.trial import TrialState

from search.budget import Counts, check_budget, constraint_values, count_model, fast_count
from search.budget.survey import check_fits_everywhere
from search.config import InvalidSample, InvalidValue, Rung, Spec, TorchvisionResNetConfig, TrialConfig
from search.config.secrets import mask_secrets
from search.engine.deployment import DeploymentBudget
from search.engine.events import EpochReport, Log, RunObserver, TrialEnd, TrialStart, ignore
from search.engine.rungs import check_rungs
from search.engine.samplers import learns_from_rejections, uses_constraints
from search.engine.startup import startup_seconds
from search.engine.trainable import TrialJob
from search.models import build_model
from search.study.keys import (
    CONFIG_KEY,
    EPOCHS_RUN,
    ERROR,
    FLOPS,
    FRESH_WORKER,
    FULL_EPOCHS,
    IMAGES_PER_S,
    INTERRUPTED,
    LATENCY_MS,
    PARAMS,
    RAY_TRIAL_ID,
    REJECTED,
    RETRY_OF,
    STARTUP_S,
    TRAIN_TIME_S,
    TRAINABLE_PARAMS,
    is_finished,
    trial_status,
)
from search.study.notes import write_trial_note
from search.study.repeats import TrainedConfigs, answer_repeat, config_key, data_identity


@dataclass
class RunningTrial:
    """A trial this run sent to Ray and has not told the study about yet.

    Attributes:
        trial: The study's trial.
        counts: Its size (a ``params`` or ``flops`` objective reads it when it ends).
        started: ``time.monotonic()`` when it was sent to Ray (its start-up counts from here).
        epochs: The epochs its config trains (a deadline stops it only before the last).
        pruned: Its pruner said stop: it ends PRUNED.
        stopped_by_deadline: The time budget stopped it: it ends FAIL, ``interrupted``.
    """

    trial: optuna.Trial
    counts: Counts
    started: float
    epochs: int
    pruned: bool = False
    stopped_by_deadline: bool = False


@dataclass
class Tally:
    """How this run's trials ended so far (the progress views keep their own, from the events)."""

    done: int = 0
    running: int = 0
    pruned: int = 0
    failed: int = 0
    rejected: int = 0
    interrupted: int = 0  # by the time budget
    repeats: int = 0  # answered from the record of a trained trial (:mod:`search.study.repeats`)


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a run trains with besides its config, handed to each trial's job.

    Attributes:
        image_size: Input size the budget is counted at (the side every trial trains at).
        data_dir: Where the workers load the data (the ``--data-dir`` given, or the data the
            study recorded); None: where the spec says.
        use_gpu: Whether trials get a GPU.
        threads: Torch threads per trial.
    """

    image_size: int
    data_dir: str | None = None
    use_gpu: bool = False
    threads: int = 1


@dataclass(frozen=True)
class RunGoal:
    """When a run is done.

    Attributes:
        target: The finished trials the study has when this run is done (``run --n-trials N``:
            those finished before plus N); None: ``study.n_trials``, the study's total.
        deadline: ``time.monotonic()`` after which no trial starts and running ones stop at
            their next epoch report (the run's time budget); None: no deadline.
    """

    target: int | None = None
    deadline: float | None = None


class StudyBridge:
    """The driver's side of the study: the only process that writes to it.

    Args:
        study: The Optuna study (its sampler and pruner already set).
        spec: The parsed spec.
        setup: What every trial trains with besides its config (input size, data, GPU, threads).
        goal: When the run is done (its target of finished trials, its deadline).
        observers: Told of every trial's start, epoch reports and end (the live view, trackers).
        log: Where progress lines go.
        reference_check: Count configs that pass the fast check with fvcore too (the budget's
            final word), and measure their latency where the spec asks; off only for
            rehearsals, which train nothing.
    """

    def __init__(
        self,
        study: optuna.Study,
        spec: Spec,
        setup: TrialSetup,
        *,
        goal: RunGoal = RunGoal(),
        observers: Sequence[RunObserver] = (),
        log: Log = ignore,
        reference_check: bool = True,
    ) -> None:
        self.study = study
        self.reference_check = reference_check
        self.spec = spec
        self.setup = setup
        self.log = log
        self.multi_objective = len(spec.study.objectives) > 1
        self.running: dict[int, RunningTrial] = {}
        self.tally = Tally()
        self.finished_before = sum(is_finished(t) for t in study.get_trials(deepcopy=False))
        self.target = spec.study.n_trials if goal.target is None else goal.target
        self.launched = 0
        self.rejections_in_a_row = 0
        self.retry_sampler = optuna.samplers.RandomSampler(seed=spec.study.seed)
        self.stop_reason: str | None = None
        self.train_seconds = 0.0  # the trials' own training time, as they report it
        self.observers = list(observers)
        self.deadline = goal.deadline
        self.out_of_time = False  # the deadline passed: the run ends when the running trials stop
        self.startup_measured: set[int] = set()  # trials of this run whose start-up is stored
        self.deployment = DeploymentBudget(study, spec, setup.image_size, measure=reference_check, log=log)
        self.rungs: tuple[Rung, ...] = getattr(spec.study.pruner, "rungs", ())
        check_rungs(self.rungs, setup.image_size, spec.source)
        self.trained = TrainedConfigs(study.get_trials(deepcopy=False))  # earlier runs' trials answer repeats too
        self.data_identity = data_identity(study, spec, setup.image_size)

    @property
    def remaining(self) -> int:
        """Trials still to send to Ray for this run to reach its target."""
        return self.target - self.finished_before - self.launched - self.tally.repeats

    # ---- sampling and the budget

    def next_job(self, ray_trial_id: str = "") -> TrialJob | None:
        """Sample until a config fits the budget; None when the study has its trials (or gives up)."""
        while self.remaining > 0 and self.stop_reason is None:
            if self.past_deadline():
                return None
            trial, drawn = self._draw()
            if isinstance(drawn, str):
                self._reject(trial, drawn, None)
                continue
            config, counts = drawn
            reason = check_budget(counts, self.spec.budget)
            if reason is None and self.reference_check:
                counts = self._reference_count(config)
                reason = check_budget(counts, self.spec.budget)
            if reason is None:  # activation memory, model size, then latency (measured, cached)
                reason = self.deployment.check(trial, config, uses_constraints(self.study.sampler))
            if reason is not None:
                self._reject(trial, reason, counts)
                continue
            self.rejections_in_a_row = 0
            self._record_counts(trial, counts)
            if self._answered_from_record(trial, config):
                continue
            trial.set_user_attr(RAY_TRIAL_ID, ray_trial_id)
            self.running[trial.number] = RunningTrial(trial, counts, time.monotonic(), config.train.epochs)
            self.launched += 1
            self.tally.running += 1
            self.notify(
                "trial_started",
                TrialStart(trial.number, trial.params, counts.params, counts.flops or 0, config.train.epochs),
            )
            setup = self.setup
            return TrialJob(
                trial.number,
                config,
                self.spec.data,
                setup.data_dir,
                counts,
                setup.use_gpu,
                setup.threads,
                rungs=self.rungs,
            )
        return None

    def _draw(self) -> tuple[optuna.Trial, tuple[TrialConfig, Counts] | str]:
        """A new trial with its config and fast count, or with why the sample is invalid.

        TPE learns from rejected samples (PRUNED with a constraint value); GP and CMA-ES
        model COMPLETE trials only and would propose a rejected config again, so for them
        the draw after a rejection is random. The swap spans sampling as well: a trial
        asks its sampler lazily, at its first suggestion.
        """
        sampler = self.study.sampler
        if self.rejections_in_a_row and not learns_from_rejections(sampler):
            self.study.sampler = self.retry_sampler
        try:
            trial = self.study.ask()
            try:
                config = self.spec.space.sample(trial)
                check_fits_everywhere(self.spec, config, self.setup.image_size)  # else rejected untrained
                return trial, (config, fast_count(config.model, self.setup.image_size))
            except (InvalidSample, InvalidValue) as error:
                return trial, str(error)
        finally:
            self.study.sampler = sampler

    def _reference_count(self, config: TrialConfig) -> Counts:
        """fvcore's count of the built model: the budget's final word before any training.
        Pretrained weights change no count, so the model is built without loading them."""
        model_config = config.model
        if isinstance(model_config, TorchvisionResNetConfig):
            model_config = replace(model_config, weights=None)
        size = self.setup.image_size
        return count_model(build_model(model_config, size), size, _in_channels(config))

    def _record_counts(self, trial: optuna.Trial, counts: Counts) -> None:
        trial.set_user_attr(PARAMS, counts.params)
        trial.set_user_attr(TRAINABLE_PARAMS, counts.trainable_params)
        trial.set_user_attr(FLOPS, counts.flops)
        if uses_constraints(self.study.sampler):
            for key, value in zip(("params", "flops"), constraint_values(counts, self.spec.budget)):
                trial.set_constraint(key, value)

    def _answered_from_record(self, trial: optuna.Trial, config: TrialConfig) -> bool:
        """A config the study trained already is answered from its record, at no cost
        (:mod:`search.study.repeats`); any other keeps its key, to answer its own repeats."""
        key = config_key(config, self.data_identity)
        original = self.trained.original(key)
        if original is None:
            trial.set_user_attr(CONFIG_KEY, key)
            return False
        answer_repeat(self.study, trial, self._frozen(original))
        self.tally.repeats += 1
        frozen = self._frozen(trial.number)
        write_trial_note(self.study, frozen, self.spec)
        self.notify("trial_ended", TrialEnd(trial.number, trial_status(frozen), frozen, at=time.monotonic()))
        return True

    def _reject(self, trial: optuna.Trial, reason: str, counts: Counts | None) -> None:
        if counts is not None:
            self._record_counts(trial, counts)
        trial.set_user_attr(REJECTED, reason)
        # PRUNED, not FAIL: TPE learns from pruned trials' constraint values; the
        # ``rejected`` attribute keeps them out of every count and export.
        self.study.tell(trial, state=TrialState.PRUNED)
        frozen = self._frozen(trial.number)
        write_trial_note(self.study, frozen, self.spec)
        self.notify("trial_ended", TrialEnd(trial.number, trial_status(frozen), frozen, at=time.monotonic()))
        self.tally.rejected += 1
        self.rejections_in_a_row += 1
        if self.rejections_in_a_row >= self.spec.study.max_rejections:
            self.stop_reason = (
                f"{self.rejections_in_a_row} samples in a row were over the budget ({reason}); "
                "shrink the space (fewer blocks, narrower widths) or raise budget.max_params"
            )

    def _frozen(self, number: int) -> optuna.trial.FrozenTrial:
        """A trial as stored, read without deep-copying every trial of the study."""
        return self.study.get_trials(deepcopy=False)[number]

    # ---- reports, pruning, outcomes

    def report(self, number: int, result: dict) -> bool:
        """Record one epoch's metric; True when the trial must stop: the pruner says so, or the
        deadline passed before its last epoch."""
        if "epoch" not in result or number not in self.running:
            return False
        epoch, now = int(result["epoch"]), time.monotonic()
        metrics = {k: float(v) for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if FRESH_WORKER in result:  # a flag: the observers get it as 1.0 or 0.0, as every metric a number
            metrics[FRESH_WORKER] = float(bool(result[FRESH_WORKER]))
        if FULL_EPOCHS in metrics:  # what the trial has cost so far, for the benchmark and the report
            self.running[number].trial.set_user_attr(FULL_EPOCHS, metrics[FULL_EPOCHS])
        if number not in self.startup_measured and "elapsed_s" in metrics:
            self._record_startup(number, now, metrics["elapsed_s"], bool(result.get(FRESH_WORKER)))
        self.notify("epoch_reported", EpochReport(number, epoch, metrics, now))
        if self._prune(number, result):
            return True
        if self.past_deadline() and epoch < self.running[number].epochs:
            self.running[number].stopped_by_deadline = True
            return True
        return False

    def _record_startup(self, number: int, now: float, first_epoch_s: float, fresh_worker: bool) -> None:
        """Store what the trial paid before its first training step (a Ray worker, imports, the
        data, the model): the time from sending it to Ray to its first report, less that epoch."""
        self.startup_measured.add(number)
        running = self.running[number]
        trial = running.trial
        trial.set_user_attr(STARTUP_S, round(startup_seconds(running.started, now, first_epoch_s), 3))
        trial.set_user_attr(FRESH_WORKER, fresh_worker)

    def _prune(self, number: int, result: dict) -> bool:
        """Report the objective to the study; True when its pruner says stop. The step is the
        epoch; with rungs, the rung's index, and only rung reports reach the study."""
        value = result.get(self.spec.study.objectives[0].metric)
        if self.multi_objective or value is None or not math.isfinite(value):
            return False
        step = result.get("rung") if self.rungs else result["epoch"]
        if step is None:
            return False
        trial = self.running[number].trial
        trial.report(value, step=int(step))
        if trial.should_prune():
            self.mark_pruned(number)
            return True
        return False

    def mark_pruned(self, number: int) -> None:
        """The trial stops as PRUNED when it ends (its pruner, or a peer's scheduler, said so)."""
        self.running[number].pruned = True

    def past_deadline(self) -> bool:
        """Whether the time budget is spent (remembered in ``out_of_time``)."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.out_of_time = True
        return self.out_of_time

    def finish(self, number: int, result: dict | None, error: bool) -> None:
        """Tell the study how a trial ended (COMPLETE, PRUNED or FAIL)."""
        running = self.running.pop(number, None)
        if running is None:
            return
        trial, result = running.trial, result or {}
        self.tally.running -= 1
        # A trial's own training time: its summary's, or (pruned) its last epoch report's.
        train_time = result.get("train_time_s") or result.get("elapsed_s") or 0.0
        self.train_seconds += train_time
        trial.set_user_attr(TRAIN_TIME_S, train_time)
        epochs_run = result.get("epochs_run") or result.get("epoch")
        if epochs_run is not None:
            trial.set_user_attr(EPOCHS_RUN, int(epochs_run))
        if IMAGES_PER_S in result:
            trial.set_user_attr(IMAGES_PER_S, result[IMAGES_PER_S])
        if running.stopped_by_deadline:
            self._stop(number, trial, result)
            return
        failure = result.get(ERROR) or ("the Ray worker died or raised" if error else None)
        values = None
        if failure is None and not running.pruned:
            values = self._objective_values(number, running.counts, result)
            if values is None:
                failure = "the trial reported no finite objective value"
        if failure is not None:
            trial.set_user_attr(ERROR, failure)
            self.study.tell(trial, state=TrialState.FAIL)
            self.tally.failed += 1
        elif running.pruned:
            self.study.tell(trial, state=TrialState.PRUNED)
            self.tally.pruned += 1
        else:
            assert values is not None  # set above whenever a trial neither failed nor was pruned
            self.study.tell(trial, values)
            self.tally.done += 1
        # Its note in optuna-dashboard, live, from its own record: the cost does not grow with the study.
        frozen = self._frozen(number)
        self.trained.add(frozen)
        write_trial_note(self.study, frozen, self.spec)
        self.notify("trial_ended", TrialEnd(number, trial_status(frozen), frozen, result, time.monotonic()))

    def _stop(self, number: int, trial: optuna.Trial, result: dict) -> None:
        """A trial the deadline stopped: FAIL with an ``interrupted`` reason, so it counts as
        no result; the next run enqueues its parameters again
        (:func:`~search.study.trials.requeue_stopped`), so the study stays without WAITING trials."""
        epochs = result.get("epoch", 0)
        trial.set_user_attr(INTERRUPTED, f"stopped by the run's time budget after {epochs} epoch(s)")
        self.study.tell(trial, state=TrialState.FAIL)
        self.tally.interrupted += 1
        frozen = self._frozen(number)
        write_trial_note(self.study, frozen, self.spec)
        self.notify("trial_ended", TrialEnd(number, trial_status(frozen), frozen, result, time.monotonic()))

    def notify(self, method: str, event: object) -> None:
        """Call ``method`` of every observer; one that raises is dropped with one line, so a
        broken tracker never costs a trial."""
        for observer in list(self.observers):
            try:
                getattr(observer, method)(event)
            except Exception as error:  # any failure of an observer: the study's record goes on
                self.observers.remove(observer)
                message = mask_secrets(f"{type(error).__name__}: {error}")  # a tracker's error may quote its URI
                self.log(f"{type(observer).__name__} stopped after an error: {message}")

    def _objective_values(self, number: int, counts: Counts, result: dict) -> list[float] | None:
        values = []
        for objective in self.spec.study.objectives:
            known = {"params": counts.params, "flops": counts.flops, LATENCY_MS: self.deployment.latency_ms.get(number)}
            value = known.get(objective.metric, result.get(objective.metric))
            if value is None or not math.isfinite(value):
                return None
            values.append(float(value))
        return values

    def close_open_trials(self, reason: str) -> int:
        """Mark trials still open (Ctrl-C, an error) FAIL and enqueue their parameters again.

        Returns:
            How many trials were open.
        """
        closed = [(number, running.trial) for number, running in self.running.items()]
        for number, trial in closed:
            trial.set_user_attr(INTERRUPTED, reason)
            self.study.tell(trial, state=TrialState.FAIL)
            frozen = self._frozen(number)
            self.study.enqueue_trial(frozen.params, user_attrs={RETRY_OF: number})
            self.running.pop(number)
            self.notify("trial_ended", TrialEnd(number, trial_status(frozen), frozen, at=time.monotonic()))
        return len(closed)


def _in_channels(config: TrialConfig) -> int:
    return getattr(config.model, "in_channels", 3)
