"""Round 3's queue: every (strategy, seed, budget) run in priority order, in one process, each
run's record written as it finishes (atomically, :mod:`.store`), so that killing the queue loses
at most the run in progress and starting it again (this session or another, on this machine or
another with the records checked out) skips every recorded run.

Priority: at the longest budget (whose prefix gives the shorter one for every strategy but
SMAC's), on the tuning seeds, the candidate defaults and round 2's default first; then SMAC3
and Ray's ASHA with their cheaper-fidelity rows; then random search; then the held-out seeds
of the candidate default, round 3's first candidate (c), (c-old), SMAC3, Ray's ASHA and
random search; then the other peers. Within a tier, seed by seed, so that a partial queue
holds whole seeds. Then the noise measurement (if it is not recorded), the winners'
retraining and the report.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .records import SearchRun, run_line
from .settings import BY_KEY, CANDIDATES, OLD_DEFAULT, OURS, Settings, Strategy, run_budget
from .store import load_run, saved_search

Log = Callable[[str], None]
Job = tuple[Strategy, int, int]

# (seed group, strategy keys), in priority order.
ROUND3_TIERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("tuning", (*CANDIDATES, OLD_DEFAULT)),
    ("tuning", ("i", "i-rungs", "e", "e-rungs")),
    ("tuning", ("a",)),
    ("held-out", (OURS, "c", OLD_DEFAULT, "i", "e", "a")),
    ("tuning", ("g", "h", "f")),
)
ROUND3_KEYS = tuple(dict.fromkeys(key for _, keys in ROUND3_TIERS for key in keys))
PLANS = {"round3": ROUND3_TIERS}


def queue(settings: Settings, tiers: Sequence[tuple[str, tuple[str, ...]]]) -> list[Job]:
    """The plan's runs in order, each once: the longest budget's first (the others' prefix)."""
    chosen = {s.key for s in settings.strategies}
    out: list[Job] = []
    for group, keys in tiers:
        for seed in settings.seed_groups.get(group, ()):
            for key in (k for k in keys if k in chosen):
                strategy = BY_KEY[key]
                for budget in sorted({run_budget(settings, strategy, b) for b in settings.budgets}, reverse=True):
                    if (strategy, seed, budget) not in out:
                        out.append((strategy, seed, budget))
    return out


def run_queue(settings: Settings, jobs: Sequence[Job], log: Log) -> list[SearchRun]:
    """Run the jobs not recorded yet, one at a time, in this process; return every job's run."""
    from .tune_asha import RaySession

    runs = []
    with RaySession(settings) as ray:
        for index, (strategy, seed, budget) in enumerate(jobs, start=1):
            recorded = load_run(settings, strategy, seed, budget)
            if recorded is not None:
                runs.append(recorded)
                continue
            log(f"[{index}/{len(jobs)}] ({strategy.key}) seed {seed}, budget {budget}: running")
            if strategy.engine == "tune":
                ray.start()
            run = saved_search(settings, strategy, seed, budget)
            log(f"[{index}/{len(jobs)}] {run_line(run)}")
            runs.append(run)
    return runs


def start_in_background(argv: Sequence[str], log_path: Path, script: Path) -> int:
    """Start the queue detached from this terminal (its own session: closing the terminal or
    this process leaves it running), its output appended to ``log_path``; return its pid."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as handle:
        process = subprocess.Popen(
            [sys.executable, str(script), *argv],
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    return process.pid
