"""The state of a run between epochs, and its checkpoint file.

A checkpoint is a ``torch.save``'d dict, version :data:`CHECKPOINT_VERSION`:

- ``version``, ``trial`` (the trial's repr), ``epochs`` and ``n_train``: which run it is;
  :meth:`TrainState.load` refuses a file whose values differ from the run's.
- ``epoch``: the last epoch completed.
- ``model``, ``optimizer``, ``scheduler``: their state dicts; ``ema``: the weight
  average's (``{module, updates}``), or None without ``train.ema``.
- ``torch_rng``, ``cuda_rng`` (a list, empty off CUDA), ``generator``: every RNG the run
  draws from, so a resumed run equals an uninterrupted one.
- ``history`` (the epochs' metrics as dicts), ``train_time_s``, ``train_images``,
  ``train_seconds``, ``compile_time_s``: the totals the result reports.

Only tensors, numbers, strings, lists and dicts: it loads with ``weights_only=True``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search.config import UserError
from search.config.files import atomic_file
from search.train.ema import WeightEma
from search.train.result import EpochMetrics

CHECKPOINT_VERSION = 2  # 2: the weight average (``ema``)


@dataclass(frozen=True)
class RunId:
    """What makes a checkpoint belong to a run: the same trial, epoch count and training set size.

    ``trial`` is the trial's ``repr``: a string compares (and loads) without pickled classes.
    """

    trial: str
    epochs: int
    n_train: int

    def as_dict(self) -> dict[str, Any]:
        """The identifying fields as the checkpoint stores them, ``version`` included."""
        return {"version": CHECKPOINT_VERSION, "trial": self.trial, "epochs": self.epochs, "n_train": self.n_train}


@dataclass
class TrainState:
    """Everything an epoch changes: weights, optimizer and schedule, RNGs, history and time totals.

    ``model`` is the uncompiled module (its state_dict keys stay plain). ``epoch`` is the
    last epoch completed, 0 before the first. The totals are those of
    :class:`~search.train.result.TrainResult`: ``train_images`` and ``train_seconds`` count
    training steps only (for images/s), ``train_time_s`` includes validation,
    ``compile_time_s`` is the first compiled step. ``ema`` is the weight average of
    ``train.ema``: where there is one, it is what is evaluated and saved
    (:attr:`eval_model`).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    device: torch.device
    run_id: RunId
    epoch: int = 0
    history: list[EpochMetrics] = field(default_factory=list)
    train_time_s: float = 0.0
    train_images: int = 0
    train_seconds: float = 0.0
    compile_time_s: float = 0.0
    ema: WeightEma | None = None

    @property
    def eval_model(self) -> nn.Module:
        """The model to evaluate and save: the weight average if there is one, else the model."""
        return self.ema.module if self.ema is not None else self.model

    def save(self, path: Path) -> None:
        """Write the state to ``path`` atomically: a crash leaves the old file or the new one.

        Args:
            path: The checkpoint file; its folder is created if missing.

        Raises:
            UserError: the file cannot be written (a full disk, no permission); the previous
                checkpoint is left as it was, and no partial file stays behind.
        """
        state = {
            **self.run_id.as_dict(),
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "generator": self.generator.get_state(),
            "history": [asdict(m) for m in self.history],
            "train_time_s": self.train_time_s,
            "train_images": self.train_images,
            "train_seconds": self.train_seconds,
            "compile_time_s": self.compile_time_s,
        }
        try:
            with atomic_file(path) as f:
                torch.save(state, f)
        except (OSError, RuntimeError) as error:  # torch.save reports a failed write as RuntimeError
            raise UserError(
                f"{path}: cannot write the checkpoint ({_reason(error)}); the previous one, if any, is kept"
            ) from None

    @classmethod
    def load(cls, path: Path, fresh: TrainState) -> TrainState:
        """The state saved at ``path``, loaded into the modules of ``fresh``.

        The global torch (and CUDA) RNGs are restored too: dropout resumes where it stopped.

        Args:
            path: A checkpoint written by :meth:`save`.
            fresh: This run's state as set up before the first epoch; its model, optimizer,
                scheduler and generator receive the saved states, and its ``run_id`` must
                match the checkpoint's.

        Returns:
            A state that shares ``fresh``'s objects, at the saved epoch with the saved totals.

        Raises:
            UserError: The checkpoint is damaged (truncated, not a checkpoint), or of another
                trial, epoch count or training set size.
        """
        try:
            state = torch.load(path, map_location=fresh.device, weights_only=True)
        except Exception as error:  # noqa: BLE001 - a zip, pickle or I/O error: the file is unusable
            raise UserError(
                f"{path}: the checkpoint cannot be read ({_reason(error)}); delete it to start afresh"
            ) from None
        if not isinstance(state, dict):
            raise UserError(f"{path}: not a checkpoint of resnet-search; delete it to start afresh")
        mine = fresh.run_id.as_dict()
        theirs = {k: state.get(k) for k in mine}
        if theirs != mine:
            bad = ", ".join(k for k in mine if theirs[k] != mine[k])
            raise UserError(f"{path}: checkpoint does not match this run ({bad} differ); delete it or drop --resume")
        fresh.model.load_state_dict(state["model"])
        fresh.optimizer.load_state_dict(state["optimizer"])
        fresh.scheduler.load_state_dict(state["scheduler"])
        if fresh.ema is not None:
            fresh.ema.load_state_dict(state["ema"])
        # map_location moved the RNG states to the device; the setters want CPU tensors.
        torch.set_rng_state(state["torch_rng"].cpu())
        if fresh.device.type == "cuda" and state["cuda_rng"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        fresh.generator.set_state(state["generator"].cpu())
        return replace(
            fresh,
            epoch=state["epoch"],
            history=[EpochMetrics(**m) for m in state["history"]],
            train_time_s=state["train_time_s"],
            train_images=state["train_images"],
            train_seconds=state["train_seconds"],
            compile_time_s=state["compile_time_s"],
        )


def _reason(error: BaseException) -> str:
    """An error's first line: a full disk says ``No space left on device``."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
