"""What a run is told besides its spec, as one object: :class:`RunOptions`, the flags of
``resnet-search run`` (each field has its flag's name: ``data_dir`` is ``--data-dir``).

The spec says what to search; the options say where and how this run goes: the study's
storage, the data's location, the Ray cluster and device, how long and how many trials,
which weights to keep, and who hears of it. They travel down the run as this one frozen
object, not as loose parameters, and are checked where the run starts
(:func:`~search.engine.run.with_budgets`, :func:`~search.engine.checks.with_device`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from search.engine.events import Log, RunObserver, Trainable
from search.engine.keep import DEFAULT_KEEP
from search.engine.trainable import run_trial


@dataclass(frozen=True)
class RunOptions:
    """How one run of a spec's search goes (``resnet-search run``'s flags).

    Attributes:
        storage: An Optuna storage URL; default ``sqlite:///studies/<name>.db``.
        data_dir: Data location (beats the data the study recorded, and ``data.root``).
        download: Whether a known dataset found nowhere may be downloaded.
        address: A Ray cluster to join (``ray start --head``); default: a local Ray of our own.
        device: ``cpu`` or ``cuda`` (required) for every trial, whatever ``resources.gpu`` says
            (:func:`~search.engine.checks.with_device`); default: as the spec says.
        timeout: A time budget from now (seconds, or ``"90s"``, ``"30m"``, ``"2h"``, ``"1d"``;
            beats ``study.timeout``): no trial starts after it and running trials stop at
            their next epoch report (FAIL, ``interrupted``; the next run trains them again).
        n_trials: Finished trials to add in this run (Optuna's ``optimize(n_trials=...)``);
            default: up to the study's total, ``study.n_trials``.
        keep: The best ``keep`` complete trials keep their weights (:mod:`~search.engine.keep`); 0: none.
        observers: Told of every trial's events, with the spec's trackers; default: progress
            lines to ``log`` (:class:`~search.engine.progress.PlainProgress`).
        log: Where progress lines go.
        trainable: The Tune trainable (default :func:`~search.engine.trainable.run_trial`;
            tests wrap it to inject faults).
    """

    storage: str | None = None
    data_dir: str | None = None
    download: bool = True
    address: str | None = None
    device: str | None = None
    timeout: float | str | None = None
    n_trials: int | None = None
    keep: int = DEFAULT_KEEP
    observers: Sequence[RunObserver] | None = None
    log: Log = print
    trainable: Trainable = run_trial
