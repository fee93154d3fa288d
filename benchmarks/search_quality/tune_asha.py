"""(e): the plain Ray Tune integration a user would write: ``ASHAScheduler`` with
``OptunaSearch`` (TPE, a define-by-run function over the same space) in a real
``tune.Tuner``, one trial at a time; an over-budget config reports 0 at once (OptunaSearch
knows no rejection)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import optuna

from search.budget import check_budget, fast_count
from search.config import Spec
from search.data import load_dataset
from search.train import TrainOptions, train

from .records import SearchRun
from .settings import Settings, Strategy, full_trial_epochs, strategy_spec


def train_for_tune(config: dict, *, spec: Spec, data_dir: str | None) -> None:
    """The Tune trainable a user would write: rebuild the config, check the budget, train, report."""
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
    train(trial, data, TrainOptions(callback=lambda m: tune.report({"epoch": m.epoch, "val_acc": m.val_acc})))


def sample_space(trial: optuna.Trial, *, spec: Spec) -> None:
    """OptunaSearch's define-by-run function: the spec's space, suggestion by suggestion."""
    spec.space.sample(trial)


def make_epoch_budget(run: SearchRun, epochs: int) -> Any:
    """A Tune ``Stopper`` that meters the epochs trials report into ``run``, records each trial's
    outcome and ends the experiment when the budget is spent (defined on first use: Ray is
    imported late)."""
    from ray.tune import Stopper

    class EpochBudget(Stopper):
        def __init__(self) -> None:
            self.current: str | None = None
            self.started = 0

        def __call__(self, trial_id: str, result: dict) -> bool:
            if trial_id != self.current:
                self.close("pruned")  # one trial at a time: a new one means ASHA stopped the last
            if result.get("over_budget"):
                run.ended(run.epochs_spent, "rejected")
                return False
            if self.current is None:
                self.current, self.started = trial_id, run.epochs_spent
            run.spend_epoch()
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

    return EpochBudget()


def search_with_tune(settings: Settings, strategy: Strategy, seed: int, budget: int) -> SearchRun:
    """One search with Ray Tune's ASHA scheduler and OptunaSearch (TPE), one trial at a time."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    start = time.monotonic()
    spec = strategy_spec(settings, strategy, seed, budget)
    epochs = full_trial_epochs(spec)
    run = SearchRun(strategy.key, seed, budget)
    stopper = make_epoch_budget(run, epochs)
    trainable = tune.with_parameters(train_for_tune, spec=spec, data_dir=settings.data_dir)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        tune_config=tune.TuneConfig(
            metric="val_acc",
            mode="max",
            num_samples=-1,
            max_concurrent_trials=1,
            search_alg=OptunaSearch(space=partial(sample_space, spec=spec), metric="val_acc", mode="max", seed=seed),
            scheduler=ASHAScheduler(time_attr="training_iteration", max_t=epochs, grace_period=1),
        ),
        run_config=tune.RunConfig(
            name=f"{strategy.key}_seed{seed}", storage_path=str(settings.out / "ray"), stop=stopper, verbose=0
        ),
    )
    tuner.fit()
    stopper.close("cut" if run.exhausted else "pruned")
    run.wall_s = time.monotonic() - start
    return run


def with_ray(settings: Settings, jobs: list[Callable[[], SearchRun]], log: Callable[[str], None]) -> list[SearchRun]:
    """Run the plain-Tune searches in this process, one Ray for them all."""
    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no per-trial tables: our lines say what ran
    # Ray lowers its workers' priority; on a shared machine that starves (e) against the
    # other workers: no change in epochs, but the benchmark would wait for it.
    os.environ.setdefault("RAY_worker_niceness", "0")
    if not jobs:
        return []
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        return [job() for job in jobs]
    finally:
        ray.shutdown()
