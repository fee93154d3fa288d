"""Running the benchmark: every strategy, seed and budget (finished runs read back from their
records), the winners retrained, the outputs written. ``--report-only`` writes the outputs from
the records without running anything (a long run's partial results); ``--plan round3`` works
through round 3's queue in priority order in one process (:mod:`.plan`), ``--background``
starts that detached, logging to ``<out>/queue.log``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import optuna

from search.data import load_dataset

from .analysis import cells
from .plan import PLANS, ROUND3_KEYS, queue, run_queue, start_in_background
from .records import SearchRun, run_line
from .report import write_outputs
from .retraining import Retrained, Winner, retrain_winner, winner
from .settings import (
    DEFAULT_ARCHIVE,
    DEFAULT_OUT,
    DEFAULT_RECORDS,
    DEFAULT_SPEC,
    FULL,
    QUICK,
    REPO,
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


# The order runs start in, seed by seed (without a plan): round 3's strategies first, in the
# order of its queue, so that a long run's partial results hold the comparison the goal is about.
PRIORITY = (*ROUND3_KEYS, "c4", "j", "b", "d")


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
                own = [r for r in runs if r.strategy == strategy.key and r.seed in seeds and r.budget == held]
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
    return settings.records / "retrained" / f"{won.name}.json"


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


def run_benchmark(settings: Settings, *, report_only: bool = False, plan: str | None = None, log: Log = print) -> str:
    """Run (or, ``report_only``, read back) every search, retrain the winners, write the outputs.
    With a ``plan``, the searches run one at a time in the plan's order (:mod:`.plan`).

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
        if plan is not None:
            runs = run_queue(settings, queue(settings, PLANS[plan]), log)
            _measure_noise(settings, log)
        else:
            runs = collect_runs(settings, log)
        retrained = retrain_all(settings, runs, log)
    noise_path = settings.records / "noise.json"
    noise = json.loads(noise_path.read_text(encoding="utf-8")) if noise_path.exists() else None
    return write_outputs(settings, cells(settings, runs, retrained, budget_runs(settings)), runs, noise)


def _measure_noise(settings: Settings, log: Log) -> None:
    """The noise measurement (:mod:`.noise`, a few minutes) into the records, unless recorded."""
    if (settings.records / "noise.json").exists() or settings.data_dir is None or settings.train:
        return  # recorded, or no data, or the quick mode's task (not the benchmark's)
    from .noise import main as measure_noise

    log("measuring the noise (noise.json)")
    measure_noise(["--out", str(settings.records), "--data-dir", settings.data_dir])


def _saved_retrains(settings: Settings) -> dict[str, Retrained]:
    """The retrained winners in the records, without retraining anything."""
    out = {}
    for path in sorted((settings.records / "retrained").glob("*.json")):
        saved = json.loads(path.read_text(encoding="utf-8"))
        won = Winner(**saved["winner"])
        out[won.name] = Retrained(won, saved["model_params"], tuple(saved["test_acc"]))
    return out


@dataclass(frozen=True)
class Mode:
    """What to do besides the settings: only the report, a plan's queue, in the background."""

    report_only: bool = False
    plan: str | None = None
    background: bool = False


def parse_args(argv: Sequence[str] | None = None) -> tuple[Settings, Mode]:
    parser = argparse.ArgumentParser(
        description="Search quality: our strategies and the peers at equal compute (full-epoch equivalents)"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 seed, 300/200 images, 2-epoch trials")
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="the space (default spaces/cifar_cpu.yaml)")
    parser.add_argument(
        "--data-dir",
        default=str(DEFAULT_ARCHIVE) if DEFAULT_ARCHIVE.exists() else None,
        help="CIFAR-10 (default ../shared/data/cifar10-jpeg.tar.gz beside the repository)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="scratch outputs (figures, Ray, studies)")
    parser.add_argument(
        "--records",
        type=Path,
        help="the runs' records, retrained winners and report.md (default benchmarks/results/search_quality; "
        "--quick: <out>/records)",
    )
    parser.add_argument(
        "--strategies",
        default=",".join(ROUND3_KEYS),
        help=f"a subset, e.g. a,c,g (default: round 3's; all: {','.join(s.key for s in STRATEGIES)})",
    )
    parser.add_argument("--tuning-seeds", help="search seeds looked at while tuning, e.g. 0,1,2,3,4; 'none' skips them")
    parser.add_argument("--held-out-seeds", help="search seeds for confirmation, e.g. 5,6,7,8,9; 'none' skips them")
    parser.add_argument("--budgets", help="full-epoch equivalents per strategy and seed, e.g. 60,180")
    parser.add_argument("--retrain-seeds", help="training seeds of the winners' retraining; 'none' skips it")
    parser.add_argument("--workers", type=int, default=2, help="processes for the searches and the retraining")
    parser.add_argument("--report-only", action="store_true", help="write the outputs from the records")
    parser.add_argument("--plan", choices=sorted(PLANS), help="work through a plan's queue, one run at a time")
    parser.add_argument("--background", action="store_true", help="start the plan's queue detached (<out>/queue.log)")
    args = parser.parse_args(argv)
    if args.background and not args.plan:
        parser.error("--background runs a plan's queue: add --plan round3")
    mode: dict[str, Any] = dict(QUICK if args.quick else FULL)
    groups: dict[str, tuple[int, ...]] = dict(mode["seed_groups"])
    for group, given in (("tuning", args.tuning_seeds), ("held-out", args.held_out_seeds)):
        if given:
            groups[group] = () if given == "none" else _ints(given)
    groups = {group: seeds for group, seeds in groups.items() if seeds}  # tuning first, as given
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
    out = args.out.resolve()
    records = args.records or (out / "records" if args.quick else DEFAULT_RECORDS)
    settings = Settings(
        spec_path=args.spec.resolve(),
        data_dir=data_dir,
        strategies=tuple(s for s in STRATEGIES if s.key in keys),
        workers=args.workers,
        out=out,
        records=records.resolve(),
        **mode,
    )
    return settings, Mode(args.report_only, args.plan, args.background)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    settings, mode = parse_args(argv)
    if mode.background:
        log_path = settings.out / "queue.log"
        rest = [arg for arg in argv if arg != "--background"]
        pid = start_in_background(rest, log_path, REPO / "benchmarks" / "search_efficiency.py")
        print(f"queue started in the background: pid {pid}, log {log_path}")
        return
    start = time.monotonic()
    text = run_benchmark(settings, report_only=mode.report_only, plan=mode.plan)
    print()
    print(text)
    elapsed = time.monotonic() - start
    print(f"benchmark wall time {elapsed:.0f} s; records in {settings.records}, the rest in {settings.out}")
