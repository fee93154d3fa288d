"""Running the benchmark: every strategy, seed and budget (finished runs read back from disk),
the winners retrained, the outputs written. ``--report-only`` writes the outputs from the
runs already on disk without running anything (a long run's partial results)."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import optuna

from search.data import load_dataset

from .analysis import cells
from .records import SearchRun, run_line
from .report import write_outputs
from .retraining import Retrained, Winner, retrain_winner, winner
from .settings import (
    DEFAULT_ARCHIVE,
    DEFAULT_OUT,
    DEFAULT_SPEC,
    FULL,
    QUICK,
    STRATEGIES,
    Settings,
    Strategy,
    run_budget,
    strategy_spec,
)
from .store import load_run, saved_search

Log = Callable[[str], None]


def _init_worker() -> None:
    """Each process trains with one torch thread (two threads on a loaded 2-core machine
    measured 10x slower than one) and keeps Optuna's per-trial lines quiet."""
    import torch

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)


# The order runs start in, seed by seed: the baseline, the default and the peers first, so that
# a long run's partial results hold the comparison the goal is about.
PRIORITY = ("a", "c", "j", "g", "h", "i", "e", "c4", "f", "b", "d")


def jobs(settings: Settings) -> list[tuple[Strategy, int, int]]:
    """Every (strategy, seed, run budget), the tuning seeds first, seed by seed."""
    out = []
    ordered = sorted(settings.strategies, key=lambda s: PRIORITY.index(s.key) if s.key in PRIORITY else len(PRIORITY))
    for seed in settings.seeds:
        for strategy in ordered:
            for budget in sorted({run_budget(settings, strategy, b) for b in settings.budgets}):
                out.append((strategy, seed, budget))
    return out


def budget_runs(settings: Settings) -> dict[tuple[str, int], int]:
    """(strategy, budget) -> the budget of the run that holds its result."""
    return {(s.key, b): run_budget(settings, s, b) for s in settings.strategies for b in settings.budgets}


def collect_runs(settings: Settings, log: Log) -> list[SearchRun]:
    """Run what is not on disk yet: our and the peers' searches in ``settings.workers``
    processes, Ray Tune's in this one meanwhile."""
    from .tune_asha import with_ray

    todo = jobs(settings)
    context = get_context("spawn")  # no fork of a process that holds torch threads
    with ProcessPoolExecutor(settings.workers, mp_context=context, initializer=_init_worker) as pool:
        futures: list[Future] = []
        for strategy, seed, budget in todo:
            if strategy.engine == "tune":
                continue
            future = pool.submit(saved_search, settings, strategy, seed, budget)
            future.add_done_callback(lambda f: log(run_line(f.result())) if not f.exception() else None)
            futures.append(future)
        tune_jobs: list[Callable[[], SearchRun]] = [
            partial(_logged, log, settings, strategy, seed, budget)
            for strategy, seed, budget in todo
            if strategy.engine == "tune"
        ]
        runs = with_ray(settings, tune_jobs, log)
        runs += [future.result() for future in futures]
    return runs


def _logged(log: Log, settings: Settings, strategy: Strategy, seed: int, budget: int) -> SearchRun:
    run = saved_search(settings, strategy, seed, budget)
    log(run_line(run))
    return run


def saved_runs(settings: Settings) -> list[SearchRun]:
    """The runs already on disk."""
    return [r for s, seed, b in jobs(settings) if (r := load_run(settings, s, seed, b)) is not None]


def retrain_all(settings: Settings, runs: Sequence[SearchRun], log: Log) -> dict[str, Retrained]:
    """Each complete cell's winner retrained (read back from ``retrained/`` when done before)."""
    winners = []
    for group, seeds in settings.seed_groups.items():
        for strategy in settings.strategies:
            for budget in settings.budgets:
                held = run_budget(settings, strategy, budget)
                own = [r for r in runs if r.strategy == strategy.key and r.seed in seeds and r.budget_epochs == held]
                if len(own) == len(seeds) and (won := winner(own, group, budget)) is not None:
                    winners.append(won)
    done = {w.name: r for w in winners if (r := _saved_retrain(settings, w)) is not None}
    todo = [w for w in winners if w.name not in done]
    if todo and settings.retrain_seeds:
        context = get_context("spawn")
        with ProcessPoolExecutor(settings.workers, mp_context=context, initializer=_init_worker) as pool:
            for result in pool.map(partial(retrain_winner, settings), todo):
                _save_retrain(settings, result)
                done[result.winner.name] = result
                log(f"{result.winner.name}: winner retrained, test {result.test_mean:.4f} ± {result.test_std:.4f}")
    return done


def _retrain_path(settings: Settings, won: Winner) -> Path:
    return settings.out / "retrained" / f"{won.name}.json"


def _saved_retrain(settings: Settings, won: Winner) -> Retrained | None:
    path = _retrain_path(settings, won)
    if not path.exists():
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    if saved["winner"] != asdict(won) or saved["seeds"] != list(settings.retrain_seeds):
        return None
    return Retrained(won, saved["model_params"], tuple(saved["test_acc"]))


def _save_retrain(settings: Settings, result: Retrained) -> None:
    path = _retrain_path(settings, result.winner)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "winner": asdict(result.winner),
        "seeds": list(settings.retrain_seeds),
        "model_params": result.model_params,
        "test_acc": list(result.test_acc),
    }
    path.write_text(json.dumps(document, indent=1), encoding="utf-8")


def run_benchmark(settings: Settings, *, report_only: bool = False, log: Log = print) -> str:
    """Run (or, ``report_only``, read back) every search, retrain the winners, write the outputs.

    Returns:
        The report's Markdown text.
    """
    settings.out.mkdir(parents=True, exist_ok=True)
    _init_worker()
    if report_only:
        runs = saved_runs(settings)
        retrained = _saved_retrains(settings)
    else:
        base = strategy_spec(settings, STRATEGIES[0], 0, settings.max_budget)
        load_dataset(base.data, data_dir=settings.data_dir, download=False)  # the cache, before the workers
        runs = collect_runs(settings, log)
        retrained = retrain_all(settings, runs, log)
    noise_path = settings.out / "noise.json"
    noise = json.loads(noise_path.read_text(encoding="utf-8")) if noise_path.exists() else None
    return write_outputs(settings, cells(settings, runs, retrained, budget_runs(settings)), runs, noise)


def _saved_retrains(settings: Settings) -> dict[str, Retrained]:
    """The retrained winners on disk, without retraining anything."""
    out = {}
    for path in sorted((settings.out / "retrained").glob("*.json")):
        saved = json.loads(path.read_text(encoding="utf-8"))
        won = Winner(**saved["winner"])
        out[won.name] = Retrained(won, saved["model_params"], tuple(saved["test_acc"]))
    return out


def parse_args(argv: Sequence[str] | None = None) -> tuple[Settings, bool]:
    parser = argparse.ArgumentParser(description="Search quality: our strategies and the peers at equal epoch budgets")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 seed, 300/200 images, 2-epoch trials")
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="the space (default spaces/cifar_cpu.yaml)")
    parser.add_argument(
        "--data-dir",
        default=str(DEFAULT_ARCHIVE) if DEFAULT_ARCHIVE.exists() else None,
        help="CIFAR-10 (default ../shared/data/cifar10-jpeg.tar.gz beside the repository)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--strategies", default=",".join(s.key for s in STRATEGIES), help="a subset, e.g. a,c,g")
    parser.add_argument("--tuning-seeds", help="search seeds looked at while tuning, e.g. 0,1,2,3,4")
    parser.add_argument("--held-out-seeds", help="search seeds for confirmation, e.g. 5,6,7,8,9; 'none' skips them")
    parser.add_argument("--budgets", help="training epochs per strategy and seed, e.g. 60,180")
    parser.add_argument("--retrain-seeds", help="training seeds of the winners' retraining; 'none' skips it")
    parser.add_argument("--workers", type=int, default=2, help="processes for the searches and the retraining")
    parser.add_argument("--report-only", action="store_true", help="write the outputs from the runs on disk")
    args = parser.parse_args(argv)
    mode: dict[str, Any] = dict(QUICK if args.quick else FULL)
    groups: dict[str, tuple[int, ...]] = dict(mode["seed_groups"])
    if args.tuning_seeds:
        groups["tuning"] = _ints(args.tuning_seeds)
    if args.held_out_seeds:
        groups.pop("held-out", None)
        if args.held_out_seeds != "none":
            groups["held-out"] = _ints(args.held_out_seeds)
    mode["seed_groups"] = groups
    if args.budgets:
        mode["budgets"] = _ints(args.budgets)
    if args.retrain_seeds:
        mode["retrain_seeds"] = () if args.retrain_seeds == "none" else _ints(args.retrain_seeds)
    keys = args.strategies.split(",")
    unknown = set(keys) - {s.key for s in STRATEGIES}
    if unknown:
        parser.error(f"--strategies: unknown {sorted(unknown)}; choose from {[s.key for s in STRATEGIES]}")
    data_dir = str(Path(args.data_dir).resolve()) if args.data_dir else None  # Ray workers run elsewhere
    settings = Settings(
        spec_path=args.spec.resolve(),
        data_dir=data_dir,
        strategies=tuple(s for s in STRATEGIES if s.key in keys),
        workers=args.workers,
        out=args.out.resolve(),
        **mode,
    )
    return settings, args.report_only


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def main(argv: Sequence[str] | None = None) -> None:
    settings, report_only = parse_args(argv)
    start = time.monotonic()
    text = run_benchmark(settings, report_only=report_only)
    print()
    print(text)
    print(f"benchmark wall time {time.monotonic() - start:.0f} s; outputs in {settings.out}")
