"""What the benchmarks share: the default data, the machine's load, and a real search run.

:func:`run_search` runs ``resnet-search run`` as a user does (for ``search_overhead.py``
and ``packing.py``) and reads what its study recorded. The command runs as a subprocess
(the interpreter, imports, data loading and Ray's start all count) with its working
folder and a SQLite storage in a temporary folder, so nothing in the repository's
``studies/`` is touched.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
POLL_S = 0.1  # how often the study is read for its first epoch result


@dataclass(frozen=True)
class SearchRun:
    """One finished ``resnet-search run``: its timings and its study's trials.

    ``first_epoch_s`` is the time from the command's start until the first epoch result
    of any trial could be read from the study (at most ``POLL_S`` late): the moment a user
    watching optuna-dashboard would first see a learning curve.
    """

    started: datetime
    wall_s: float
    first_epoch_s: float | None
    trials: list[FrozenTrial]
    output: str

    @property
    def trained(self) -> list[FrozenTrial]:
        """Trials that reached a Ray worker (rejected samples never train)."""
        return [t for t in self.trials if "train_time_s" in t.user_attrs]

    @property
    def train_time_s(self) -> float:
        """The trials' own training time (training + per-epoch validation), summed."""
        return sum(t.user_attrs["train_time_s"] for t in self.trained)

    @property
    def span_s(self) -> float:
        """From the first trial sampled to the last one recorded, by the study's timestamps."""
        starts = [t.datetime_start for t in self.trials if t.datetime_start]
        ends = [t.datetime_complete for t in self.trials if t.datetime_complete]
        return (max(ends) - min(starts)).total_seconds()

    @property
    def startup_s(self) -> float:
        """From the command's start to the first trial sampled (imports, data, Ray's start)."""
        return (min(t.datetime_start for t in self.trials if t.datetime_start) - self.started).total_seconds()


def run_search(spec: Path, study_name: str, data_dir: str) -> SearchRun:
    """Run ``resnet-search run SPEC --data-dir DATA`` in a temporary folder with a throwaway storage.

    Raises:
        SystemExit: The command failed; its output is in the message.
    """
    with tempfile.TemporaryDirectory(prefix="resnet-search-bench-") as folder:
        work = Path(folder)
        db = work / "study.db"
        storage = f"sqlite:///{db}"
        log = work / "output.txt"
        command = [
            sys.executable,
            "-m",
            "search.cli",
            "run",
            str(spec.resolve()),
            "--data-dir",
            data_dir,
            "--storage",
            storage,
        ]
        started = datetime.now()  # Optuna stamps trials with naive local datetimes too
        start = time.perf_counter()
        with open(log, "w", encoding="utf-8") as out:
            process = subprocess.Popen(command, cwd=work, stdout=out, stderr=subprocess.STDOUT, text=True)
            first_epoch = _wait_for_first_epoch(process, db, start)
            process.wait()
        wall = time.perf_counter() - start
        output = log.read_text(encoding="utf-8")
        if process.returncode != 0:
            raise SystemExit(f"resnet-search run failed (exit {process.returncode}):\n{output}")
        trials = optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False)
    return SearchRun(started, wall, first_epoch, trials, output)


def _wait_for_first_epoch(process: subprocess.Popen, db: Path, start: float) -> float | None:
    """Seconds from ``start`` until the study holds an intermediate value; None if the run ends first."""
    while process.poll() is None:
        if _has_epoch_result(db):
            return time.perf_counter() - start
        time.sleep(POLL_S)
    return None


def _has_epoch_result(db: Path) -> bool:
    """Whether any trial has reported an epoch. Read-only: never races the driver's schema setup."""
    if not db.exists():
        return False
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.05)) as connection:
            return connection.execute("SELECT 1 FROM trial_intermediate_values LIMIT 1").fetchone() is not None
    except sqlite3.Error:  # the tables are not created yet, or the driver holds a write lock
        return False


def machine_load() -> str:
    """The 1/5/15-minute load averages, to tell a quiet machine from a busy one."""
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())
