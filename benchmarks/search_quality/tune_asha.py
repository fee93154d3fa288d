"""(e): the plain Ray Tune integration a user would write: ``ASHAScheduler`` with
``OptunaSearch`` (TPE, a define-by-run function over the same space) in a real
``tune.Tuner``, one trial at a time; an over-budget config reports 0 at once (OptunaSearch
knows no rejection).

(e-rungs): the same with the cheaper fidelity: trials train their first quarter epoch at 8 px
and report there too, and ASHA's ``time_attr`` is the compute spent (``full_epochs``, in
full-epoch equivalents) with its grace period at that first look's nominal cost, so that its
rungs (x4 each, ASHA's own reduction factor) fall at 1/16, 1/4, 1 and 4 full-epoch equivalents.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import optuna

from search.budget import check_budget, fast_count
from search.config import Rung, Spec
from search.data import load_dataset
from search.study.keys import FULL_EPOCHS
from search.train import EpochMetrics, TrainOptions, train

from .records import SearchRun
from .settings import Settings, Strategy, full_trial_epochs, strategy_spec


def train_for_tune(config: dict, *, spec: Spec, data_dir: str | None, rungs: tuple[Rung, ...] = ()) -> None:
    """The Tune trainable a user would write: rebuild the config, check the budget, train, report
    (at every epoch, and at every rung within one)."""
    import torch
    from ray import tune

    torch.set_num_threads(1)
    trial = spec.space.sample(optuna.trial.FixedTrial(config))
    size = spec.data.input_size
    assert size is not None, "the benchmark's data is CIFAR-10, whose size is known"
    if check_budget(fast_count(trial.model, size), spec.budget) is not None:
        tune.report({"val_acc": 0.0, "over_budget": True})
        return
    data = load_dataset(spec.data, data_dir=data_dir, download=False)
    options = TrainOptions(callback=lambda m: tune.report(tune_report(m)), rungs=rungs)
    train(trial, data, options)


def tune_report(metrics: EpochMetrics) -> dict:
    report = {"epoch": metrics.epoch, "val_acc": metrics.val_acc, FULL_EPOCHS: metrics.full_epochs}
    return report if metrics.rung is None else {**report, "rung": metrics.rung}


def sample_space(trial: optuna.Trial, *, spec: Spec) -> None:
    """OptunaSearch's define-by-run function: the spec's space, suggestion by suggestion."""
    spec.space.sample(trial)


def make_compute_budget(run: SearchRun, epochs: int) -> Any:
    """A Tune ``Stopper`` that meters the compute trials report (``full_epochs``) into ``run``,
    records each trial's outcome and ends the experiment when the budget is spent (defined on
    first use: Ray is imported late)."""
    from ray.tune import Stopper

    class ComputeBudget(Stopper):
        def __init__(self) -> None:
            self.current: str | None = None
            self.started = 0.0
            self.cost = 0.0  # the current trial's compute so far

        def __call__(self, trial_id: str, result: dict) -> bool:
            if trial_id != self.current:
                self.close("pruned")  # one trial at a time: a new one means ASHA stopped the last
            if result.get("over_budget"):
                run.ended(run.spent, "rejected")
                return False
            if self.current is None:
                self.current, self.started, self.cost = trial_id, run.spent, 0.0
            run.spend(result[FULL_EPOCHS] - self.cost)
            self.cost = result[FULL_EPOCHS]
            if result["epoch"] == epochs:
                run.complete(result["val_acc"], result["config"])
                self.close("complete")
            return run.exhausted  # stops the running trial at once, not after another epoch

        def close(self, outcome: str) -> None:
            if self.current is not None:
                run.ended(self.started, outcome)
                self.current = None

        def stop_all(self) -> bool:
            return run.exhausted

    return ComputeBudget()


def search_with_tune(settings: Settings, strategy: Strategy, seed: int, budget: int) -> SearchRun:
    """One search with Ray Tune's ASHA scheduler and OptunaSearch (TPE), one trial at a time,
    until the compute budget is spent."""
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    start = time.monotonic()
    spec = strategy_spec(settings, strategy, seed, budget)
    epochs = full_trial_epochs(spec)
    run = SearchRun(strategy.key, seed, budget)
    stopper = make_compute_budget(run, epochs)
    size = spec.data.input_size
    assert size is not None, "the benchmark's data is CIFAR-10, whose size is known"
    rungs = strategy.fidelity_rungs
    trainable = tune.with_parameters(train_for_tune, spec=spec, data_dir=settings.data_dir, rungs=rungs)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        tune_config=tune.TuneConfig(
            metric="val_acc",
            mode="max",
            num_samples=-1,
            max_concurrent_trials=1,
            # What a Tune user sets for many short trials (our engine does too): the worker and its
            # imports are paid once, not per trial. Compute is metered in full-epoch equivalents,
            # so this changes the wall time only.
            reuse_actors=True,
            search_alg=OptunaSearch(space=partial(sample_space, spec=spec), metric="val_acc", mode="max", seed=seed),
            scheduler=scheduler(rungs, epochs, size),
        ),
        run_config=tune.RunConfig(
            name=f"{strategy.key}_seed{seed}", storage_path=str(settings.out / "ray"), stop=stopper, verbose=0
        ),
    )
    tuner.fit()
    stopper.close("cut" if run.exhausted else "pruned")
    run.wall_s = time.monotonic() - start
    return run


def scheduler(rungs: tuple[Rung, ...], epochs: int, image_size: int) -> Any:
    """ASHA as (e) runs it (one report per epoch, grace period 1), or, with rungs, on the compute
    spent, from the first rung's nominal cost: its share of an epoch times its side's share of
    the pixels (``full_epochs`` per trial is the exact cost; the grace period only sets where
    ASHA's own rungs fall)."""
    from ray.tune.schedulers import ASHAScheduler

    if not rungs:
        return ASHAScheduler(time_attr="training_iteration", max_t=epochs, grace_period=1)
    first = rungs[0]
    side = first.image_size
    grace = first.position * ((side / image_size) ** 2 if side else 1.0)
    return ASHAScheduler(time_attr=FULL_EPOCHS, max_t=epochs, grace_period=grace)


def with_ray(settings: Settings, jobs: list[Callable[[], SearchRun]], log: Callable[[str], None]) -> list[SearchRun]:
    """Run the plain-Tune searches in this process, one Ray for them all."""
    if not jobs:
        return []
    with RaySession(settings) as session:
        session.start()
        return [job() for job in jobs]


class RaySession:
    """One local Ray (one CPU) for the plain-Tune searches of this process, started on first use
    and shut down on leaving."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started = False

    def __enter__(self) -> RaySession:
        return self

    def start(self) -> None:
        import ray

        if self.started:
            return
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no per-trial tables: our lines say what ran
        # Ray lowers its workers' priority; on a shared machine that starves (e) against the
        # other workers: no change in compute, but the benchmark would wait for it.
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(
            address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING
        )
        self.started = True

    def __exit__(self, *exc: object) -> None:
        if self.started:
            import ray

            ray.shutdown()
            self.started = False
