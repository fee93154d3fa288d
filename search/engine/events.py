"""What a run tells its observers: the live view, the plain progress lines and the trackers
(TensorBoard, MLflow) all learn what happens from these events, which the driver's
:class:`~search.engine.bridge.StudyBridge` sends from what the trials report through Ray, so
they work the same on a laptop and on a cluster.

An observer subclasses :class:`RunObserver` and overrides the methods it needs; the bridge
calls them in the driver's main thread. An observer that raises is dropped for the rest of
the run with one line saying so: a tracker that fails never costs a trial.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial


@dataclass(frozen=True)
class RunStart:
    """What a run is about to do, said before its first trial.

    ``lines`` is the pre-run block as printed; ``n_trials`` the finished trials the study has
    when the run is done; ``epoch_s`` is the probe's estimate of one epoch of a median-size
    config of ``probe_flops`` FLOPs (None: not measured); ``mean_flops`` the mean FLOPs of the
    space's configs that fit the budget, what a trial still to start costs; ``cold_s`` and
    ``warm_s`` what a trial pays before its first step on a new Ray worker and on a reused one
    (:class:`~search.engine.cost.StartUp`); ``timeout_s`` the time budget.
    ``finished`` lists the study's trials that ended before this run (trackers add those
    they lack, so a resumed run is complete there too).
    """

    study_name: str
    n_trials: int
    finished_before: int
    slots: int
    epochs: int
    started: float  # time.monotonic() at the run's start
    objectives: tuple[str, ...] = ("val_acc",)  # the metric of each objective
    maximize: bool = True  # the first objective's direction
    timeout_s: float | None = None
    epoch_s: float | None = None
    probe_flops: int | None = None
    mean_flops: float | None = None
    cold_s: float | None = None
    warm_s: float | None = None
    lines: tuple[str, ...] = ()
    finished: tuple[FrozenTrial, ...] = ()

    @property
    def metric(self) -> str:
        """The first objective's metric: what the pruner and the best-so-far follow."""
        return self.objectives[0]


@dataclass(frozen=True)
class TrialStart:
    """A trial passed the budget and goes to Ray."""

    number: int
    params: dict[str, Any]  # its Optuna parameters
    n_params: int
    flops: int
    epochs: int


@dataclass(frozen=True)
class EpochReport:
    """One epoch of a trial, as the trial reported it (``epoch``, ``train_loss``, ``train_acc``,
    ``val_loss``, ``val_acc``, ``lr``, ``images_per_s``, ``elapsed_s``, and ``fresh_worker``: 1.0
    when the trial started its Ray worker, 0.0 when it reused one)."""

    number: int
    epoch: int
    metrics: dict[str, float]
    at: float  # time.monotonic() when the driver received it


@dataclass(frozen=True)
class TrialEnd:
    """A trial ended. ``status``: its stored record's display state
    (:func:`~search.study.keys.trial_status`): ``complete``, ``pruned``, ``failed``,
    ``rejected`` (over the budget, never trained) or ``interrupted`` (by the time budget,
    Ctrl-C or an error of the run; trained again by the next run). ``trial`` is its stored
    record after the outcome was told; ``result`` its last report."""

    number: int
    status: str
    trial: FrozenTrial
    result: dict[str, Any] = field(default_factory=dict)
    at: float = 0.0


@dataclass(frozen=True)
class RunEnd:
    """The run is over; ``reason`` says why when it ended before its trials (the time budget).
    ``models``: trial number -> the model folder the study keeps for it (``run --keep``)."""

    reason: str | None = None
    models: dict[int, str] = field(default_factory=dict)


class RunObserver:
    """Receives a run's events; every method does nothing unless overridden."""

    def run_started(self, event: RunStart) -> None:
        """Before the first trial."""

    def trial_started(self, event: TrialStart) -> None:
        """A trial goes to Ray."""

    def epoch_reported(self, event: EpochReport) -> None:
        """A trial reported an epoch."""

    def trial_ended(self, event: TrialEnd) -> None:
        """A trial ended (or was rejected for the budget)."""

    def run_ended(self, event: RunEnd) -> None:
        """After the last trial, before Ray shuts down; also on Ctrl-C and errors."""


# Callable types the engine's functions take.
Log = Callable[[str], None]  # receives one progress line
Trainable = Callable[[dict], None]  # a Tune function trainable


def ignore(_: str) -> None:
    """A :data:`Log` that drops every line."""
