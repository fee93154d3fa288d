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
IMAGES_PER_S = "images_per_s"
RETRY_OF = "retry_of"  # on an enqueued trial: the number of the interrupted trial it repeats
ACTIVATION_KB = "activation_kb"  # peak activation memory at inference, batch 1, at the budget's precision
MODEL_KB = "model_kb"  # the weights inference reads, at the budget's precision
LATENCY_MS = "latency_ms"  # the measured median latency (its record: the study attribute LATENCY_KEY names)
LATENCY_KEY = "latency_key"  # the study attribute holding the trial's latency measurement

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

STATUSES = ("complete", "pruned", "failed", "rejected", "running", "waiting")


def is_finished(trial: FrozenTrial) -> bool:
    """A trial that counts towards ``n_trials``: trained to the end, pruned, or failed in training."""
    if trial.state == TrialState.COMPLETE:
        return True
    if trial.state == TrialState.PRUNED:
        return REJECTED not in trial.user_attrs
    if trial.state == TrialState.FAIL:
        return INTERRUPTED not in trial.user_attrs
    return False


def trial_status(trial: FrozenTrial) -> str:
    """``complete``, ``pruned``, ``failed``, ``rejected`` (over budget, never trained), ``running``, ``waiting``."""
    if trial.state == TrialState.PRUNED and REJECTED in trial.user_attrs:
        return "rejected"
    return {
        TrialState.COMPLETE: "complete",
        TrialState.PRUNED: "pruned",
        TrialState.FAIL: "failed",
        TrialState.RUNNING: "running",
        TrialState.WAITING: "waiting",
    }[trial.state]


def status_counts(trials: Sequence[FrozenTrial]) -> dict[str, int]:
    """How many trials have each status, every status listed (zeros included)."""
    counts = Counter(trial_status(t) for t in trials)
    return {status: counts.get(status, 0) for status in STATUSES}


def metric_names(study: optuna.Study) -> list[str]:
    """The objectives' metric names (``val_acc``...), or ``value0``... for studies without names."""
    return list(study.metric_names or [f"value{i}" for i in range(len(study.directions))])
