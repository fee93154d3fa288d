"""What a trial pays before its first training step: a Ray worker, its imports, the data, the
model. Tune reuses a worker for trial after trial, so the first trial of each slot pays more
(``cold_s``) than the later ones (``warm_s``).

Where the figures come from, best first: the study's own trials (the driver stores each one's
start-up, :data:`~search.study.keys.STARTUP_S`); this machine's record of an earlier run or
probe (``startup.json`` in the user cache, keyed by the machine, the versions that matter and
the trials started at once); else a probe, measured once and recorded: as many fresh Python
processes at once as trials start together, each doing what a new worker does.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from optuna.trial import FrozenTrial

from search.config import Spec, TrialConfig, UserError
from search.config.files import write_text
from search.config.units import format_duration
from search.study.keys import FRESH_WORKER, STARTUP_S

STARTUP_PROBE_MAX = 8  # fresh processes the start-up probe starts at once, at most
STARTUP_PROBE_TIMEOUT_S = 300
RECORD_FILE = "startup.json"  # in the user cache: this machine's measured start-ups


@dataclass(frozen=True)
class StartUp:
    """Seconds a trial pays before its first training step: ``cold_s`` when it starts a new Ray
    worker, ``warm_s`` on a reused one (None: no trial measured reused one); ``source`` says
    how they were measured."""

    cold_s: float
    warm_s: float | None
    source: str

    def line(self) -> str:
        """``start-up: 14.2s per trial on a new Ray worker, 0.3s on a reused one (how measured)``."""
        warm = "none reused one" if self.warm_s is None else f"{seconds_text(self.warm_s)} on a reused one"
        return f"start-up: {seconds_text(self.cold_s)} per trial on a new Ray worker, {warm} ({self.source})"


def stored_startup(trials: Sequence[FrozenTrial], of: str = "the study") -> StartUp | None:
    """The start-up ``trials`` measured (the median of those that started a new worker, and of
    those that reused one); None until one of them has started a new worker.

    Args:
        trials: Trials with or without a stored start-up.
        of: Whose trials they are, for :attr:`StartUp.source`.
    """
    measured = [t.user_attrs for t in trials if isinstance(t.user_attrs.get(STARTUP_S), (int, float))]
    cold = [a[STARTUP_S] for a in measured if a.get(FRESH_WORKER)]
    if not cold:
        return None
    warm = [a[STARTUP_S] for a in measured if not a.get(FRESH_WORKER)]
    return StartUp(
        statistics.median(cold),
        statistics.median(warm) if warm else None,
        f"median of {len(measured)} trial(s) of {of}",
    )


def probe_startup(
    spec: Spec, config: TrialConfig, image_size: int, data_dir: str | None, slots: int, build_s: float
) -> StartUp:
    """A new worker's start-up, measured: ``slots`` fresh Python processes at once (as many as
    trials start together), each importing what a Tune worker imports, loading the data and
    building the model; the slowest one's wall time. A reused worker keeps its imports and
    data (:func:`~search.engine.trainable.worker_data`) and builds the model again.

    A process that cannot run (no interpreter, a data folder not there yet) leaves the
    figure at what the others measured; none at all: 0 s, said so.
    """
    count = max(1, min(slots, STARTUP_PROBE_MAX))
    payload = pickle.dumps((spec.data, data_dir, config.model, image_size))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), *sys.path])}
    command = [sys.executable, "-c", "from search.engine.trainable import startup_probe; startup_probe()"]
    began = time.perf_counter()
    processes = [
        subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        for _ in range(count)
    ]
    for process in processes:  # all started before any waits: they contend as workers do
        assert process.stdin is not None
        try:
            process.stdin.write(payload)
            process.stdin.close()
        except OSError:  # it ended already; its exit status says how
            pass
    finished: list[float] = []
    for process in processes:
        try:
            if process.wait(timeout=max(1.0, began + STARTUP_PROBE_TIMEOUT_S - time.perf_counter())) == 0:
                finished.append(time.perf_counter() - began)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if not finished:
        return StartUp(0.0, build_s, "not measured: the probe's worker process failed")
    return StartUp(
        max(finished),
        build_s,
        f"probe: {count} new Python process(es) importing, loading the data and building the model at once",
    )


def startup_seconds(sent: float, first_report: float, first_epoch_s: float) -> float:
    """What a trial paid before its first step: from the driver sending it to Ray (``sent``) to
    its first epoch report reaching the driver, less the epoch itself (as the trial timed it)."""
    return max(0.0, first_report - sent - first_epoch_s)


def seconds_text(seconds: float) -> str:
    """``4.2s`` under a minute (a probe of small configs), else ``1h05m``."""
    return f"{seconds:.1f}s" if seconds < 60 else format_duration(seconds)


def machine_key(device: str, slots: int) -> str:
    """What a start-up measured here holds for: this machine, its Python, torch and Ray, the
    device, and how many trials start at once."""
    versions = []
    for package in ("torch", "ray"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package} -")
    return " | ".join([platform.node(), sys.executable, *versions, device, f"{slots} at once"])


def recorded_startup(key: str) -> StartUp | None:
    """The start-up this machine recorded for ``key``; None when there is none (or the file is
    not one we wrote: it is read as untrusted input, and anything odd is ignored)."""
    try:
        entry = json.loads(_record_path().read_text(encoding="utf-8")).get(key)
        cold, source = float(entry["cold_s"]), str(entry["source"])[:300]
        warm = None if entry["warm_s"] is None else float(entry["warm_s"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    if not all(math.isfinite(v) and 0 <= v < 86_400 for v in (cold, warm or 0.0)):
        return None
    return StartUp(cold, warm, f"measured on this machine before, {source}")


def record_startup(key: str, startup: StartUp) -> None:
    """Remember ``startup`` for ``key`` on this machine (best effort: a cache that cannot be
    written costs a probe next time, nothing else)."""
    path = _record_path()
    try:
        stored = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        stored = stored if isinstance(stored, dict) else {}
        stored[key] = asdict(startup)
        write_text(path, json.dumps(stored, indent=1))
    except (OSError, ValueError, UserError):
        pass


def _record_path() -> Path:
    from search.data import cache_dir

    return cache_dir() / RECORD_FILE
