"""Ray Tune's side of the bridge: a ``Searcher`` and a ``TrialScheduler`` that hand Tune's
calls to :class:`~search.engine.bridge.StudyBridge`, and a ``Callback`` that hands trials'
checkpoints (their model folders) to :class:`~search.engine.keep.ModelKeeper`. Their method
signatures are Tune's own (ray 2.60), copied; this is the one module of the engine that
imports Ray at its top.

A pruned trial is stopped by Tune at once, which frees its CPU/GPU.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Dict, List, Optional  # Tune's own signatures, copied  # noqa: UP035

from ray.tune import Callback
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from search.engine.bridge import StudyBridge
from search.engine.keep import ModelKeeper
from search.engine.trainable import KEEP_ERROR, TrialJob, TrialOutput

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment import Trial


class OptunaSearcher(Searcher):
    """A Tune ``Searcher`` over the bridge's study (ask/tell; the study is the truth).

    Args:
        bridge: The driver's bridge to the study.
        output: What every trial needs to hand its model back (``run --keep``); None: nothing.
    """

    def __init__(self, bridge: StudyBridge, output: TrialOutput | None = None) -> None:
        super().__init__(metric=None, mode=None)
        self.bridge: StudyBridge | None = bridge
        self.output = output
        self.numbers: dict[str, int] = {}

    def suggest(self, trial_id: str) -> Optional[Dict]:  # noqa: UP006
        assert self.bridge is not None
        job = self.bridge.next_job(ray_trial_id=trial_id)
        if job is None:
            return Searcher.FINISHED  # type: ignore[return-value]  # Tune's sentinel string
        self.numbers[trial_id] = job.number
        return {"job": replace(job, output=self.output)}

    def on_trial_complete(self, trial_id: str, result: Optional[Dict] = None, error: bool = False) -> None:  # noqa: UP006
        number = self.numbers.pop(trial_id, None)
        if number is not None and self.bridge is not None:
            self.bridge.finish(number, result, error)

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the study in the storage is the searcher's whole state."""

    def restore(self, checkpoint_path: str) -> None:
        """Nothing to restore: a rerun reloads the study (see :func:`search.study.trials.recover_interrupted`)."""

    def __getstate__(self) -> dict:
        return without_bridge(self)


class OptunaPruningScheduler(FIFOScheduler):
    """A Tune ``TrialScheduler`` that asks the study's Optuna pruner after every report.

    Args:
        bridge: The driver's bridge to the study.
    """

    def __init__(self, bridge: StudyBridge) -> None:
        super().__init__()
        self.bridge: StudyBridge | None = bridge

    def on_trial_result(self, tune_controller: TuneController, trial: Trial, result: Dict) -> str:  # noqa: UP006
        job: TrialJob = trial.config["job"]
        if self.bridge is not None and self.bridge.report(job.number, result):
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def __getstate__(self) -> dict:
        return without_bridge(self)


class KeepModels(Callback):
    """A Tune ``Callback`` on the driver: a trial's checkpoint (its model folder, persisted by Ray
    into the storage path) goes to the keeper, and after every trial's end (the searcher has
    told the study its outcome by then) the keeper keeps the best K.

    Args:
        keeper: The run's :class:`ModelKeeper`.
    """

    def __init__(self, keeper: ModelKeeper) -> None:
        self.keeper = keeper

    def on_checkpoint(self, iteration: int, trials: List[Trial], trial: Trial, checkpoint: Any, **info: Any) -> None:  # noqa: UP006
        self.keeper.arrived(trial.config["job"].number, checkpoint.path)

    def on_trial_complete(self, iteration: int, trials: List[Trial], trial: Trial, **info: Any) -> None:  # noqa: UP006
        reason = (trial.last_result or {}).get(KEEP_ERROR)
        if reason:
            self.keeper.lost(trial.config["job"].number, reason)
        self.keeper.settle()

    def on_trial_error(self, iteration: int, trials: List[Trial], trial: Trial, **info: Any) -> None:  # noqa: UP006
        self.keeper.settle()

    def __getstate__(self) -> dict:
        return {**vars(self), "keeper": None}  # the keeper holds the study (see without_bridge)


def without_bridge(adapter: object) -> dict:
    """An adapter's pickled state. Tune pickles its searcher and scheduler into ``tuner.pkl``;
    the bridge holds the storage (and its URL's password), and a rerun resumes from the study,
    never from that file, so the bridge stays out."""
    return {**vars(adapter), "bridge": None}
