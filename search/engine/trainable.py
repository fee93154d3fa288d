"""The Tune trainable: what a Ray worker runs for one trial. It loads the uint8 data cache,
trains, and reports every epoch to Tune; a failure becomes a final report with its reason,
never an exception, so the search goes on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from search.budget import Counts
from search.config import DataConfig, TrialConfig
from search.study.schema import ERROR


@dataclass(frozen=True)
class TrialJob:
    """What a Ray worker needs to train one trial; travels inside the Tune config."""

    number: int
    trial: TrialConfig
    data: DataConfig
    data_dir: str | None
    counts: Counts
    use_gpu: bool
    threads: int


def run_trial(config: dict) -> None:
    """The Tune trainable: train one trial, report every epoch, never raise.

    The last report carries ``final: True`` and either the run's summary or ``error``.
    """
    import torch
    from ray import tune

    from search.data import load_dataset
    from search.train import train

    job: TrialJob = config["job"]
    torch.set_num_threads(job.threads)
    device = "cuda" if job.use_gpu and torch.cuda.is_available() else "cpu"
    counts = {"params": job.counts.params, "flops": job.counts.flops}

    def on_epoch(metrics: Any) -> None:
        tune.report({**epoch_report(metrics), **counts})

    try:
        data = load_dataset(job.data, data_dir=job.data_dir, download=False)
        result = train(job.trial, data, device=device, callback=on_epoch)
    except Exception as error:  # a failed trial is recorded, the search goes on
        tune.report({"final": True, ERROR: failure_line(error), **counts})
        return
    if result.status == "nan":
        tune.report({"final": True, ERROR: f"non-finite loss: {result.reason}", **counts})
        return
    tune.report(
        {
            "final": True,
            "val_acc": result.history[-1].val_acc if result.history else float("nan"),
            "val_loss": result.history[-1].val_loss if result.history else float("nan"),
            "epochs_run": result.epochs_run,
            "train_time_s": result.train_time_s,
            "images_per_s": result.images_per_s,
            **counts,
        }
    )


def epoch_report(metrics: Any) -> dict:
    keys = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s", "elapsed_s")
    return {key: getattr(metrics, key) for key in keys}


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
