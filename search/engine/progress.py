"""A run's progress as its events tell it (:class:`RunProgress`, the model every view draws):
the trials running now (epoch, last validation accuracy, images/s), the counts, the best so
far, and the time left, estimated from the epoch times measured in this run.

:class:`PlainProgress` is the run's own progress log: the plain lines a run writes to its
``log`` when no view is given (the Python API's default; the CLI's off a terminal: CI, a
pipe, a log file). It stays in the engine because a run without a view must still say how it
goes, and the engine never imports :mod:`search.outputs`. Views that draw the same state
otherwise are outputs the CLI picks: the live table of a terminal (:mod:`search.outputs.live`).

The time left is counted in full-epoch equivalents (an epoch at full image size is 1; one
at half the side about a quarter; half an epoch a half: :mod:`search.budget.compute`), as
each report says what its trial has spent so far: each running trial still has its expected
share to go (the mean the finished trials of this run spent, so pruning and cheaper rungs
shorten it; a full trial's epochs before any finished), each trial not started yet its
start-up and the same; that work, spread over the run's slots, and never less than the
longest running trial still needs. A report without that count (an older worker) counts
its epochs.

- An epoch's time grows with the model's FLOPs, so the estimate keeps seconds per FLOP:
  measured (every report after a trial's first, over its trial's FLOPs times the full-epoch
  equivalents it trained), else the pre-run probe's. A running trial's epochs take its own
  FLOPs' worth; a trial not started yet, the mean FLOPs of the space's configs that fit the
  budget (sampled before the run).
- A trial's first report comes after its start-up (a Ray worker, imports, the data, the
  model) and one epoch (as the trial timed it). The first trial of each slot starts a Ray
  worker; later ones reuse it. Each kind's start-up is measured in this run once a trial of
  that kind has reported; until then it is the pre-run estimate's
  (:class:`~search.engine.cost.StartUp`, the model ``run`` and ``run --dry-run`` print).
- The best so far is the study's: trials finished before this run count.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from optuna.trial import FrozenTrial

from search.config.units import format_duration
from search.engine.events import EpochReport, Log, RunObserver, RunStart, TrialEnd, TrialStart
from search.study.keys import (
    COMPLETE,
    EPOCHS_RUN,
    ERROR,
    FAILED,
    FINISHED_STATUSES,
    FRESH_WORKER,
    FULL_EPOCHS,
    INTERRUPTED,
    PARAMS,
    PRUNED,
    REJECTED,
    trial_status,
)

ENDED_STATUSES = (*FINISHED_STATUSES, REJECTED, INTERRUPTED)  # how a trial of a run can end


@dataclass
class RunningTrial:
    """A trial on Ray now, as its reports describe it."""

    number: int
    n_params: int
    epochs: int
    started: float
    flops: int = 0
    cold: bool = False  # among the first of its slot: it starts a Ray worker
    epoch: int = 0
    full_epochs: float = 0.0  # what it has trained, in full-epoch equivalents
    val_acc: float | None = None
    images_per_s: float | None = None
    last_report: float | None = None


@dataclass
class RunProgress(RunObserver):
    """The run's state, kept from its events (an observer itself)."""

    clock: Callable[[], float] = time.monotonic
    start: RunStart | None = None
    running: dict[int, RunningTrial] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ENDED_STATUSES, 0))
    best: tuple[float, int, int] | None = None  # value, params, trial number
    # After a trial's first report: (seconds, its FLOPs, the full-epoch equivalents trained in them)
    epoch_seconds: list[tuple[float, int, float]] = field(default_factory=list)
    # From a trial's start to its first report: (seconds, its FLOPs, the first epoch as it timed it)
    cold_starts: list[tuple[float, int, float | None]] = field(default_factory=list)  # new Ray workers
    warm_starts: list[tuple[float, int, float | None]] = field(default_factory=list)  # reused workers
    epochs_run: list[float] = field(default_factory=list)  # full-epoch equivalents of the finished
    started_here: int = 0
    maximize: bool = True

    def run_started(self, event: RunStart) -> None:
        self.start = event
        self.maximize = event.maximize
        for trial in event.finished:  # the study's best so far, from before this run
            self._consider(trial)

    def trial_started(self, event: TrialStart) -> None:
        self.started_here += 1
        cold = self.started_here <= (self.start.slots if self.start else 1)
        self.running[event.number] = RunningTrial(
            event.number, event.n_params, event.epochs, self.clock(), event.flops, cold
        )

    def epoch_reported(self, event: EpochReport) -> None:
        trial = self.running.get(event.number)
        if trial is None:
            return
        full = event.metrics.get(FULL_EPOCHS, float(event.epoch))
        if trial.last_report is not None:
            if full > trial.full_epochs:  # a rung validated at an epoch's end trained nothing new
                self.epoch_seconds.append((event.at - trial.last_report, trial.flops, full - trial.full_epochs))
        else:
            trial.cold = bool(event.metrics.get(FRESH_WORKER, trial.cold))  # the trial knows; before, a guess
            starts = self.cold_starts if trial.cold else self.warm_starts
            starts.append((event.at - trial.started, trial.flops, event.metrics.get("elapsed_s")))
        trial.epoch, trial.last_report, trial.full_epochs = event.epoch, event.at, full
        trial.val_acc = event.metrics.get("val_acc", trial.val_acc)
        trial.images_per_s = event.metrics.get("images_per_s", trial.images_per_s)

    def trial_ended(self, event: TrialEnd) -> None:
        trial = self.running.pop(event.number, None)
        self.counts[event.status] = self.counts.get(event.status, 0) + 1
        if event.status in FINISHED_STATUSES:
            attrs = event.trial.user_attrs
            spent = attrs.get(FULL_EPOCHS) or attrs.get(EPOCHS_RUN)
            self.epochs_run.append(spent or (trial.full_epochs if trial else 0))
        self._consider(event.trial)

    def _consider(self, trial: FrozenTrial) -> None:
        """Make ``trial`` the best so far if it is complete and better."""
        if trial_status(trial) != COMPLETE or not trial.values:
            return
        value = trial.values[0]
        if self.best is None or (value > self.best[0] if self.maximize else value < self.best[0]):
            self.best = (value, trial.user_attrs.get(PARAMS, 0), trial.number)

    # ---- what it shows

    @property
    def finished(self) -> int:
        """Trials that count towards ``n_trials``, this run's and earlier ones."""
        before = self.start.finished_before if self.start else 0
        return before + sum(self.counts[s] for s in FINISHED_STATUSES)

    def elapsed(self) -> float:
        return self.clock() - self.start.started if self.start else 0.0

    def _seconds_per_flop(self) -> float | None:
        measured = [(s, f * full) for s, f, full in self.epoch_seconds if f > 0]
        if measured:
            return sum(s for s, _ in measured) / sum(work for _, work in measured)
        if self.start and self.start.epoch_s and self.start.probe_flops:
            return self.start.epoch_s / self.start.probe_flops
        return None

    def epoch_time(self, flops: float | None = None) -> float | None:
        """Seconds per full epoch of a model of ``flops`` FLOPs (default: the space's mean), from
        the measured seconds per FLOP; for an unknown size, the mean epoch or the probe's."""
        flops = flops or (self.start.mean_flops if self.start else None)
        rate = self._seconds_per_flop()
        if rate is not None and flops:
            return rate * flops
        if self.epoch_seconds:
            return sum(s for s, _, _ in self.epoch_seconds) / sum(full for _, _, full in self.epoch_seconds)
        return self.start.epoch_s if self.start else None

    def start_up(self, cold: bool = False) -> float:
        """Seconds a trial pays before its first step, on a new Ray worker (``cold``) or a reused
        one: measured in this run (its start to its first report, less that epoch), else the
        pre-run estimate, else 0."""
        starts = self.cold_starts if cold else self.warm_starts
        ups = [max(0.0, s - (first if first is not None else self.epoch_time(f) or 0.0)) for s, f, first in starts]
        if ups:
            return statistics.fmean(ups)
        estimate = (self.start.cold_s if cold else self.start.warm_s) if self.start else None
        return estimate or 0.0

    def time_left(self) -> float | None:
        """Seconds until the run ends (see the module's docstring); None before anything is known."""
        epoch_s = self.epoch_time()
        if self.start is None or epoch_s is None:
            return None
        now = self.clock()
        expected = statistics.fmean(self.epochs_run) if self.epochs_run else self.start.epochs
        running = []
        for t in self.running.values():
            own = self.epoch_time(t.flops) or epoch_s
            if t.last_report is None:
                running.append(max(0.0, self.start_up(t.cold) + expected * own - (now - t.started)))
            else:
                to_go = max(expected - t.full_epochs, min(1.0, t.epochs - t.full_epochs))
                running.append(max(0.0, to_go * own - (now - t.last_report)))
        to_start = max(0, self.start.n_trials - self.finished - len(self.running))
        cold = min(to_start, max(0, self.start.slots - self.started_here))  # slots that start no worker yet
        start_ups = cold * self.start_up(cold=True) + (to_start - cold) * self.start_up()
        work = sum(running) + start_ups + to_start * expected * epoch_s
        left = max(max(running, default=0.0), work / self.start.slots)
        if self.start.timeout_s is not None:  # after the deadline only the running epochs end
            deadline_left = self.start.timeout_s - (now - self.start.started)
            left = min(left, max(deadline_left, 0.0) + (epoch_s if self.running else 0.0))
        return left

    def best_text(self) -> str:
        if self.best is None:
            return "best -"
        value, params, number = self.best
        return f"best {value:.4f} (trial {number}, {params:,} params)"

    def totals_line(self) -> str:
        """``[3/8] done 2 | running 2 | pruned 1 | failed 0 | rejected 4 | best ... | elapsed | left``."""
        total = self.start.n_trials if self.start else "?"
        left = self.time_left()
        return (
            f"[{self.finished}/{total}] {' | '.join(self.count_parts())} | {self.best_text()} | "
            f"elapsed {format_duration(self.elapsed())} | left {'-' if left is None else '~' + format_duration(left)}"
        )

    def count_parts(self) -> list[str]:
        """``done 2``, ``running 2``, ``pruned 1``, ``failed 0``, ``rejected 4`` and, when some
        were, ``interrupted 1``: the states' words as every view names them."""
        c = self.counts
        parts = [f"done {c[COMPLETE]}", f"running {len(self.running)}", f"pruned {c[PRUNED]}", f"failed {c[FAILED]}"]
        parts.append(f"rejected {c[REJECTED]}")
        return parts + ([f"interrupted {c[INTERRUPTED]}"] if c[INTERRUPTED] else [])

    def running_text(self) -> str:
        """``#4 epoch 2/4 val_acc 0.412, #5 epoch 0/4``."""
        parts = []
        for t in sorted(self.running.values(), key=lambda t: t.number):
            acc = f" val_acc {t.val_acc:.3f}" if t.val_acc is not None else ""
            parts.append(f"#{t.number} epoch {t.epoch}/{t.epochs}{acc}")
        return ", ".join(parts) or "none"


def trial_line(event: TrialEnd, metric: str) -> str:
    """One line for a trial that ended: ``trial 3 complete: val_acc 0.4123 (4 epochs, 74,000 params)``."""
    attrs = event.trial.user_attrs
    size = f"{attrs[PARAMS]:,} params" if PARAMS in attrs else ""
    if event.status == FAILED:
        return f"trial {event.number} failed: {attrs.get(ERROR, 'unknown error')}"
    if event.status == INTERRUPTED:
        return f"trial {event.number} interrupted: {attrs.get(INTERRUPTED, '')}"
    if event.status == REJECTED:
        return f"trial {event.number} rejected: {attrs.get(REJECTED, '')}"
    epochs = attrs.get(EPOCHS_RUN)
    shape = ", ".join(p for p in (f"{epochs} epoch{'s' * (epochs != 1)}" if epochs else "", size) if p)
    if event.status == COMPLETE and event.trial.values:
        return f"trial {event.number} complete: {metric} {event.trial.values[0]:.4f} ({shape})"
    values = event.trial.intermediate_values
    last = f" at {values[max(values)]:.4f}" if values else ""
    return f"trial {event.number} pruned{last} ({shape})"


class PlainProgress(RunProgress):
    """The run's progress log, plain lines: the pre-run block, one line per finished trial (with the totals),
    and at most one progress line per ``every_s`` seconds while trials train.

    Args:
        log: Where the lines go.
        every_s: The least time between two progress lines.
        clock: The time source (tests pass a fake one).
    """

    def __init__(self, log: Log, every_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock=clock)
        self.log = log
        self.every_s = every_s
        self.last_line = clock()

    def run_started(self, event: RunStart) -> None:
        super().run_started(event)
        for line in event.lines:
            self.log(line)
        self.last_line = self.clock()

    def epoch_reported(self, event: EpochReport) -> None:
        super().epoch_reported(event)
        if self.clock() - self.last_line >= self.every_s:
            self.log(f"{self.totals_line()} | now: {self.running_text()}")
            self.last_line = self.clock()

    def trial_ended(self, event: TrialEnd) -> None:
        super().trial_ended(event)
        if event.status == REJECTED:
            return  # counted in the totals: one line each would bury the trials that trained
        metric = self.start.metric if self.start else "value"
        self.log(f"{trial_line(event, metric)} | {self.totals_line()}")
        self.last_line = self.clock()
