"""Ray Tune's side of the bridge: a ``Searcher`` and a ``TrialScheduler`` that hand Tune's
calls to :class:`~search.engine.bridge.StudyBridge`. Their method signatures are Tune's own
(ray 2.60), copied; this is the one module of the engine that imports Ray at its top.

A pruned trial is stopped by Tune at once, which frees its CPU/GPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Optional  # Dict/Optional: Tune's own signatures, copied  # noqa: UP035

from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from search.engine.bridge import StudyBridge
from search.engine.trainable import TrialJob

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment import Trial


class OptunaSearcher(Searcher):
    """A Tune ``Searcher`` over the bridge's study (ask/tell; the study is the truth).

    Args:
        bridge: The driver's bridge to the study.
    """

    def __init__(self, bridge: StudyBridge) -> None:
        super().__init__(metric=None, mode=None)
        self.bridge: StudyBridge | None = bridge
        self.numbers: dict[str, int] = {}

    def suggest(self, trial_id: str) -> Optional[Dict]:  # noqa: UP006
        assert self.bridge is not None
        job = self.bridge.next_job(ray_trial_id=trial_id)
        if job is None:
            return Searcher.FINISHED  # type: ignore[return-value]  # Tune's sentinel string
        self.numbers[trial_id] = job.number
        return {"job": job}

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


def without_bridge(adapter: object) -> dict:
    """An adapter's pickled state. Tune pickles its searcher and scheduler into ``tuner.pkl``;
    the bridge holds the storage (and its URL's password), and a rerun resumes from the study,
    never from that file, so the bridge stays out."""
    return {**vars(adapter), "bridge": None}
