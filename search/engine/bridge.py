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
from dataclasses import dataclass, field, replace

import optuna
from optuna.trial import TrialState

from search.budget import Counts, check_budget, constraint_values, count_model, fast_count
from search.config import InvalidSample, InvalidValue, Spec, TorchvisionResNetConfig, TrialConfig
from search.config.units import format_duration
from search.engine.samplers import LEARNS_FROM_REJECTIONS, USES_CONSTRAINTS
from search.engine.trainable import TrialJob
from search.engine.types import Log, ignore
from search.models import build_model
from search.study.notes import write_trial_note
from search.study.schema import (
    EPOCHS_RUN,
    ERROR,
    FLOPS,
    IMAGES_PER_S,
    INTERRUPTED,
    PARAMS,
    RAY_TRIAL_ID,
    REJECTED,
    RETRY_OF,
    TRAIN_TIME_S,
    TRAINABLE_PARAMS,
    is_finished,
)


@dataclass
class Tally:
    """What the progress line shows."""

    done: int = 0
    running: int = 0
    pruned: int = 0
    failed: int = 0
    rejected: int = 0
    best: float | None = None
    best_params: int | None = None
    trial_seconds: list[float] = field(default_factory=list)


class StudyBridge:
    """The driver's side of the study: the only process that writes to it.

    Args:
        study: The Optuna study (its sampler and pruner already set).
        spec: The parsed spec.
        image_size: Input size the budget is counted at.
        data_dir: The ``--data-dir`` given by the user, passed on to the workers.
        use_gpu: Whether trials get a GPU.
        threads: Torch threads per trial.
        log: Where progress lines go.
        reference_check: Count configs that pass the fast check with fvcore too (the budget's
            final word); off only for rehearsals, which train nothing.
    """

    def __init__(
        self,
        study: optuna.Study,
        spec: Spec,
        *,
        image_size: int,
        data_dir: str | None,
        use_gpu: bool,
        threads: int,
        log: Log = ignore,
        reference_check: bool = True,
    ) -> None:
        self.study = study
        self.reference_check = reference_check
        self.spec = spec
        self.image_size = image_size
        self.data_dir = data_dir
        self.use_gpu = use_gpu
        self.threads = threads
        self.log = log
        self.multi_objective = len(spec.study.objectives) > 1
        self.open: dict[int, optuna.Trial] = {}
        self.counts: dict[int, Counts] = {}
        self.started: dict[int, float] = {}
        self.pruned: set[int] = set()
        self.tally = Tally()
        self.finished_before = sum(is_finished(t) for t in study.get_trials(deepcopy=False))
        self.launched = 0
        self.rejections_in_a_row = 0
        self.retry_sampler = optuna.samplers.RandomSampler(seed=spec.study.seed)
        self.stop_reason: str | None = None
        self.start_time = time.monotonic()
        self.train_seconds = 0.0  # the trials' own training time, as they report it

    @property
    def remaining(self) -> int:
        return self.spec.study.n_trials - self.finished_before - self.launched

    # ---- sampling and the budget

    def next_job(self, ray_trial_id: str = "") -> TrialJob | None:
        """Sample until a config fits the budget; None when the study has its trials (or gives up)."""
        while self.remaining > 0 and self.stop_reason is None:
            trial, drawn = self._draw()
            if isinstance(drawn, str):
                self._reject(trial, drawn, None)
                continue
            config, counts = drawn
            reason = check_budget(counts, self.spec.budget)
            if reason is None and self.reference_check:
                counts = self._reference_count(config)
                reason = check_budget(counts, self.spec.budget)
            if reason is not None:
                self._reject(trial, reason, counts)
                continue
            self.rejections_in_a_row = 0
            self._record_counts(trial, counts)
            trial.set_user_attr(RAY_TRIAL_ID, ray_trial_id)
            self.open[trial.number] = trial
            self.counts[trial.number] = counts
            self.started[trial.number] = time.monotonic()
            self.launched += 1
            self.tally.running += 1
            return TrialJob(trial.number, config, self.spec.data, self.data_dir, counts, self.use_gpu, self.threads)
        return None

    def _draw(self) -> tuple[optuna.Trial, tuple[TrialConfig, Counts] | str]:
        """A new trial with its config and fast count, or with why the sample is invalid.

        TPE learns from rejected samples (PRUNED with a constraint value); GP and CMA-ES
        model COMPLETE trials only and would propose a rejected config again, so for them
        the draw after a rejection is random. The swap spans sampling as well: a trial
        asks its sampler lazily, at its first suggestion.
        """
        sampler = self.study.sampler
        if self.rejections_in_a_row and not isinstance(sampler, LEARNS_FROM_REJECTIONS):
            self.study.sampler = self.retry_sampler
        try:
            trial = self.study.ask()
            try:
                config = self.spec.space.sample(trial)
                return trial, (config, fast_count(config.model, self.image_size))
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
        return count_model(build_model(model_config, self.image_size), self.image_size, _in_channels(config))

    def _record_counts(self, trial: optuna.Trial, counts: Counts) -> None:
        trial.set_user_attr(PARAMS, counts.params)
        trial.set_user_attr(TRAINABLE_PARAMS, counts.trainable_params)
        trial.set_user_attr(FLOPS, counts.flops)
        if isinstance(self.study.sampler, USES_CONSTRAINTS):
            for key, value in zip(("params", "flops"), constraint_values(counts, self.spec.budget)):
                trial.set_constraint(key, value)

    def _reject(self, trial: optuna.Trial, reason: str, counts: Counts | None) -> None:
        if counts is not None:
            self._record_counts(trial, counts)
        trial.set_user_attr(REJECTED, reason)
        # PRUNED, not FAIL: TPE learns from pruned trials' constraint values; the
        # ``rejected`` attribute keeps them out of every count and export.
        self.study.tell(trial, state=TrialState.PRUNED)
        write_trial_note(self.study, self._frozen(trial.number), self.spec)
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
        """Record one epoch's metric; True when the pruner says stop."""
        if "epoch" not in result or number not in self.open or self.multi_objective:
            return False
        value = result.get(self.spec.study.objectives[0].metric)
        if value is None or not math.isfinite(value):
            return False
        trial = self.open[number]
        trial.report(value, step=int(result["epoch"]))
        if trial.should_prune():
            self.pruned.add(number)
            return True
        return False

    def finish(self, number: int, result: dict | None, error: bool) -> None:
        """Tell the study how a trial ended (COMPLETE, PRUNED or FAIL)."""
        trial = self.open.pop(number, None)
        if trial is None:
            return
        result = result or {}
        seconds = time.monotonic() - self.started.pop(number)
        self.tally.running -= 1
        self.tally.trial_seconds.append(seconds)
        # A trial's own training time: its summary's, or (pruned) its last epoch report's.
        train_time = result.get("train_time_s") or result.get("elapsed_s") or 0.0
        self.train_seconds += train_time
        trial.set_user_attr(TRAIN_TIME_S, train_time)
        epochs_run = result.get("epochs_run") or result.get("epoch")
        if epochs_run is not None:
            trial.set_user_attr(EPOCHS_RUN, int(epochs_run))
        if IMAGES_PER_S in result:
            trial.set_user_attr(IMAGES_PER_S, result[IMAGES_PER_S])
        failure = result.get(ERROR) or ("the Ray worker died or raised" if error else None)
        values = None
        if failure is None and number not in self.pruned:
            values = self._objective_values(number, result)
            if values is None:
                failure = "the trial reported no finite objective value"
        if failure is not None:
            trial.set_user_attr(ERROR, failure)
            self.study.tell(trial, state=TrialState.FAIL)
            self.tally.failed += 1
            self.log(f"trial {number} failed: {failure}")
        elif number in self.pruned:
            self.study.tell(trial, state=TrialState.PRUNED)
            self.tally.pruned += 1
        else:
            assert values is not None  # set above whenever a trial neither failed nor was pruned
            self.study.tell(trial, values)
            self.tally.done += 1
            self._update_best(values[0], number)
        # Its note in optuna-dashboard, live, from its own record: the cost does not grow with the study.
        write_trial_note(self.study, self._frozen(number), self.spec)
        self.log(self.progress_line())

    def _objective_values(self, number: int, result: dict) -> list[float] | None:
        counts = self.counts.pop(number)
        values = []
        for objective in self.spec.study.objectives:
            value = {"params": counts.params, "flops": counts.flops}.get(objective.metric, result.get(objective.metric))
            if value is None or not math.isfinite(value):
                return None
            values.append(float(value))
        return values

    def _update_best(self, value: float, number: int) -> None:
        maximize = self.spec.study.objectives[0].direction == "maximize"
        if self.tally.best is None or (value > self.tally.best if maximize else value < self.tally.best):
            self.tally.best = value
            self.tally.best_params = self._frozen(number).user_attrs.get(PARAMS)

    def progress_line(self) -> str:
        t = self.tally
        total = self.spec.study.n_trials
        finished = self.finished_before + t.done + t.pruned + t.failed
        best = f"best {t.best:.4f} ({t.best_params:,} params)" if t.best is not None else "best -"
        return (
            f"[{finished}/{total}] done {t.done} | running {t.running} | pruned {t.pruned} | "
            f"failed {t.failed} | rejected {t.rejected} | {best} | {self._eta()}"
        )

    def _eta(self) -> str:
        finished = len(self.tally.trial_seconds)
        if not finished:
            return "ETA -"
        elapsed = time.monotonic() - self.start_time
        left = self.spec.study.n_trials - self.finished_before - finished
        return f"ETA {format_duration(elapsed / finished * left)}"

    def close_open_trials(self, reason: str) -> int:
        """Mark trials still open (Ctrl-C, an error) FAIL and enqueue their parameters again.

        Returns:
            How many trials were open.
        """
        closed = list(self.open.items())
        for number, trial in closed:
            trial.set_user_attr(INTERRUPTED, reason)
            self.study.tell(trial, state=TrialState.FAIL)
            self.study.enqueue_trial(self._frozen(number).params, user_attrs={RETRY_OF: number})
            self.open.pop(number)
        return len(closed)


def _in_channels(config: TrialConfig) -> int:
    return getattr(config.model, "in_channels", 3)
