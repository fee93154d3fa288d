"""Our machinery, in-process: :class:`search.engine.bridge.StudyBridge` samples, checks the
budget (fast count, then fvcore), records every epoch, asks the study's pruner and tells
outcomes, as ``resnet-search run`` does; only Ray's scheduling is left out (seconds per
trial, no compute). Each trial pauses at every report, an epoch's or a rung's within one
(``study.pruner.rungs``), which reaches the bridge as :func:`search.engine.trainable.run_trial`
sends it (with its ``rung`` and ``full_epochs``), and the run spends the report's cost in
full-epoch equivalents. ``concurrency`` trials run at once, a report each in turn (see
:mod:`.sessions`), so the sampler proposes while earlier trials are still running and
their reports arrive interleaved, as with Ray and several workers."""

from __future__ import annotations

import time
from dataclasses import dataclass

import optuna

from search.data import ImageDataset, load_dataset
from search.engine.bridge import StudyBridge, TrialSetup
from search.engine.samplers import create_study
from search.engine.trainable import TrialJob, epoch_report
from search.study.keys import ERROR, REPEAT_OF, trial_status

from .records import CUT, SearchRun
from .sessions import EpochSession
from .settings import Settings, Strategy, full_trial_epochs, strategy_spec


@dataclass
class Running:
    """A trial in a slot: its job, its paused training, and the run's compute spent when it started."""

    job: TrialJob
    session: EpochSession
    started: float


class Rejections:
    """Records, into the run, the samples the bridge told the study about without training them:
    over-budget ones, and repeats of trained configs answered from the record."""

    def __init__(self, study: optuna.Study) -> None:
        self.study = study
        self.seen = len(study.get_trials(deepcopy=False))

    def record(self, run: SearchRun) -> None:
        trials = self.study.get_trials(deepcopy=False)
        for trial in trials[self.seen :]:
            if trial_status(trial) == "rejected":
                run.ended(run.spent, "rejected")
            elif REPEAT_OF in trial.user_attrs:
                run.ended(run.spent, "repeat")
        self.seen = len(trials)


def search_with_bridge(settings: Settings, strategy: Strategy, seed: int, budget: int) -> SearchRun:
    """One search through our StudyBridge until the compute budget is spent."""
    start = time.monotonic()
    spec = strategy_spec(settings, strategy, seed, budget)
    data = load_dataset(spec.data, data_dir=settings.data_dir, download=False)
    study = create_study(spec, optuna.storages.InMemoryStorage())
    bridge = StudyBridge(study, spec, TrialSetup(data.image_size, settings.data_dir))
    run = SearchRun(strategy.key, seed, budget)
    drive(bridge, data, run, slots=strategy.concurrency, epochs=full_trial_epochs(spec))
    run.wall_s = time.monotonic() - start
    return run


def drive(bridge: StudyBridge, data: ImageDataset, run: SearchRun, *, slots: int, epochs: int) -> None:
    """Keep ``slots`` trials running, a report each in turn, until the budget is spent or the
    study has no trial left; the trials running when the budget runs out are cut."""
    rejections = Rejections(bridge.study)
    running: list[Running] = []
    while True:
        while len(running) < slots and not run.exhausted:
            job = bridge.next_job()
            rejections.record(run)
            if job is None:
                break
            running.append(Running(job, EpochSession(job.trial, data, job.rungs), run.spent))
        if not running:
            return
        for slot in list(running):
            if run.exhausted:
                break
            if step(bridge, slot, run, epochs):
                running.remove(slot)
        if run.exhausted:
            for slot in running:
                end_trial(bridge, slot, run, epochs, pruned=False)
            return


def step(bridge: StudyBridge, slot: Running, run: SearchRun, epochs: int) -> bool:
    """Train ``slot``'s trial up to its next report (a rung or an epoch's end), spend its cost and
    report it; True when the trial has ended."""
    before = slot.session.cost
    metrics = slot.session.advance()
    if metrics is None:  # non-finite loss or an exception
        end_trial(bridge, slot, run, epochs, pruned=False)
        return True
    run.spend(metrics.full_epochs - before)
    pruned = bridge.report(slot.job.number, epoch_report(metrics))
    if pruned or metrics.epoch >= epochs or run.exhausted:
        end_trial(bridge, slot, run, epochs, pruned=pruned)
        return True
    return False


def end_trial(bridge: StudyBridge, slot: Running, run: SearchRun, epochs: int, *, pruned: bool) -> None:
    """Close the trial's training, tell the bridge its outcome and record it in the run."""
    session = slot.session
    session.close(stop=pruned or session.epoch < epochs)
    bridge.finish(slot.job.number, final_report(session, epochs, pruned=pruned), error=False)
    trial = bridge.study.get_trials(deepcopy=False)[slot.job.number]
    if trial.state == optuna.trial.TrialState.COMPLETE:
        run.complete(trial.values[0], trial.params)
    run.ended(slot.started, "cut" if trial.user_attrs.get(ERROR) == CUT else trial_status(trial))


def final_report(session: EpochSession, epochs: int, *, pruned: bool) -> dict:
    """A trial's last report, as :func:`search.engine.trainable.run_trial` sends it.

    A trial the budget cut short is a failure; a pruned one must carry no error, or the
    bridge would record it FAIL rather than PRUNED (and TPE would not learn from it).
    """
    if session.error is not None:
        return {ERROR: f"{type(session.error).__name__}: {session.error}"}
    result = session.result
    if result is not None and result.status == "nan":
        return {ERROR: f"non-finite loss: {result.reason}"}
    if session.epoch < epochs and not pruned:
        return {ERROR: CUT, "epochs_run": session.epoch}
    last = session.history[-1]
    report = {"final": True, "val_acc": last.val_acc, "val_loss": last.val_loss, "epochs_run": session.epoch}
    if result is not None:
        report.update(train_time_s=result.train_time_s, images_per_s=result.images_per_s)
    return report
