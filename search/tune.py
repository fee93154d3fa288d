"""The search: Ray Tune runs the trials; one Optuna study samples, prunes and records them.

Why not ``ray.tune.search.optuna.OptunaSearch``: it hard-codes a NopPruner, tells
Optuna that trials stopped by a Tune scheduler are COMPLETE, and its restore leaves
RUNNING trials behind. Here the study is the single source of truth and only the
driver writes to it (so SQLite never sees parallel writers):

- :class:`StudyBridge` asks the study for configs, checks them against the budget
  before anything trains (rejected samples are told PRUNED with a constraint value,
  so TPE learns to avoid them, and never count as results), and records reports,
  pruning decisions and outcomes.
- :class:`OptunaSearcher` (a Tune ``Searcher``) and :class:`OptunaPruningScheduler`
  (a Tune ``TrialScheduler``) are thin adapters that hand Tune's calls to the bridge;
  a pruned trial is stopped by Tune at once, which frees its CPU/GPU.
- :func:`run_trial` is the Tune trainable: it loads the uint8 data cache, trains, and
  reports every epoch. Failures become a final report with the reason.

A rerun of the same spec and storage continues the study: trials a killed driver
left RUNNING are marked FAIL and their parameters enqueued again. One driver runs a study
at a time (:class:`search.lease.DriverLease`), and its storage waits out a database that
goes away for a while (:class:`search.storage.RetryingStorage`).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Optional  # Dict/Optional: Tune's own signatures, copied

import optuna
from optuna.trial import TrialState

from search.budget import Counts, check_budget, constraint_values, count_model, count_spec, fast_count
from search.config import InvalidValue, UserError
from search.lease import DriverLease
from search.models import build_model
from search.records import ERROR, INTERRUPTED, REJECTED, SPEC_SOURCE, SPEC_TEXT, is_finished
from search.results import annotate_trial
from search.config import InvalidSample, random_samples
from search.config import (
    DataConfig,
    PrunerConfig,
    SamplerConfig,
    Spec,
    TorchvisionResNetConfig,
    TrialConfig,
    load_spec,
)
from search.storage import RetryingStorage, default_storage, mask_password, open_storage, study_dir

Log = Callable[[str], None]
Trainable = Callable[[dict], None]
# Free space a run wants in the study's folder before it starts (logs, Ray's results, checkpoints).
MIN_FREE_BYTES = 200 * 2**20

# Samplers that learn from pruned infeasible trials (and the random one, which learns nothing).
LEARNS_FROM_REJECTIONS = (optuna.samplers.TPESampler, optuna.samplers.RandomSampler)
# Samplers that read constraint values (CMA-ES warns that it ignores them).
USES_CONSTRAINTS = (optuna.samplers.TPESampler, optuna.samplers.NSGAIISampler, optuna.samplers.GPSampler)


def _ignore(_: str) -> None:
    pass


# --------------------------------------------------------------------------- worker side


@dataclass(frozen=True)
class TrialJob:
    """What a Ray worker needs to train one trial; travels inside the Tune config."""

    number: int
    trial: TrialConfig
    data: DataConfig
    data_dir: str | None
    counts: Counts
    use_gpu: bool
    threads: int


def run_trial(config: dict) -> None:
    """The Tune trainable: train one trial, report every epoch, never raise.

    The last report carries ``final: True`` and either the run's summary or ``error``.
    """
    import torch
    from ray import tune

    from search.data import load_dataset
    from search.train import train

    job: TrialJob = config["job"]
    torch.set_num_threads(job.threads)
    device = "cuda" if job.use_gpu and torch.cuda.is_available() else "cpu"
    counts = {"params": job.counts.params, "flops": job.counts.flops}

    def on_epoch(metrics: Any) -> None:
        tune.report({**_epoch_report(metrics), **counts})

    try:
        data = load_dataset(job.data, data_dir=job.data_dir, download=False)
        result = train(job.trial, data, device=device, callback=on_epoch)
    except Exception as error:  # a failed trial is recorded, the search goes on
        tune.report({"final": True, ERROR: _failure(error), **counts})
        return
    if result.status == "nan":
        tune.report({"final": True, ERROR: f"non-finite loss: {result.reason}", **counts})
        return
    tune.report(
        {
            "final": True,
            "val_acc": result.history[-1].val_acc if result.history else float("nan"),
            "val_loss": result.history[-1].val_loss if result.history else float("nan"),
            "epochs_run": result.epochs_run,
            "train_time_s": result.train_time_s,
            "images_per_s": result.images_per_s,
            **counts,
        }
    )


def _epoch_report(metrics: Any) -> dict:
    keys = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s", "elapsed_s")
    return {key: getattr(metrics, key) for key in keys}


def _failure(error: Exception) -> str:
    """A trial's failure in one line; running out of memory is named as such (on a GPU torch
    raises ``OutOfMemoryError``, on the CPU a ``RuntimeError`` from its allocator)."""
    import torch

    if isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in str(error):
        return f"out of memory: {_first_line(error)}"
    return f"{type(error).__name__}: {_first_line(error)}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


# --------------------------------------------------------------------------- the study


def make_sampler(config: SamplerConfig, seed: int | None) -> optuna.samplers.BaseSampler:
    """The Optuna sampler a spec names. TPE is multivariate, grouped (for conditional
    spaces) and uses the constant liar so that parallel trials spread out."""
    startup = config.n_startup_trials
    if config.name == "tpe":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # `group` is stable in use
            return optuna.samplers.TPESampler(
                n_startup_trials=startup, multivariate=True, group=True, constant_liar=True, seed=seed
            )
    if config.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if config.name == "gp":
        return optuna.samplers.GPSampler(n_startup_trials=startup, seed=seed)
    if config.name == "cmaes":
        return optuna.samplers.CmaEsSampler(n_startup_trials=startup, seed=seed, warn_independent_sampling=False)
    return optuna.samplers.NSGAIISampler(seed=seed)


def make_pruner(config: PrunerConfig, max_epochs: int) -> optuna.pruners.BasePruner:
    """The Optuna pruner a spec names; the step is the epoch."""
    if config.name == "median":
        return optuna.pruners.MedianPruner(config.n_startup_trials, config.n_warmup_steps)
    if config.name == "percentile":
        return optuna.pruners.PercentilePruner(config.percentile, config.n_startup_trials, config.n_warmup_steps)
    if config.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=config.min_resource, reduction_factor=config.reduction_factor
        )
    if config.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=config.min_resource, max_resource=max_epochs, reduction_factor=config.reduction_factor
        )
    return optuna.pruners.NopPruner()


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
        log: Log = _ignore,
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
            trial, config, counts, invalid = self._draw()
            if invalid is not None:
                self._reject(trial, invalid, None)
                continue
            reason = check_budget(counts, self.spec.budget)
            if reason is None and self.reference_check:
                counts = self._reference_count(config)
                reason = check_budget(counts, self.spec.budget)
            if reason is not None:
                self._reject(trial, reason, counts)
                continue
            self.rejections_in_a_row = 0
            self._record_counts(trial, counts)
            trial.set_user_attr("ray_trial_id", ray_trial_id)
            self.open[trial.number] = trial
            self.counts[trial.number] = counts
            self.started[trial.number] = time.monotonic()
            self.launched += 1
            self.tally.running += 1
            return TrialJob(trial.number, config, self.spec.data, self.data_dir, counts, self.use_gpu, self.threads)
        return None

    def _draw(self) -> tuple[optuna.Trial, TrialConfig | None, Counts | None, str | None]:
        """A new trial, its config and fast count, or why the sample is invalid.

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
                return trial, config, fast_count(config.model, self.image_size), None
            except (InvalidSample, InvalidValue) as error:
                return trial, None, None, str(error)
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
        trial.set_user_attr("params", counts.params)
        trial.set_user_attr("trainable_params", counts.trainable_params)
        trial.set_user_attr("flops", counts.flops)
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
        annotate_trial(self.study, self._frozen(trial.number), curves=False, spec=self.spec)  # not a real pruning
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
        trial.set_user_attr("train_time_s", train_time)
        epochs_run = result.get("epochs_run") or result.get("epoch")
        if epochs_run is not None:
            trial.set_user_attr("epochs_run", int(epochs_run))
        if "images_per_s" in result:
            trial.set_user_attr("images_per_s", result["images_per_s"])
        failure = result.get(ERROR) or ("the Ray worker died or raised" if error else None)
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
            self.study.tell(trial, values)
            self.tally.done += 1
            self._update_best(values[0], number)
        annotate_trial(self.study, self._frozen(number), spec=self.spec)  # its note in optuna-dashboard, live
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
            self.tally.best_params = self._frozen(number).user_attrs.get("params")

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
            self.study.enqueue_trial(self._frozen(number).params, user_attrs={"retry_of": number})
            self.open.pop(number)
        return len(closed)


def _in_channels(config: TrialConfig) -> int:
    return getattr(config.model, "in_channels", 3)


def format_duration(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``3700`` -> ``1h01m``."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def recover_interrupted(study: optuna.Study) -> int:
    """Trials a killed driver left RUNNING: mark them FAIL and enqueue their parameters again.

    Returns:
        How many trials were recovered.
    """
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for frozen in stale:
        optuna.Trial(study, frozen._trial_id).set_user_attr(INTERRUPTED, "the driver stopped before it finished")
        study.tell(frozen.number, state=TrialState.FAIL)
        study.enqueue_trial(frozen.params, user_attrs={"retry_of": frozen.number})
    return len(stale)


# --------------------------------------------------------------------------- Tune adapters


def _tune_classes() -> tuple[type, type]:
    """The Tune adapters, defined on first use so that importing this module stays light."""
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler
    from ray.tune.search import Searcher

    class OptunaSearcher(Searcher):
        """A Tune ``Searcher`` over the bridge's study (ask/tell; the study is the truth)."""

        def __init__(self, bridge: StudyBridge) -> None:
            super().__init__(metric=None, mode=None)
            self.bridge = bridge
            self.numbers: dict[str, int] = {}

        def suggest(self, trial_id: str) -> Optional[Dict]:
            job = self.bridge.next_job(ray_trial_id=trial_id)
            if job is None:
                return Searcher.FINISHED
            self.numbers[trial_id] = job.number
            return {"job": job}

        def on_trial_complete(self, trial_id: str, result: Optional[Dict] = None, error: bool = False) -> None:
            number = self.numbers.pop(trial_id, None)
            if number is not None:
                self.bridge.finish(number, result, error)

        def save(self, checkpoint_path: str) -> None:
            """Nothing to save: the study in the storage is the searcher's whole state."""

        def restore(self, checkpoint_path: str) -> None:
            """Nothing to restore: a rerun reloads the study (see :func:`recover_interrupted`)."""

        def __getstate__(self) -> dict:
            return _without_bridge(self)

    class OptunaPruningScheduler(FIFOScheduler):
        """A Tune ``TrialScheduler`` that asks the study's Optuna pruner after every report."""

        def __init__(self, bridge: StudyBridge) -> None:
            super().__init__()
            self.bridge = bridge

        def on_trial_result(self, tune_controller: "TuneController", trial: "Trial", result: Dict) -> str:
            job: TrialJob = trial.config["job"]
            if self.bridge.report(job.number, result):
                return TrialScheduler.STOP
            return TrialScheduler.CONTINUE

        def __getstate__(self) -> dict:
            return _without_bridge(self)

    return OptunaSearcher, OptunaPruningScheduler


def _without_bridge(adapter: object) -> dict:
    """An adapter's pickled state. Tune pickles its searcher and scheduler into ``tuner.pkl``;
    the bridge holds the storage (and its URL's password), and a rerun resumes from the study,
    never from that file, so the bridge stays out."""
    return {**vars(adapter), "bridge": None}


# --------------------------------------------------------------------------- the run


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

    def table(self) -> str:
        lines = [
            f"study {self.study_name}: {self.finished} finished trials, {self.rejected} samples rejected for the budget",
            f"wall time {format_duration(self.wall_time_s)}, search overhead {self.overhead:.1%} of it",
            "",
            f"{'trial':>5}  {'value':>8}  {'params':>11}  {'FLOPs':>15}  epochs",
        ]
        for trial in self.top:
            attrs = trial.user_attrs
            lines.append(
                f"{trial.number:>5}  {trial.values[0]:>8.4f}  {attrs.get('params', 0):>11,}  "
                f"{attrs.get('flops', 0):>15,}  {attrs.get('epochs_run', '-')}"
            )
        storage = f" --storage {self.storage}" if self.storage != default_storage(self.study_name) else ""
        lines += [
            "",
            f"watch:   resnet-search dashboard{storage} --study {self.study_name}",
            f"export:  resnet-search export{storage} --study {self.study_name} --top 3",
            f"retrain: resnet-search retrain{storage} --study {self.study_name} --top 3 --seeds 0,1,2",
            f"report:  resnet-search report{storage} --study {self.study_name}",
        ]
        return "\n".join(lines)


def create_study(spec: Spec, storage: str | optuna.storages.BaseStorage) -> optuna.Study:
    """Create or load the spec's study; a new study gets the spec's warm-start configs enqueued.

    Args:
        spec: The parsed spec.
        storage: An Optuna storage URL, or a storage (in memory, for rehearsals).
    """
    storage = open_storage(storage) if isinstance(storage, str) else storage
    objectives = spec.study.objectives
    existing = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    resuming = spec.study.name in existing
    n_before = len(optuna.load_study(study_name=spec.study.name, storage=storage).trials) if resuming else 0
    seed = None if spec.study.seed is None else spec.study.seed + n_before  # no replay of old draws
    study = optuna.create_study(
        study_name=spec.study.name,
        storage=storage,
        load_if_exists=True,
        directions=[o.direction for o in objectives],
        sampler=make_sampler(spec.study.sampler, seed),
        pruner=make_pruner(spec.study.pruner, _max_epochs(spec)),
    )
    if not resuming:
        study.set_user_attr(SPEC_TEXT, spec.text)  # export and report rebuild trials from it
        study.set_user_attr(SPEC_SOURCE, spec.source)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([o.metric for o in objectives])
        for params in warm_start_params(spec):
            study.enqueue_trial(params)
    return study


def _max_epochs(spec: Spec) -> int:
    return max((c.train.epochs for c in random_samples(spec.space, 20, seed=0)), default=1)


def warm_start_params(spec: Spec) -> list[dict]:
    """The Optuna parameters of each ``study.enqueue`` file, mapped into the spec's space.

    Raises:
        SpecError: an enqueued file is not a fixed config of this space.
    """
    from search.config import SpecError

    base = Path(spec.source).parent
    out = []
    for index, name in enumerate(spec.study.enqueue):
        config = load_spec(base / name).fixed()
        try:
            out.append(spec.space.params_of(config))
        except ValueError as error:
            raise SpecError(spec.source, f"study.enqueue[{index}]", f"{name} is not in this space: {error}") from None
    return out


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
    from search.data import load_dataset

    require_space(spec)
    _check_weights(spec)
    storage_url = storage or default_storage(spec.study.name)
    opened = RetryingStorage(open_storage(storage_url), on_retry=log)  # a wrong URL or password fails here
    out_dir = study_dir(spec.study.name).resolve()
    _check_writable(out_dir)
    spec, data_dir = _absolute_data_paths(spec, data_dir)
    data = load_dataset(spec.data, data_dir=data_dir, download=download)  # once, before any trial: builds the cache
    _check_space_fits(spec, data.image_size)
    with _logs_to(out_dir / "ray.log"), _ray(address) as cluster:
        use_gpu = _check_resources(spec, cluster, log)
        study = create_study(spec, opened)
        with DriverLease(study):
            recovered = recover_interrupted(study)
            if recovered:
                log(f"{recovered} trial(s) left running by an earlier driver were marked FAIL and enqueued again")
            bridge = StudyBridge(study, spec, image_size=data.image_size, data_dir=data_dir, use_gpu=use_gpu,
                                 threads=max(1, int(spec.resources.cpu)), log=log)
            log(f"study {spec.study.name} in {mask_password(storage_url)}: "
                f"{bridge.finished_before}/{spec.study.n_trials} trials finished before this run")
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


def require_space(spec: Spec) -> None:
    """Raises UserError for a fixed spec: there is nothing to search."""
    if spec.is_fixed:
        raise UserError(f"{spec.source}: model/train: nothing to search, every key is fixed; "
                        f"train it with: resnet-search train {spec.source}")


def _check_weights(spec: Spec) -> None:
    """Pretrained weights that cannot be found or do not fit fail the run before any trial,
    not every trial: each architecture the space samples is built with its weights once.

    Raises:
        UserError: the weights a sampled config names are neither a file nor in the hub
            cache, or their names or shapes do not fit the architecture.
    """
    configs = [c.model for c in random_samples(spec.space, 20, seed=0)]
    with_weights = {(c.name, c.num_classes, c.weights): c for c in configs
                    if isinstance(c, TorchvisionResNetConfig) and c.weights is not None}
    for config in with_weights.values():
        try:
            build_model(config)  # loads the weights; torchvision's ResNets take any input size
        except UserError as error:
            raise UserError(f"{spec.source}: model.weights: {error}") from None


def _check_space_fits(spec: Spec, image_size: int) -> None:
    """A budget that no config of the space meets fails before the study is written to.

    Raises:
        UserError: none of the space's low end and 2,000 random samples fits; names the smallest.
    """
    report = count_spec(spec, image_size=image_size)
    if not report.fitting:
        raise UserError(
            f"{spec.source}: budget: no config of the space fits ({report.smallest_line()}); "
            "raise budget.max_params/max_flops or shrink the space (fewer blocks, narrower widths)"
        )


def _absolute_data_paths(spec: Spec, data_dir: str | None) -> tuple[Spec, str | None]:
    """Tune runs each trial in a folder of its own: data paths must not depend on the cwd."""
    if spec.data.root:
        spec = replace(spec, data=replace(spec.data, root=str(Path(spec.data.root).resolve())))
    return spec, str(Path(data_dir).resolve()) if data_dir else None


@contextmanager
def _ray(address: str | None) -> Iterator[dict]:
    """Join the cluster at ``address``, or start a local Ray that lives as long as the run.

    Yields:
        The cluster's resources (``ray.cluster_resources()``).
    """
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING, configure_logging=False, runtime_env=_worker_env())
    try:
        with _through_root("ray"):
            yield ray.cluster_resources()
    finally:
        if started:
            ray.shutdown()


def _tuner(bridge: StudyBridge, out_dir: Path, trainable: Trainable) -> Any:
    """A Tune run whose trials the bridge samples, prunes and records."""
    from ray import tune

    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # the study records results
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no experiment banner: the progress lines are ours
    searcher_cls, scheduler_cls = _tune_classes()
    resources = bridge.spec.resources
    return tune.Tuner(
        tune.with_resources(trainable, {"cpu": resources.cpu, "gpu": resources.gpu if bridge.use_gpu else 0}),
        tune_config=tune.TuneConfig(
            search_alg=searcher_cls(bridge),
            scheduler=scheduler_cls(bridge),
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
    sign = -1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1
    return SearchSummary(
        study_name=study.study_name,
        storage=mask_password(storage_url),
        finished=sum(is_finished(t) for t in trials),
        rejected=sum(REJECTED in t.user_attrs for t in trials),
        wall_time_s=wall,
        trial_time_s=bridge.train_seconds,
        slots=bridge.spec.resources.max_concurrent,
        interrupted=interrupted,
        top=tuple(sorted(complete, key=lambda t: sign * t.values[0])[:5]),
    )


def _trial_name(trial: Any) -> str:
    return f"trial_{trial.config['job'].number}"


def _check_resources(spec: Spec, cluster: dict, log: Log) -> bool:
    """Whether trials get GPUs. A GPU (or part of one) per trial and no GPU at all: run on the
    CPU and say so, so that a GPU spec also runs on a laptop; more GPUs than exist: an error."""
    wanted = spec.resources.gpu
    have = cluster.get("GPU", 0)
    if 0 < wanted <= 1 and have == 0:
        log(f"resources.gpu is {wanted:g} per trial but the Ray cluster has no GPU: trials run on the CPU")
        return False
    if wanted > have:
        raise UserError(f"{spec.source}: resources.gpu: {wanted:g} GPUs per trial, the Ray cluster has {have:g}; "
                        "a trial trains on one GPU, so use at most 1 (a fraction packs trials on a GPU)")
    if spec.resources.cpu > cluster.get("CPU", 0):
        raise UserError(
            f"{spec.source}: resources.cpu: {spec.resources.cpu:g} CPUs per trial, "
            f"the Ray cluster has {cluster.get('CPU', 0):g}"
        )
    return wanted > 0


def _check_writable(directory: Path) -> None:
    """A study folder that cannot be written, or a disk that is (nearly) full, fails before any training.

    Raises:
        UserError: the folder cannot be made or written, or has under ``MIN_FREE_BYTES`` free.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".write-test"
        with probe.open("wb") as file:
            file.write(b"0" * 4096)
            file.flush()
            os.fsync(file.fileno())  # a full disk may only say so when the data is written out
        probe.unlink()
        free = shutil.disk_usage(directory).free
    except OSError as error:
        raise UserError(f"{directory}: cannot write the study's folder ({error.strerror or error})") from None
    if free < MIN_FREE_BYTES:
        raise UserError(f"{directory}: only {free / 2**20:.0f} MiB free on its disk; "
                        f"a run needs at least {MIN_FREE_BYTES // 2**20} MiB: free some space")


def _worker_env() -> dict:
    """Our environment variables, for workers on other nodes (local workers inherit them)."""
    names = ("RESNET_SEARCH_CACHE", "RESNET_SEARCH_DATA", "XDG_CACHE_HOME")
    return {"env_vars": {name: os.environ[name] for name in names if name in os.environ}}


@contextmanager
def _logs_to(path: Path) -> Iterator[None]:
    """Send library log records to ``path`` while a run lasts: the terminal shows our progress
    lines only (see also :func:`_through_root`). The file handler sits on the root logger and
    stands in as ``logging.lastResort``, which gets the records of loggers that Ray leaves
    without handlers or propagation while it starts."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root, last_resort = logging.getLogger(), logging.lastResort
    root.addHandler(handler)
    logging.lastResort = handler
    try:
        yield
    finally:
        logging.lastResort = last_resort
        root.removeHandler(handler)
        handler.close()


@contextmanager
def _through_root(prefix: str) -> Iterator[None]:
    """Set aside the handlers of the loggers under ``prefix`` so that their records reach the
    root logger's (our file). Ray gives its loggers stream handlers when it starts, and Tune
    would print, say, its advice to resume with ``Tuner.restore``, which is not how ours resumes."""
    loggers = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n.startswith(prefix)]
    saved = {logger: (logger.handlers, logger.propagate) for logger in loggers}
    for logger in loggers:
        logger.handlers, logger.propagate = [], True
    try:
        yield
    finally:
        for logger, (handlers, propagate) in saved.items():
            logger.handlers, logger.propagate = handlers, propagate
