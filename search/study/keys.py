"""Every key the search stores on an Optuna study or trial, in one place, and what a trial's
stored state means. Nothing else spells a stored key as a string: studies written by any
earlier version keep opening because these values never change.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

# --- on a trial (user attributes)
REJECTED = "rejected"  # why a sample was not trained (over budget); the trial is PRUNED
INTERRUPTED = "interrupted"  # why a trial did not finish (driver stopped); the trial is FAIL
ERROR = "error"  # why a trial failed in training
PARAMS = "params"  # parameter count of the trial's model
TRAINABLE_PARAMS = "trainable_params"
FLOPS = "flops"  # fvcore's convention: one fused multiply-add is one FLOP, one image
RAY_TRIAL_ID = "ray_trial_id"  # the Tune trial that trained it
TRAIN_TIME_S = "train_time_s"  # the trial's own training time, as it reported it
EPOCHS_RUN = "epochs_run"
FULL_EPOCHS = "full_epochs"  # training spent so far in full-epoch equivalents (images x FLOPs per image)
IMAGES_PER_S = "images_per_s"
RETRY_OF = "retry_of"  # on an enqueued trial: the number of the interrupted trial it repeats
STARTUP_S = "startup_s"  # seconds from the driver sending the trial to Ray to its first training step
FRESH_WORKER = "fresh_worker"  # True: the trial started a new Ray worker (it paid the worker's start-up)
ACTIVATION_KB = "activation_kb"  # peak activation memory at inference, batch 1, at the budget's precision
MODEL_KB = "model_kb"  # the weights inference reads, at the budget's precision
LATENCY_MS = "latency_ms"  # the measured median latency (its record: the study attribute LATENCY_KEY names)
LATENCY_KEY = "latency_key"  # the study attribute holding the trial's latency measurement
CONFIG_KEY = "config_key"  # a hash of what the trial trains: its whole config (seed included) and the data
REPEAT_OF = "repeat_of"  # the number of the trained trial whose record answered this one (never trained)
PRIOR_DESIGN = "prior_design"  # the index in study.prior.designs of the design the trial was sampled near

# --- on the study (user attributes)
SPEC_TEXT = "spec"  # the spec's YAML: the space every trial's parameters belong to
SPEC_SOURCE = "spec_source"  # the spec's file name as the user gave it
DRIVER = "driver"  # the driver running the study now: host, pid, token, heartbeat (lease.py)
LEADERBOARD = "leaderboard"  # written by retrain, shown by the report
DATA = "data"  # the data the study searched: location, classes, counts per split, hash (DataRecord)
MODELS = "models"  # trial number (a string) -> model folder holding its weights, for the best K trials
LATENCY_CACHE = "latency:"  # + a key of architecture, settings and machine: one latency measurement

# --- optuna-dashboard's custom plot of every trial's learning curve
LEARNING_CURVES_ID = "learning_curves"

# A trial's display state, the one vocabulary of every view (live table, ``studies``, the report,
# ``trials.csv``, dashboard notes, trackers): Optuna's states, with our stored reasons refining two.
COMPLETE, PRUNED, FAILED = "complete", "pruned", "failed"
STATUSES = (COMPLETE, PRUNED, FAILED, INTERRUPTED, REJECTED, "running", "waiting")
FINISHED_STATUSES = (COMPLETE, PRUNED, FAILED)  # what counts towards ``n_trials``


def trial_status(trial: FrozenTrial) -> str:
    """A stored trial's display state, from its Optuna state and the reason stored with it.

    ``rejected``: PRUNED with a :data:`REJECTED` reason (over the budget, never trained).
    ``interrupted``: FAIL with an :data:`INTERRUPTED` reason (the time budget, Ctrl-C or a
    killed driver stopped it; the next run trains it again): not a failure of the trial.
    Otherwise Optuna's state in lower case: ``complete``, ``pruned``, ``failed``,
    ``running``, ``waiting``.
    """
    attrs = trial.user_attrs
    if trial.state == TrialState.PRUNED and REJECTED in attrs:
        return REJECTED
    if trial.state == TrialState.FAIL and INTERRUPTED in attrs:
        return INTERRUPTED
    return {
        TrialState.COMPLETE: COMPLETE,
        TrialState.PRUNED: PRUNED,
        TrialState.FAIL: FAILED,
        TrialState.RUNNING: "running",
        TrialState.WAITING: "waiting",
    }[trial.state]


def is_finished(trial: FrozenTrial) -> bool:
    """A trial that counts towards ``n_trials``: trained to the end, pruned, or failed in training."""
    return trial_status(trial) in FINISHED_STATUSES


def status_counts(trials: Sequence[FrozenTrial]) -> dict[str, int]:
    """How many trials have each status, every status listed (zeros included)."""
    counts = Counter(trial_status(t) for t in trials)
    return {status: counts.get(status, 0) for status in STATUSES}


def metric_names(study: optuna.Study) -> list[str]:
    """The objectives' metric names (``val_acc``...), or ``value0``... for studies without names."""
    return list(study.metric_names or [f"value{i}" for i in range(len(study.directions))])
