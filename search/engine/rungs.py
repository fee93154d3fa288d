"""Successive halving at a spec's own rungs (``study.pruner.rungs``): the Optuna step of a rung
report is the rung's index, so every trial is compared with its peers at the same point of
training, whatever its epochs, and the rung reports are the only ones the pruner sees.

The rule is Optuna's asynchronous successive halving (``SuccessiveHalvingPruner``) with its
rungs at steps 0, 1, 2... instead of ``min_resource * reduction_factor**k``: a trial at a
rung goes on when its value is among the best ``1 / reduction_factor`` of the values every
trial reported there so far (itself included; the first trial at a rung always goes on).
"""

from __future__ import annotations

import math

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from search.config import Rung, SpecError

# The trials whose rung values count: running ones too (asynchronous halving).
_PEER_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


class RungHalvingPruner(optuna.pruners.BasePruner):
    """Successive halving whose rung ``k`` is the Optuna step ``k`` (see the module's docstring).

    Args:
        reduction_factor: The share of trials that go on from a rung is ``1 / reduction_factor``.
        n_rungs: Steps from this many on are not rungs: never pruned.
    """

    def __init__(self, reduction_factor: int, n_rungs: int) -> None:
        self.reduction_factor = reduction_factor
        self.n_rungs = n_rungs

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step >= self.n_rungs:
            return False
        value = trial.intermediate_values[step]
        if math.isnan(value):
            return True
        peers = [
            t.intermediate_values[step]
            for t in study.get_trials(deepcopy=False, states=_PEER_STATES)
            if step in t.intermediate_values and not math.isnan(t.intermediate_values[step])
        ]
        maximize = study.direction == StudyDirection.MAXIMIZE
        ranked = sorted(peers, reverse=maximize)
        bar = ranked[max(len(ranked) // self.reduction_factor - 1, 0)]
        return value < bar if maximize else value > bar


def check_rungs(rungs: tuple[Rung, ...], image_size: int, source: str) -> None:
    """Refuse a rung whose sides exceed the trials' image size (a rung trains and validates
    on the images downscaled, never enlarged).

    Raises:
        SpecError: naming the rung's key and the trials' size.
    """
    for index, rung in enumerate(rungs):
        for key in ("image_size", "val_image_size"):
            side = getattr(rung, key)
            if side is not None and side > image_size:
                raise SpecError(
                    source,
                    f"study.pruner.rungs[{index}].{key}",
                    f"{side} is above the trials' image size {image_size}; a rung trains or validates smaller",
                )
