"""What a search records on an Optuna study, in one place: the user attributes the search
writes and the results read, and which trials count as finished."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

# On trials.
REJECTED = "rejected"  # why a sample was not trained (over budget); the trial is PRUNED
INTERRUPTED = "interrupted"  # why a trial did not finish (driver stopped); the trial is FAIL
ERROR = "error"  # why a trial failed in training

# On the study.
SPEC_TEXT = "spec"  # the spec's YAML: the space every trial's parameters belong to
SPEC_SOURCE = "spec_source"  # the spec's file name as the user gave it
DRIVER = "driver"  # the driver running the study now: host, pid, token, heartbeat (search/lease.py)


def is_finished(trial: optuna.trial.FrozenTrial) -> bool:
    """A trial that counts towards ``n_trials``: trained to the end, pruned, or failed in training."""
    if trial.state == TrialState.COMPLETE:
        return True
    if trial.state == TrialState.PRUNED:
        return REJECTED not in trial.user_attrs
    if trial.state == TrialState.FAIL:
        return INTERRUPTED not in trial.user_attrs
    return False
