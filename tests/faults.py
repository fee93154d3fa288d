"""A Tune trainable that makes chosen trials fail for real, then trains them with ``run_trial``.

Each fault changes the trial's job so that the real trainer meets a real failure:

- ``raise``: a model for 2 classes on 3-class data (the loss raises on label 2);
- ``oom``: a stage so wide that its weights cannot be allocated (over 100 TB, beyond any
  address space, so the allocator refuses it whatever the kernel's overcommit policy);
- ``nan``: a learning rate of 1e30, which drives the loss to inf/NaN;
- ``kill``: the Ray worker process is killed with SIGKILL while the trial trains;
- ``kill_once``: the same on the first attempt only (a marker file remembers it), so a
  retried trial then trains to the end.

Run as a script it is a driver: ``python tests/faults.py SPEC DATA ADDRESS FAULTS MARKERS``
runs the search with faults (JSON, trial number -> fault) on the Ray cluster at ADDRESS.
A driver process of its own, because Ray reads its authentication settings when imported.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from search.config import load_spec
from search.engine.options import RunOptions
from search.engine.run import run_search
from search.engine.trainable import TrialJob, run_trial

UNALLOCATABLE_WIDTH = 2_000_000  # a 3x3 conv at this width: 2e6 * 2e6 * 9 * 4 bytes = 144 TB
KILL_AFTER_S = 3.0
LONG_EPOCHS = 60  # a retried kill_once trial trains this long, to the end
KILLED_EPOCHS = 100_000  # keeps a trial training until its worker is killed, however fast the machine


def faulty_trainable(faults: dict[int, str], markers: Path) -> Callable[[dict], None]:
    """``run_trial``, with ``faults[trial number]`` injected into those trials."""

    def trainable(config: dict) -> None:
        job: TrialJob = config["job"]
        fault = faults.get(job.number)
        if fault is not None:
            job = inject(fault, job, markers / f"trial_{job.number}")
        run_trial({**config, "job": job})

    return trainable


def inject(fault: str, job: TrialJob, marker: Path) -> TrialJob:
    model, train = job.trial.model, job.trial.train
    if fault == "raise":
        return replace(job, trial=replace(job.trial, model=replace(model, num_classes=2)))
    if fault == "oom":
        stages = tuple(replace(stage, width=UNALLOCATABLE_WIDTH) for stage in model.stages)
        return replace(job, trial=replace(job.trial, model=replace(model, stages=stages)))
    if fault == "nan":
        optimizer = replace(train.optimizer, lr=1e30)
        return replace(job, trial=replace(job.trial, train=replace(train, optimizer=optimizer)))
    if fault == "kill" or (fault == "kill_once" and not marker.exists()):
        marker.touch()
        threading.Timer(KILL_AFTER_S, os.kill, (os.getpid(), signal.SIGKILL)).start()
        return replace(job, trial=replace(job.trial, train=replace(train, epochs=KILLED_EPOCHS)))
    if fault == "kill_once":
        return replace(job, trial=replace(job.trial, train=replace(train, epochs=LONG_EPOCHS)))
    raise ValueError(f"unknown fault {fault!r}")


def main(spec: str, data_dir: str, address: str, faults: str, markers: str) -> None:
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the cluster cannot import tests/
    injected = {int(number): fault for number, fault in json.loads(faults).items()}
    options = RunOptions(data_dir=data_dir, address=address, trainable=faulty_trainable(injected, Path(markers)))
    summary = run_search(load_spec(spec), options)
    print(f"finished {summary.finished}, interrupted {summary.interrupted}")


if __name__ == "__main__":
    main(*sys.argv[1:])
