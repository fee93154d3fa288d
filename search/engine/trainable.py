"""The Tune trainable: what a Ray worker runs for one trial. It loads the uint8 data cache,
trains, and reports every epoch to Tune; a failure becomes a final report with its reason,
never an exception, so the search goes on. A trial that finished hands its model folder back
with its final report, as a Tune checkpoint (``run --keep``; :mod:`search.engine.keep`).

Tune reuses a worker for trial after trial (``reuse_actors``): the data is loaded once per
worker process and kept for the trials it runs next, and each trial says in its reports
whether it started the worker (what it paid before its first step differs)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from search.budget import Counts
from search.config import DataConfig, Rung, Spec, TrialConfig
from search.data.fingerprint import DataRecord
from search.study.keys import ERROR, FRESH_WORKER, FULL_EPOCHS
from search.train.result import VALIDATION_METRICS

KEEP_ERROR = "keep_error"  # in a final report: why the trial's weights could not be handed back

# This worker process's own state, kept from trial to trial: how many trials it began, and
# the data it loaded last (by the data's record, spec section and location).
_WORKER: dict[str, Any] = {"trials": 0, "data_key": None, "data": None}


@dataclass(frozen=True)
class TrialOutput:
    """What a trial needs to hand its trained model back: the spec (for ``config.yaml``), the
    data's record (for ``model.json``), the driver's folder (relative ``init_from`` paths: Ray
    runs each trial in a folder of its own) and whether to send weights at all."""

    spec: Spec
    data: DataRecord | None
    cwd: str
    keep: bool


@dataclass(frozen=True)
class TrialJob:
    """What a Ray worker needs to train one trial; travels inside the Tune config. ``rungs``:
    the successive-halving rungs it reports at (``study.pruner.rungs``)."""

    number: int
    trial: TrialConfig
    data: DataConfig
    data_dir: str | None
    counts: Counts
    use_gpu: bool
    threads: int
    output: TrialOutput | None = None
    rungs: tuple[Rung, ...] = ()


def run_trial(config: dict) -> None:
    """The Tune trainable: train one trial, report every epoch, never raise.

    The last report carries ``final: True`` and either the run's summary or ``error``.
    """
    import torch
    from ray import tune

    from search.train import TrainOptions, train
    from search.train.warm_start import resolve_init

    job: TrialJob = config["job"]
    fresh_worker = _WORKER["trials"] == 0
    _WORKER["trials"] += 1
    torch.set_num_threads(job.threads)
    device = "cuda" if job.use_gpu and torch.cuda.is_available() else "cpu"
    counts = {"params": job.counts.params, "flops": job.counts.flops}
    trial = job.trial
    if job.output is not None:
        trial = replace(trial, model=resolve_init(trial.model, job.output.cwd))

    def on_epoch(metrics: Any) -> None:
        tune.report({**epoch_report(metrics), **counts, FRESH_WORKER: fresh_worker})

    try:
        data = shared_placement(worker_data(job))
        result = train(trial, data, TrainOptions(device=device, callback=on_epoch, rungs=job.rungs))
    except Exception as error:  # a failed trial is recorded, the search goes on
        tune.report({"final": True, ERROR: failure_line(error), **counts})
        return
    if result.status == "nan":
        tune.report({"final": True, ERROR: f"non-finite loss: {result.reason}", **counts})
        return
    last = result.history[-1] if result.history else None
    final = {
        "final": True,
        **{key: getattr(last, key) if last else float("nan") for key in VALIDATION_METRICS},
        "epochs_run": result.epochs_run,
        "train_time_s": result.train_time_s,
        "images_per_s": result.images_per_s,
        **counts,
    }
    if job.output is not None and job.output.keep:
        report_with_model(final, result, trial, data, job, device)
    else:
        tune.report(final)


def shared_placement(data: Any) -> Any:
    """``data`` placed knowing how many trials share this worker's GPU: Ray assigned the trial
    its fraction of one (the same count the pre-run block used, from ``resources.gpu``)."""
    import ray

    from search.data.placement import trials_per_device

    gpu = ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0) if ray.is_initialized() else 0.0
    return replace(data, placement=data.placement.shared_by(trials_per_device(gpu)))


def worker_data(job: TrialJob) -> Any:
    """The trial's dataset, loaded once per worker process: a trial on a reused worker gets the
    tensors its predecessor loaded when the data is the same (its record's hash, the spec's
    data section, the location), and the worker keeps one dataset at a time."""
    from search.data import load_dataset

    sha256 = job.output.data.sha256 if job.output is not None and job.output.data is not None else None
    key = (sha256, job.data, job.data_dir)
    if _WORKER["data_key"] != key:
        _WORKER["data_key"], _WORKER["data"] = None, None  # the old tensors go before the new load
        _WORKER["data"] = load_dataset(job.data, data_dir=job.data_dir, download=False)
        _WORKER["data_key"] = key
    return _WORKER["data"]


def startup_probe() -> None:
    """What a new worker does before a trial's first step, for the start-up probe
    (:func:`search.engine.cost.probe_startup`), run as ``python -c``: import what a Tune worker
    imports, load the data (as given on stdin, pickled with the model config and the image
    size) and build the model. Data that cannot be loaded is skipped: the imports still count."""
    import contextlib
    import pickle
    import sys

    import ray.tune  # noqa: F401  (a Tune worker's own imports)

    from search.data import load_dataset
    from search.models import build_model

    data, data_dir, model, image_size = pickle.loads(sys.stdin.buffer.read())
    with contextlib.suppress(Exception):  # a dry run before the data is there: the rest is measured all the same
        load_dataset(data, data_dir=data_dir, download=False)
    build_model(model, image_size)


def report_with_model(final: dict, result: Any, trial: TrialConfig, data: Any, job: TrialJob, device: str) -> None:
    """The final report with the trial's model folder as a Tune checkpoint, which Ray copies into
    the study's storage (its ``storage_path``) from whichever node trained it.

    The result counts even when the weights cannot be sent (say, a storage path the node
    cannot reach): then the report says why, under ``keep_error``.
    """
    import tempfile

    from ray import tune

    from search.train.model_folder import FolderContents, ModelSource, write_model_folder

    assert job.output is not None
    spec = job.output.spec
    source = ModelSource(study=spec.study.name, trial=job.number, trained_on="train", data=job.output.data)
    with tempfile.TemporaryDirectory(prefix=f"trial_{job.number}_model_") as folder:
        try:
            write_model_folder(folder, result, FolderContents(spec, trial, data, source, device))
            tune.report(final, checkpoint=tune.Checkpoint.from_directory(folder))
            return
        except Exception as error:  # the trial's result must reach the study all the same
            reason = failure_line(error)
    tune.report({**final, KEEP_ERROR: reason})


def epoch_report(metrics: Any) -> dict:
    """An epoch's (or a rung's) metrics as Tune reports them; ``rung`` only where it is one."""
    keys = ("epoch", "train_loss", "train_acc", *VALIDATION_METRICS, "lr", "images_per_s", "elapsed_s", FULL_EPOCHS)
    report = {key: getattr(metrics, key) for key in keys}
    return report if metrics.rung is None else {**report, "rung": metrics.rung}


def failure_line(error: Exception) -> str:
    """A trial's failure in one line; running out of memory is named as such (on a GPU torch
    raises ``OutOfMemoryError``, on the CPU a ``RuntimeError`` from its allocator)."""
    import torch

    if isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in str(error):
        return f"out of memory: {_first_line(error)}"
    return f"{type(error).__name__}: {_first_line(error)}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__
