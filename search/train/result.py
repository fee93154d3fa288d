"""What a training run produces: one :class:`EpochMetrics` per epoch and a :class:`TrainResult`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

Status = Literal["completed", "stopped", "nan"]

# What every epoch reports about the validation split, by the names objectives use.
VALIDATION_METRICS = ("val_loss", "val_acc", "balanced_acc", "macro_f1")


@dataclass
class EpochMetrics:
    """What one epoch did; passed to the callback and kept in the history.

    ``train_*`` are measured on the augmented batches in training mode (label smoothing
    included); ``val_*`` on the validation split in eval mode with plain cross-entropy,
    so that trials with different smoothing compare. ``lr`` is the first param group's
    LR at the epoch's last step. ``images_per_s`` counts training images only (no
    evaluation); ``elapsed_s`` is the wall time since the run started (resumes included).
    ``balanced_acc`` and ``macro_f1`` are the validation split's too (objectives of the same
    names; :mod:`~search.train.class_metrics`).
    ``full_epochs``: the training so far in full-epoch equivalents (images x FLOPs per image
    at the side trained, :mod:`search.budget.compute`). ``rung``: the index of the
    successive-halving rung this report is (its validation then runs at the rung's side);
    a rung within an epoch reports the epochs done, its ``train_*`` over the epoch's steps so far.
    """

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    images_per_s: float
    elapsed_s: float
    balanced_acc: float = math.nan  # defaults: a checkpoint written before they existed loads
    macro_f1: float = math.nan
    full_epochs: float = 0.0
    rung: int | None = None


@dataclass
class TrainResult:
    """The outcome of :func:`search.train.train`.

    ``status`` is ``completed``, ``stopped`` (the callback returned True) or ``nan``
    (the training loss went non-finite; ``reason`` says when). The history holds every
    epoch run, the non-finite one included. Test fields are set only when
    ``evaluate_test`` was asked and the run did not end in ``nan``. ``train_time_s``
    covers training and per-epoch validation, not compilation (``compile_time_s``).
    ``model`` is the trained (uncompiled) module, for callers that save it.
    """

    status: Status
    history: list[EpochMetrics]
    best_val_acc: float
    final_val_acc: float
    final_val_loss: float
    epochs_run: int
    train_time_s: float
    images_per_s: float
    compile_time_s: float = 0.0
    test_acc: float | None = None
    test_loss: float | None = None
    per_class_test_acc: dict[str, float] | None = None
    confusion_matrix: list[list[int]] | None = None
    classes: tuple[str, ...] = ()
    reason: str | None = None
    model: nn.Module | None = field(default=None, repr=False, compare=False)
