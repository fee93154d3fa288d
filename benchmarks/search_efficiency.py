"""Search quality: best validation accuracy per epoch of compute, five strategies, several seeds.

The task is ``spaces/cifar_cpu.yaml``: the main space (``cifar_5m.yaml``) scaled down to a
2-core CPU (the same searched dimensions, widths / 8, parameter budget / 64, CIFAR-10 at
16 px, 2,000 training and 1,000 validation images, 5 epochs per trial). Every strategy gets
the same compute, counted in training epochs: a pruned trial costs the epochs it ran, an
over-budget sample costs nothing, and the trial running when the budget runs out is cut
(it never completes).

- (a) random search, no pruning;  (b) random search with the spec's pruner;
- (c) the spec's sampler and pruner (the tool's defaults);  (d) (c) with seed 003's design
  (``paper_se_443_cpu.yaml``) enqueued first, as the spec asks;
- (e) the plain Ray Tune integration a user would write: ``ASHAScheduler`` with
  ``OptunaSearch`` over the same space (a define-by-run function), one trial at a time.

(a)-(d) run through our own machinery in-process, one trial at a time: the
:class:`search.engine.bridge.StudyBridge` samples, checks the budget (fast count, then fvcore),
records every epoch's report, asks the pruner and tells the outcome, as ``resnet-search
run`` does; only Ray's scheduling is left out (it adds seconds per trial, no epochs).
Runs are independent, so they are spread over ``--workers`` processes of one torch thread
each. (e) runs a real ``tune.Tuner`` in this process (one Ray for all its seeds) meanwhile.

A strategy's curve is the best final validation accuracy among the trials it completed,
against the epochs it had spent when each completed. Its winner (the best over its seeds)
is retrained from scratch on train+val once per ``--retrain-seeds`` seed through
:func:`search.outputs.retrain.retrain` (what ``resnet-search retrain`` runs) and tested on the
whole CIFAR-10 test set (at 16 px).

    python benchmarks/search_efficiency.py [--quick] [--out DIR] [--strategies a,c] [--spec S]

Writes ``summary.csv``, ``runs.csv``, ``curves.csv``, ``results.json`` and the figure
``search_efficiency.html`` (self-contained) to ``--out`` (default
``benchmarks/out/search_efficiency``), and a winner study per strategy to ``winners/``:
``resnet-search retrain --storage sqlite:///OUT/winners/c.db --top 1`` retrains one again.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import optuna
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runs as a script from any folder

from search.budget import check_budget, fast_count  # noqa: E402
from search.config import (  # noqa: E402
    Spec,
    parse_spec,
    random_samples,  # noqa: E402
)
from search.data import ImageDataset, load_dataset  # noqa: E402
from search.engine.bridge import StudyBridge  # noqa: E402
from search.engine.samplers import create_study  # noqa: E402
from search.engine.trainable import TrialJob  # noqa: E402
from search.outputs.retrain import retrain  # noqa: E402
from search.study.schema import ERROR, trial_status  # noqa: E402
from search.train import EpochMetrics, TrainResult, train  # noqa: E402

DEFAULT_SPEC = REPO / "spaces" / "cifar_cpu.yaml"
DEFAULT_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
DEFAULT_OUT = REPO / "benchmarks" / "out" / "search_efficiency"
CUT = "the benchmark's compute budget ran out during the trial"
Log = Callable[[str], None]


# --------------------------------------------------------------------------- what runs


@dataclass(frozen=True)
class Strategy:
    """A way to search: the spec's ``study`` section with ``study`` merged in, or the plain Tune integration."""

    key: str
    label: str
    study: dict = field(default_factory=dict)
    plain_tune: bool = False


STRATEGIES = (
    Strategy("a", "random, no pruning", {"sampler": {"name": "random"}, "pruner": {"name": "none"}, "enqueue": []}),
    Strategy("b", "random + default pruner", {"sampler": {"name": "random"}, "enqueue": []}),
    Strategy("c", "default sampler + pruner", {"enqueue": []}),
    Strategy("d", "(c) + seed 003 enqueued", {}),
    Strategy("e", "Ray Tune ASHA + OptunaSearch", {"enqueue": []}, plain_tune=True),
)
BASELINE, OURS = "a", "c"


@dataclass(frozen=True)
class Settings:
    """One benchmark run.

    ``data`` and ``train`` are merged into the spec's sections (the quick mode's smaller
    subsets and shorter trials); they are written into the stored spec, so retraining
    uses them too.
    """

    spec_path: Path
    data_dir: str | None
    strategies: tuple[Strategy, ...]
    seeds: tuple[int, ...]
    budget_epochs: int
    retrain_seeds: tuple[int, ...]
    workers: int
    out: Path
    data: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)


FULL = dict(seeds=(0, 1, 2), budget_epochs=60, retrain_seeds=(0, 1, 2))
QUICK = dict(
    seeds=(0,), budget_epochs=6, retrain_seeds=(0,), data={"train_subset": 300, "val_subset": 200}, train={"epochs": 2}
)


def strategy_spec(settings: Settings, strategy: Strategy, seed: int) -> Spec:
    """The benchmark's spec with the strategy's study section, the search seed and the overrides.

    ``n_trials`` becomes the epoch budget: every trial trains at least one epoch, so the
    budget, not the trial count, ends a search.
    """
    raw = yaml.safe_load(settings.spec_path.read_text(encoding="utf-8"))
    study = {**raw.get("study", {}), **strategy.study, "seed": seed, "n_trials": settings.budget_epochs}
    raw.update(
        study=study, data={**raw.get("data", {}), **settings.data}, train={**raw.get("train", {}), **settings.train}
    )
    # The source stays the file's, so that enqueued files resolve beside it.
    return parse_spec(yaml.safe_dump(raw, sort_keys=False), source=str(settings.spec_path))


def full_trial_epochs(spec: Spec) -> int:
    """The epochs of a trial that is not stopped early (the space fixes them)."""
    return next(random_samples(spec.space, 1)).train.epochs


# --------------------------------------------------------------------------- one search


@dataclass
class SearchRun:
    """One strategy searching with one seed: the epochs it spent and what it found.

    ``completions`` holds, for every trial that ran its full epochs, the epochs spent by
    the time it completed and its final validation accuracy, in order.
    """

    strategy: str
    seed: int
    budget_epochs: int
    epochs_spent: int = 0
    completions: list[tuple[int, float]] = field(default_factory=list)
    best_value: float | None = None
    best_params: dict | None = None
    trials: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def exhausted(self) -> bool:
        return self.epochs_spent >= self.budget_epochs

    def spend_epoch(self) -> None:
        self.epochs_spent += 1

    def complete(self, value: float, params: dict) -> None:
        self.completions.append((self.epochs_spent, value))
        if self.best_value is None or value > self.best_value:
            self.best_value, self.best_params = value, dict(params)

    def best_at(self, epochs: int) -> float | None:
        """The best validation accuracy of the trials completed within ``epochs``; None before the first."""
        values = [value for spent, value in self.completions if spent <= epochs]
        return max(values) if values else None


def saved_search(settings: Settings, strategy: Strategy, seed: int) -> SearchRun:
    """A search's result from ``runs/`` in the output folder if an earlier benchmark run with the
    same spec and budget finished it (runs are deterministic), else the search, run and saved."""
    spec = strategy_spec(settings, strategy, seed)
    fingerprint = hashlib.sha256(f"{spec.text}|{settings.budget_epochs}".encode()).hexdigest()
    path = settings.out / "runs" / f"{strategy.key}_seed{seed}.json"
    if path.exists():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved["fingerprint"] == fingerprint:
            run = SearchRun(**saved["run"])
            run.completions = [tuple(c) for c in run.completions]
            return run
    search = search_with_tune if strategy.plain_tune else search_with_bridge
    run = search(settings, strategy, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"fingerprint": fingerprint, "run": asdict(run)}), encoding="utf-8")
    return run


def search_with_bridge(settings: Settings, strategy: Strategy, seed: int) -> SearchRun:
    """One search through our StudyBridge, one trial at a time, until the epoch budget is spent."""
    start = time.monotonic()
    spec = strategy_spec(settings, strategy, seed)
    data = load_dataset(spec.data, data_dir=settings.data_dir, download=False)
    study = create_study(spec, optuna.storages.InMemoryStorage())
    bridge = StudyBridge(study, spec, image_size=data.image_size, data_dir=settings.data_dir, use_gpu=False, threads=1)
    run = SearchRun(strategy.key, seed, settings.budget_epochs)
    epochs = full_trial_epochs(spec)
    while not run.exhausted and (job := bridge.next_job()) is not None:
        train_job(bridge, job, data, run, epochs)
    run.trials = trial_counts(study)
    run.wall_s = time.monotonic() - start
    return run


def train_job(bridge: StudyBridge, job: TrialJob, data: ImageDataset, run: SearchRun, epochs: int) -> None:
    """Train one sampled trial, reporting every epoch to the bridge (which prunes), and tell its outcome."""

    def on_epoch(metrics: EpochMetrics) -> bool:
        run.spend_epoch()
        pruned = bridge.report(
            job.number, {"epoch": metrics.epoch, "val_acc": metrics.val_acc, "val_loss": metrics.val_loss}
        )
        return pruned or run.exhausted

    try:
        result = train(job.trial, data, callback=on_epoch)
    except Exception as error:  # a failed trial is recorded, the search goes on (as in run_trial)
        bridge.finish(job.number, {ERROR: f"{type(error).__name__}: {error}"}, error=False)
        return
    bridge.finish(job.number, final_report(result, epochs, pruned=job.number in bridge.pruned), error=False)
    trial = bridge.study.get_trials(deepcopy=False)[job.number]
    if trial.state == optuna.trial.TrialState.COMPLETE:
        run.complete(trial.values[0], trial.params)


def final_report(result: TrainResult, epochs: int, pruned: bool) -> dict:
    """A trial's last report, as :func:`search.engine.trainable.run_trial` sends it. A trial that the
    budget cut short is a failure; a pruned one must carry no error, or the bridge would
    record it FAIL rather than PRUNED (and TPE would not learn from it)."""
    if result.status == "nan":
        return {ERROR: f"non-finite loss: {result.reason}"}
    if result.epochs_run < epochs and not pruned:
        return {ERROR: CUT, "epochs_run": result.epochs_run}
    last = result.history[-1]
    return {
        "final": True,
        "val_acc": last.val_acc,
        "val_loss": last.val_loss,
        "epochs_run": result.epochs_run,
        "train_time_s": result.train_time_s,
        "images_per_s": result.images_per_s,
    }


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """Trials by outcome: complete, pruned, rejected (over budget), cut (by the epoch budget), failed."""
    counts = dict.fromkeys(("complete", "pruned", "rejected", "cut", "failed"), 0)
    for trial in study.get_trials(deepcopy=False):
        status = "cut" if trial.user_attrs.get(ERROR) == CUT else trial_status(trial)
        counts[status] = counts.get(status, 0) + 1
    return counts


# --------------------------------------------------------------------------- (e): plain Ray Tune


def train_for_tune(config: dict, *, spec: Spec, data_dir: str | None) -> None:
    """The Tune trainable a user would write: rebuild the config, check the budget, train, report.

    An over-budget config reports a validation accuracy of 0 at once, without training,
    so that TPE learns to avoid its region (OptunaSearch has no notion of a rejection).
    """
    import torch
    from ray import tune

    torch.set_num_threads(1)
    trial = spec.space.sample(optuna.trial.FixedTrial(config))
    if check_budget(fast_count(trial.model, spec.data.input_size), spec.budget) is not None:
        tune.report({"val_acc": 0.0, "over_budget": True})
        return
    data = load_dataset(spec.data, data_dir=data_dir, download=False)
    train(trial, data, callback=lambda m: tune.report({"epoch": m.epoch, "val_acc": m.val_acc}))


def sample_space(trial: optuna.Trial, *, spec: Spec) -> None:
    """OptunaSearch's define-by-run function: the spec's space, suggestion by suggestion."""
    spec.space.sample(trial)


def make_epoch_budget(run: SearchRun, epochs: int) -> Any:
    """A Tune ``Stopper`` that meters the epochs trials report into ``run`` and ends the
    experiment when the budget is spent (defined on first use: Ray is imported late)."""
    from ray.tune import Stopper

    class EpochBudget(Stopper):
        def __init__(self) -> None:
            self.last_epoch: dict[str, int] = {}
            self.rejected: set[str] = set()

        def __call__(self, trial_id: str, result: dict) -> bool:
            if result.get("over_budget"):
                self.rejected.add(trial_id)
                return False
            run.spend_epoch()
            self.last_epoch[trial_id] = result["epoch"]
            if result["epoch"] == epochs:
                run.complete(result["val_acc"], result["config"])
            return run.exhausted  # stops the running trial at once, not after another epoch

        def stop_all(self) -> bool:
            return run.exhausted

        def trial_counts(self) -> dict[str, int]:
            """Trials by outcome; the one running when the budget ran out is cut, not pruned."""
            ended_early = [t for t, epoch in self.last_epoch.items() if epoch < epochs]
            cut = 1 if ended_early and run.exhausted and ended_early[-1] == list(self.last_epoch)[-1] else 0
            complete = len(self.last_epoch) - len(ended_early)
            return {
                "complete": complete,
                "pruned": len(ended_early) - cut,
                "rejected": len(self.rejected),
                "cut": cut,
                "failed": 0,
            }

    return EpochBudget()


def search_with_tune(settings: Settings, strategy: Strategy, seed: int) -> SearchRun:
    """One search with Ray Tune's ASHA scheduler and OptunaSearch (TPE), one trial at a time."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    start = time.monotonic()
    spec = strategy_spec(settings, strategy, seed)
    epochs = full_trial_epochs(spec)
    run = SearchRun(strategy.key, seed, settings.budget_epochs)
    budget = make_epoch_budget(run, epochs)
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
            name=f"{strategy.key}_seed{seed}", storage_path=str(settings.out / "ray"), stop=budget, verbose=0
        ),
    )
    tuner.fit()
    run.trials = budget.trial_counts()
    run.wall_s = time.monotonic() - start
    return run


def tune_runs(settings: Settings, log: Log) -> list[SearchRun]:
    """Every plain-Tune strategy and seed, one Ray for them all."""
    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no per-trial tables: our lines say what ran
    # Ray lowers its workers' priority; on a shared machine that starves (e) against the
    # workers of (a)-(d): no change in epochs, but the benchmark would wait for it.
    os.environ.setdefault("RAY_worker_niceness", "0")
    runs = []
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        for strategy in (s for s in settings.strategies if s.plain_tune):
            for seed in settings.seeds:
                runs.append(saved_search(settings, strategy, seed))
                log(run_line(runs[-1]))
    finally:
        ray.shutdown()
    return runs


# --------------------------------------------------------------------------- winners, retrained


@dataclass(frozen=True)
class Retrained:
    """A strategy's winner retrained on train+val and tested, once per seed."""

    strategy: str
    search_seed: int
    val_acc: float
    params: int | None
    test_acc: tuple[float, ...]

    @property
    def test_mean(self) -> float:
        return statistics.fmean(self.test_acc)

    @property
    def test_std(self) -> float:
        return statistics.stdev(self.test_acc) if len(self.test_acc) > 1 else 0.0


def winner(runs: Sequence[SearchRun]) -> SearchRun | None:
    """The run of one strategy whose best trial is the best over its seeds (None: nothing completed)."""
    done = [r for r in runs if r.best_value is not None]
    return max(done, key=lambda r: (r.best_value, -r.seed)) if done else None


def retrain_winner(settings: Settings, run: SearchRun) -> Retrained:
    """Store the winner as a one-trial study (as ``resnet-search run`` would) and retrain it with
    :func:`search.outputs.retrain.retrain`, the library call behind ``resnet-search retrain``."""
    strategy = next(s for s in settings.strategies if s.key == run.strategy)
    spec = strategy_spec(settings, strategy, run.seed)
    spec = replace(spec, study=replace(spec.study, name=f"winner_{run.strategy}", enqueue=()))
    path = settings.out / "winners" / f"{run.strategy}.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # a rerun replaces it
    study = create_study(spec, f"sqlite:///{path}")
    study.enqueue_trial(run.best_params)
    trial = study.ask()
    spec.space.sample(trial)
    study.tell(trial, run.best_value)
    board = retrain(
        study,
        top=1,
        seeds=settings.retrain_seeds,
        data_dir=settings.data_dir,
        download=False,
        out_dir=settings.out / "retrain" / run.strategy,
        device="cpu",
        log=lambda line: None,
    )
    row = board.rows[0]
    return Retrained(run.strategy, run.seed, run.best_value, row.params, tuple(row.test_acc))


# --------------------------------------------------------------------------- analysis


@dataclass(frozen=True)
class StrategyResult:
    """One strategy over its seeds.

    ``curve``: mean over seeds of the best validation accuracy at every epoch count
    0..budget (None until every seed has completed a trial). ``epochs_to_target``: the
    first epoch count at which that mean reaches the target (None: never); ``seed_epochs``
    the same per seed.
    """

    strategy: Strategy
    runs: tuple[SearchRun, ...]
    curve: tuple[float | None, ...]
    low: tuple[float | None, ...]
    high: tuple[float | None, ...]
    epochs_to_target: int | None
    seed_epochs: tuple[int | None, ...]
    retrained: Retrained | None

    @property
    def finals(self) -> list[float]:
        return [r.best_value for r in self.runs if r.best_value is not None]


def best_curves(runs: Sequence[SearchRun], budget: int) -> tuple[list, list, list]:
    """Mean, min and max over seeds of the best-so-far at 0..budget epochs."""
    mean, low, high = [], [], []
    for epochs in range(budget + 1):
        values = [r.best_at(epochs) for r in runs]
        missing = None in values  # a seed with no completed trial yet
        mean.append(None if missing else statistics.fmean(values))
        low.append(None if missing else min(values))
        high.append(None if missing else max(values))
    return mean, low, high


def first_reaching(curve: Sequence[float | None], target: float) -> int | None:
    """The first index at which ``curve`` is at least ``target`` (None: never)."""
    return next((i for i, v in enumerate(curve) if v is not None and v >= target - 1e-12), None)


def baseline_target(runs: Sequence[SearchRun]) -> float | None:
    """(a)'s final best validation accuracy, the mean over its seeds."""
    finals = [r.best_value for r in runs if r.strategy == BASELINE and r.best_value is not None]
    return statistics.fmean(finals) if finals else None


def analyse(settings: Settings, runs: Sequence[SearchRun], retrained: dict[str, Retrained]) -> list[StrategyResult]:
    """Curves, spread and the compute to reach (a)'s final best, per strategy."""
    target = baseline_target(runs)
    results = []
    for strategy in settings.strategies:
        own = tuple(sorted((r for r in runs if r.strategy == strategy.key), key=lambda r: r.seed))
        mean, low, high = best_curves(own, settings.budget_epochs)
        seed_epochs = tuple(
            first_reaching([r.best_at(e) for e in range(settings.budget_epochs + 1)], target)
            if target is not None
            else None
            for r in own
        )
        results.append(
            StrategyResult(
                strategy,
                own,
                tuple(mean),
                tuple(low),
                tuple(high),
                first_reaching(mean, target) if target is not None else None,
                seed_epochs,
                retrained.get(strategy.key),
            )
        )
    return results


def verdict(results: Sequence[StrategyResult]) -> str:
    """Whether (c) reached (a)'s final best with half of (a)'s compute, and held up on the test set."""
    by_key = {r.strategy.key: r for r in results}
    if BASELINE not in by_key or OURS not in by_key:
        return "target: not assessed (needs strategies a and c)"
    baseline, ours = by_key[BASELINE], by_key[OURS]
    needed = baseline.epochs_to_target  # where (a)'s mean curve reaches its own final value
    if needed is None or ours.epochs_to_target is None:
        return f"target: NOT met: (c) never reached (a)'s final best within {len(ours.curve) - 1} epochs"
    ratio = ours.epochs_to_target / needed
    fast = ratio <= 0.5
    held = None
    if baseline.retrained and ours.retrained:
        held = ours.retrained.test_mean >= baseline.retrained.test_mean
    parts = [
        f"(c) needed {ours.epochs_to_target} epochs, (a) {needed}: {ratio:.2f}x of (a)'s compute "
        f"({'at most' if fast else 'more than'} half)"
    ]
    if held is not None:
        parts.append(
            f"retrained test accuracy {ours.retrained.test_mean:.4f} vs (a) "
            f"{baseline.retrained.test_mean:.4f} ({'not worse' if held else 'worse'})"
        )
    met = fast and held is not False
    return f"target: {'met' if met else 'NOT met'}: " + "; ".join(parts)


# --------------------------------------------------------------------------- output


def run_line(run: SearchRun) -> str:
    counts = ", ".join(f"{n} {k}" for k, n in run.trials.items() if n)
    best = f"{run.best_value:.4f}" if run.best_value is not None else "-"
    return (
        f"({run.strategy}) seed {run.seed}: {run.epochs_spent} epochs, {counts}; best val {best} ({run.wall_s:.0f} s)"
    )


def summary_rows(results: Sequence[StrategyResult]) -> list[dict]:
    """One row per strategy: what the table, the CSV and the JSON show."""
    rows = []
    for r in results:
        totals = {k: sum(run.trials.get(k, 0) for run in r.runs) for k in ("complete", "pruned", "rejected", "cut")}
        rt = r.retrained
        rows.append(
            {
                "strategy": r.strategy.key,
                "label": r.strategy.label,
                "seeds": len(r.runs),
                "budget_epochs": r.runs[0].budget_epochs if r.runs else None,
                "epochs_spent": [run.epochs_spent for run in r.runs],
                "best_val_mean": statistics.fmean(r.finals) if r.finals else None,
                "best_val_std": statistics.stdev(r.finals) if len(r.finals) > 1 else 0.0,
                "best_val_min": min(r.finals, default=None),
                "best_val_max": max(r.finals, default=None),
                "epochs_to_target": r.epochs_to_target,
                "seed_epochs_to_target": list(r.seed_epochs),
                **{f"trials_{k}": n for k, n in totals.items()},
                "winner_seed": rt.search_seed if rt else None,
                "winner_val": rt.val_acc if rt else None,
                "winner_params": rt.params if rt else None,
                "test_acc": list(rt.test_acc) if rt else None,
                "test_acc_mean": rt.test_mean if rt else None,
                "test_acc_std": rt.test_std if rt else None,
            }
        )
    return rows


def table(rows: Sequence[dict], target: float | None) -> str:
    """The summary as a Markdown table (the README's)."""

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.2%}"

    def reach(value: int | None) -> str:
        return "never" if value is None else str(value)

    lines = [
        f"target: (a)'s final best validation accuracy, mean over seeds: {pct(target)}",
        "",
        "| strategy | best val (mean ± std) | min-max | epochs to target (mean curve) | per seed "
        "| trials: complete / pruned / rejected / cut | winner val (params) | retrained test (mean ± std) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        test = "-" if row["test_acc_mean"] is None else f"{pct(row['test_acc_mean'])} ± {pct(row['test_acc_std'])}"
        winner_text = "-" if row["winner_val"] is None else f"{pct(row['winner_val'])} ({row['winner_params']:,})"
        lines.append(
            f"| ({row['strategy']}) {row['label']} | {pct(row['best_val_mean'])} ± {pct(row['best_val_std'])} "
            f"| {pct(row['best_val_min'])}-{pct(row['best_val_max'])} | {reach(row['epochs_to_target'])} "
            f"| {' / '.join(reach(e) for e in row['seed_epochs_to_target'])} "
            f"| {row['trials_complete']} / {row['trials_pruned']} / {row['trials_rejected']} / {row['trials_cut']} "
            f"| {winner_text} | {test} |"
        )
    return "\n".join(lines)


def write_csv(path: Path, rows: Sequence[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def curve_rows(results: Sequence[StrategyResult]) -> list[dict]:
    """Every seed's best-so-far at every epoch count, long format."""
    return [
        {"strategy": r.strategy.key, "seed": run.seed, "epochs": epochs, "best_val": run.best_at(epochs)}
        for r in results
        for run in r.runs
        for epochs in range(run.budget_epochs + 1)
    ]


def figure_html(results: Sequence[StrategyResult], target: float | None) -> str:
    """Best validation accuracy vs epochs spent: the mean over seeds, and a band from min to max."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for index, r in enumerate(results):
        colour = f"hsl({index * 360 // max(len(results), 1)}, 65%, 45%)"
        band = f"hsla({index * 360 // max(len(results), 1)}, 65%, 45%, 0.15)"
        epochs = list(range(len(r.curve)))
        name = f"({r.strategy.key}) {r.strategy.label}"
        fig.add_trace(
            go.Scatter(
                x=epochs + epochs[::-1],
                y=list(r.high) + list(r.low)[::-1],
                fill="toself",
                fillcolor=band,
                line={"width": 0},
                hoverinfo="skip",
                showlegend=False,
                legendgroup=name,
            )
        )
        fig.add_trace(
            go.Scatter(
                x=epochs,
                y=list(r.curve),
                mode="lines",
                name=name,
                line={"color": colour},
                legendgroup=name,
                line_shape="hv",
            )
        )
    if target is not None:
        fig.add_hline(y=target, line_dash="dash", line_color="grey", annotation_text="(a)'s final best (mean)")
    fig.update_layout(
        title="Best validation accuracy vs compute (mean over seeds; band: min to max)",
        xaxis_title="training epochs spent",
        yaxis_title="best validation accuracy",
        yaxis_tickformat=".0%",
        template="plotly_white",
    )
    return fig.to_html(include_plotlyjs=True, full_html=True)


def write_outputs(settings: Settings, results: Sequence[StrategyResult], target: float | None) -> list[dict]:
    """summary.csv, runs.csv, curves.csv, results.json and the figure, into ``settings.out``."""
    rows = summary_rows(results)
    write_csv(settings.out / "summary.csv", [{k: _csv_value(v) for k, v in row.items()} for row in rows])
    runs = [
        {
            **asdict(run),
            "best_params": json.dumps(run.best_params),
            "completions": json.dumps(run.completions),
            "trials": json.dumps(run.trials),
        }
        for r in results
        for run in r.runs
    ]
    write_csv(settings.out / "runs.csv", runs)
    write_csv(settings.out / "curves.csv", curve_rows(results))
    (settings.out / "search_efficiency.html").write_text(figure_html(results, target), encoding="utf-8")
    document = {
        "spec": settings.spec_path.name,
        "budget_epochs": settings.budget_epochs,
        "seeds": list(settings.seeds),
        "retrain_seeds": list(settings.retrain_seeds),
        "data": settings.data,
        "train": settings.train,
        "target": target,
        "verdict": verdict(results),
        "strategies": rows,
        "runs": [{**asdict(run)} for r in results for run in r.runs],
    }
    (settings.out / "results.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return rows


def _csv_value(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, list) else value


# --------------------------------------------------------------------------- the run


def _init_worker() -> None:
    """Each worker process trains with one torch thread (two threads on a loaded 2-core
    machine measured 10x slower than one) and keeps Optuna's per-trial lines quiet."""
    import torch

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def run_benchmark(settings: Settings, log: Log = print) -> tuple[list[StrategyResult], float | None]:
    """Run every strategy and seed, retrain the winners, write the outputs.

    Returns:
        The per-strategy results and the target ((a)'s final best, or None without (a)).
    """
    settings.out.mkdir(parents=True, exist_ok=True)
    _init_worker()  # this process runs OptunaSearch, and builds the data cache
    base = strategy_spec(settings, STRATEGIES[0], 0)
    load_dataset(base.data, data_dir=settings.data_dir, download=False)  # builds the cache before the workers
    ours = [(s, seed) for s in settings.strategies if not s.plain_tune for seed in settings.seeds]
    context = get_context("spawn")  # no fork of a process that holds torch threads
    with ProcessPoolExecutor(settings.workers, mp_context=context, initializer=_init_worker) as pool:
        futures = [pool.submit(saved_search, settings, strategy, seed) for strategy, seed in ours]
        for future in futures:
            future.add_done_callback(lambda f: log(run_line(f.result())) if not f.exception() else None)
        runs = tune_runs(settings, log) if any(s.plain_tune for s in settings.strategies) else []
        runs += [future.result() for future in futures]
        winners = [
            w
            for key in (s.key for s in settings.strategies)
            if (w := winner([r for r in runs if r.strategy == key])) is not None
        ]
        retrained = (
            {r.strategy: r for r in pool.map(partial(retrain_winner, settings), winners)}
            if settings.retrain_seeds
            else {}
        )
    for r in retrained.values():
        log(f"({r.strategy}) winner retrained: test {r.test_mean:.4f} ± {r.test_std:.4f} over {len(r.test_acc)} seeds")
    results = analyse(settings, runs, retrained)
    target = baseline_target(runs)
    write_outputs(settings, results, target)
    return results, target


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 1 seed, 300/200 images, 2-epoch trials, a 6-epoch budget"
    )
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="the space (default spaces/cifar_cpu.yaml)")
    parser.add_argument(
        "--data-dir",
        default=str(DEFAULT_ARCHIVE) if DEFAULT_ARCHIVE.exists() else None,
        help="CIFAR-10 (default ../shared/data/cifar10-jpeg.tar.gz beside the repository)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--strategies", default=",".join(s.key for s in STRATEGIES), help="a subset, e.g. a,c")
    parser.add_argument("--seeds", help="search seeds, e.g. 0,1,2")
    parser.add_argument("--budget-epochs", type=int, help="training epochs per strategy and seed")
    parser.add_argument("--retrain-seeds", help="training seeds of the winners' retraining; 'none' skips it")
    parser.add_argument("--workers", type=int, default=2, help="processes for (a)-(d) and retraining")
    args = parser.parse_args(argv)
    mode = dict(QUICK if args.quick else FULL)
    if args.seeds:
        mode["seeds"] = _ints(args.seeds)
    if args.budget_epochs:
        mode["budget_epochs"] = args.budget_epochs
    if args.retrain_seeds:
        mode["retrain_seeds"] = () if args.retrain_seeds == "none" else _ints(args.retrain_seeds)
    keys = args.strategies.split(",")
    unknown = set(keys) - {s.key for s in STRATEGIES}
    if unknown:
        parser.error(f"--strategies: unknown {sorted(unknown)}; choose from {[s.key for s in STRATEGIES]}")
    data_dir = str(Path(args.data_dir).resolve()) if args.data_dir else None  # Ray workers run elsewhere
    return Settings(
        spec_path=args.spec.resolve(),
        data_dir=data_dir,
        strategies=tuple(s for s in STRATEGIES if s.key in keys),
        workers=args.workers,
        out=args.out.resolve(),
        **mode,
    )


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def main(argv: Sequence[str] | None = None) -> None:
    settings = parse_args(argv)
    start = time.monotonic()
    results, target = run_benchmark(settings)
    print()
    print(table(summary_rows(results), target))
    print()
    print(verdict(results))
    print(f"\nbenchmark wall time {time.monotonic() - start:.0f} s; outputs in {settings.out}")


if __name__ == "__main__":
    main()
