"""Helpers for tests that drive searches: a small spec on the tiny image folder, the CLI as
a subprocess, and reading the study back (read-only while a driver may be setting it up)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import optuna

from search.study.keys import is_finished

SPEC = """
study:
  name: {name}
  n_trials: {n_trials}
  objectives: [{{metric: val_loss, direction: minimize}}]
  sampler: {{name: tpe, n_startup_trials: 3}}
  pruner: {{name: median, n_startup_trials: 2, n_warmup_steps: 0}}
  seed: 0
data: {{dataset: imagefolder, val_fraction: 0.25}}
model:
  num_classes: 3
  stem: {{width: 8}}
  stages:
    - {{blocks: {{range: [1, 2]}}, width: {{choice: [8, 16, 96]}}}}
    - {{blocks: 1, width: 16}}
train:
  epochs: {epochs}
  batch_size: 8
  optimizer: {{name: sgd, lr: {{range: [0.0001, 0.5], log: true}}}}
budget: {{max_params: {max_params}}}
resources: {{cpu: 1, max_concurrent: 1, max_failures: {max_failures}}}
"""


def write_spec(
    folder: Path, name: str, n_trials: int, epochs: int, *, max_failures: int = 0, max_params: int = 40_000
) -> Path:
    """A search over tiny ResNets for ``tiny_imagefolder``; by default widths 96 are over the budget."""
    path = folder / f"{name}.yaml"
    path.write_text(
        SPEC.format(name=name, n_trials=n_trials, epochs=epochs, max_failures=max_failures, max_params=max_params)
    )
    return path


def run_cli(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
    """``resnet-search ARGS`` in ``cwd``, in a session of its own (so signals reach its Ray too)."""
    return subprocess.Popen(
        [sys.executable, "-m", "search.cli", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def sqlite_url(cwd: Path, name: str) -> str:
    return f"sqlite:///{cwd / 'studies' / name}.db"


def load(storage: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage)


def study_exists(storage: str, name: str) -> bool:
    """Whether the study is there. SQLite is read read-only: opening a half-made SQLite study
    with Optuna would race the driver's schema setup."""
    if not storage.startswith("sqlite:///"):
        return name in {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    db = Path(storage[len("sqlite:///") :])
    if not db.exists():
        return False
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
            return connection.execute("SELECT 1 FROM studies WHERE study_name = ?", (name,)).fetchone() is not None
    except sqlite3.Error:  # tables not created yet
        return False


def wait_for_finished(process: subprocess.Popen, storage: str, name: str, count: int) -> dict[int, tuple]:
    """Poll the study until ``count`` trials finished; their (state, values, params) by number."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.5)
        if not study_exists(storage, name):
            continue
        finished = [t for t in load(storage, name).trials if is_finished(t)]
        if len(finished) >= count:
            return {t.number: (t.state, t.values, t.params) for t in finished}
    output = process.stdout.read() if process.poll() is not None else ""
    raise AssertionError(f"the driver never finished {count} trials: {output}")


def kill(process: subprocess.Popen, how: signal.Signals) -> str:
    """Send ``how`` to the CLI's whole session (the driver and the local Ray it started)."""
    os.killpg(process.pid, how)
    output, _ = process.communicate(timeout=120)
    return output


def files_containing(root: Path, secret: str) -> list[Path]:
    """The files under ``root`` whose bytes contain ``secret``. A file that goes while the tree
    is read (a live Ray session moves its logs to ``old/``) is not one."""
    found = []
    for path in root.rglob("*"):
        try:
            if path.is_file() and secret.encode() in path.read_bytes():
                found.append(path)
        except FileNotFoundError:
            continue
    return found
