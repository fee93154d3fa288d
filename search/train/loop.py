"""Training: one trial's model on one dataset, in one straight loop (airbench style).

The whole uint8 training set moves to the device once. Every epoch draws a seeded
permutation, augments and normalizes each batch on the device, and steps the optimizer
and a per-step LR schedule (:func:`~search.train.epoch.train_epoch`), then validates
(:func:`~search.train.epoch.evaluate`), records the epoch, checkpoints and asks the
callback whether to go on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from search.config import Augment, TrainConfig, TrialConfig, UserError
from search.data import ImageDataset, TensorSplit
from search.models import build_model
from search.train.epoch import BatchFormat, Evaluation, TrainedEpoch, evaluate, train_epoch
from search.train.recipe import (
    build_optimizer,
    build_scheduler,
    cpu_channels_last_is_safe,
    param_groups,
    resolve_amp_dtype,
    resolve_channels_last,
)
from search.train.result import EpochMetrics, Status, TrainResult
from search.train.state import RunId, TrainState


@dataclass(frozen=True)
class _Run:
    """What stays fixed through a run: the recipe, the compiled model, the data on the device."""

    cfg: TrainConfig
    augment: Augment
    net: nn.Module
    fmt: BatchFormat
    train: TensorSplit
    val: TensorSplit
    batch_size: int
    num_classes: int


def train(
    trial: TrialConfig,
    data: ImageDataset,
    *,
    augment: Augment | None = None,
    device: str | torch.device = "cpu",
    epochs: int | None = None,
    callback: Callable[[EpochMetrics], bool | None] | None = None,
    checkpoint_path: Path | None = None,
    resume: bool = False,
    evaluate_test: bool = False,
    train_split: TensorSplit | None = None,
) -> TrainResult:
    """Train ``trial.model`` with ``trial.train`` on ``data`` and evaluate it every epoch.

    The run is seeded by ``trial.train.seed``: model init, batch order and augmentation,
    so a CPU run repeats bit for bit (CUDA kernels may not).

    Args:
        trial: The model and the recipe.
        data: Train/val/test splits as uint8 tensors, with class names, mean and std.
        augment: Overrides ``trial.train.augment``, the whole-batch augmentation
            applied on the device.
        device: Where to train (``"cuda"``, ``"cuda:1"``, ``"cpu"``).
        epochs: Overrides ``trial.train.epochs`` (short trials); the LR schedule spans it.
        callback: Called with each epoch's metrics; returning True stops the run
            (status ``stopped``). Exceptions it raises (e.g. a pruning signal) propagate.
        checkpoint_path: If given, the full training state is written there atomically
            after every epoch (not after a non-finite one).
        resume: Continue from ``checkpoint_path`` at the epoch after the saved one; a
            missing file starts afresh. The result equals an uninterrupted run's.
        evaluate_test: Evaluate the final weights on the test split.
        train_split: Trains on this instead of ``data.train`` (final retraining on
            train+val; the per-epoch validation is then not held out).

    Returns:
        The :class:`TrainResult`; a non-finite loss ends the run with status ``nan``.

    Raises:
        UserError: The model's ``num_classes`` differs from the dataset's, or the
            checkpoint to resume belongs to another run.
        ValueError: Empty training split, or no trainable parameter.
    """
    cfg = trial.train
    dev = torch.device(device)
    epochs = cfg.epochs if epochs is None else epochs
    split = data.train if train_split is None else train_split
    _check(trial, data, split)
    state, fmt = _set_up(trial, data, split, dev, epochs)
    if resume and checkpoint_path is not None and Path(checkpoint_path).exists():
        state = TrainState.load(Path(checkpoint_path), state)
    run = _Run(
        cfg=cfg,
        augment=cfg.augment if augment is None else augment,
        net=_compiled(state.model, cfg.compile),
        fmt=fmt,
        train=_to(split, dev),
        val=_to(data.val, dev),
        batch_size=min(cfg.batch_size, len(split)),
        num_classes=data.num_classes,
    )
    status: Status = "completed"
    reason: str | None = None
    first = state.epoch + 1
    for epoch in range(first, epochs + 1):
        # This process's first compiled step compiles (resumed or not): it is timed apart.
        metrics, finite = _run_epoch(state, run, epoch, time_first_step=cfg.compile and epoch == first)
        if not finite:
            status, reason = "nan", _non_finite_reason(metrics)
            break
        if checkpoint_path is not None:
            state.save(Path(checkpoint_path))
        if callback is not None and callback(metrics):
            status, reason = "stopped", f"stopped by the callback after epoch {epoch}"
            break
    result = _result(state, status, reason, data.classes)
    if evaluate_test and status != "nan" and data.test.labels.numel():
        _add_test_metrics(result, state.model, _to(data.test, dev), run)
    return result


def _non_finite_reason(metrics: EpochMetrics) -> str:
    return (
        f"non-finite loss in epoch {metrics.epoch} (train {metrics.train_loss}, val {metrics.val_loss}, "
        f"lr {metrics.lr:.3g}); lower the learning rate or clip gradients"
    )


def _check(trial: TrialConfig, data: ImageDataset, split: TensorSplit) -> None:
    """Refuse what cannot train: an empty split, a head of the wrong width.

    Raises:
        ValueError: The training split is empty.
        UserError: The model's ``num_classes`` differs from the dataset's.
    """
    if split.labels.numel() == 0:
        raise ValueError("the training split is empty")
    if trial.model.num_classes != data.num_classes:
        raise UserError(
            f"model.num_classes is {trial.model.num_classes} but the dataset has {data.num_classes} classes"
        )


def _set_up(
    trial: TrialConfig, data: ImageDataset, split: TensorSplit, device: torch.device, epochs: int
) -> tuple[TrainState, BatchFormat]:
    """The seeded model, optimizer, schedule and generator before the first epoch, and the batch format.

    Args:
        trial: The model and the recipe.
        data: For the image size and the normalization constants.
        split: The training split (its size sets the steps per epoch).
        device: Where to train.
        epochs: The run's epoch count; the LR schedule spans it.

    Returns:
        The fresh state and how batches enter the model.
    """
    cfg = trial.train
    if device.type == "cuda":
        # Every step has the same shape, so cuDNN's autotuning pays for itself at once.
        torch.backends.cudnn.benchmark = True
    # Seed the global RNG for init and dropout, and a private generator for the data
    # order and augmentation, so that what the model does cannot shift the batches.
    torch.manual_seed(cfg.seed)
    model = build_model(trial.model, data.image_size).to(device)
    channels_last = resolve_channels_last(cfg, device) and (device.type != "cpu" or cpu_channels_last_is_safe(model))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.seed)
    n_train = len(split)
    steps_per_epoch = n_train // min(cfg.batch_size, n_train)
    optimizer = build_optimizer(
        param_groups(model, cfg.optimizer.weight_decay, cfg.decay_norm_and_bias), cfg.optimizer, device
    )
    scheduler = build_scheduler(optimizer, cfg.scheduler, steps_per_epoch, steps_per_epoch * epochs)
    state = TrainState(model, optimizer, scheduler, generator, device, RunId(repr(trial), epochs, n_train))
    fmt = BatchFormat(
        device=device,
        mean=torch.tensor(data.mean, dtype=torch.float32, device=device),
        std=torch.tensor(data.std, dtype=torch.float32, device=device),
        channels_last=channels_last,
        amp_dtype=resolve_amp_dtype(cfg, device),
    )
    return state, fmt


def _compiled(model: nn.Module, enabled: bool) -> nn.Module:
    """``model`` wrapped by ``torch.compile`` if ``enabled``, else ``model`` itself.

    Called after the checkpoint's weights are loaded; the original module keeps the
    state_dict keys plain and runs evaluation eagerly (no recompilation for eval mode or
    the odd last batch).
    """
    if not enabled:
        return model
    compiled: nn.Module = torch.compile(model)  # type: ignore[assignment]
    return compiled


def _to(split: TensorSplit, device: torch.device) -> TensorSplit:
    """``split`` on ``device``: moved once, batches are then index lookups there."""
    return TensorSplit(split.images.to(device), split.labels.to(device))


def _run_epoch(state: TrainState, run: _Run, epoch: int, *, time_first_step: bool) -> tuple[EpochMetrics, bool]:
    """Train epoch ``epoch``, validate, and add it to ``state`` (history and time totals).

    Returns:
        The epoch's metrics, and whether its training and validation losses were finite.
    """
    t_epoch = time.perf_counter()
    trained = train_epoch(
        state,
        run.net,
        run.train,
        run.fmt,
        cfg=run.cfg,
        augment=run.augment,
        batch_size=run.batch_size,
        time_first_step=time_first_step,
    )
    # The first compiled step is mostly compilation: book it apart from training time.
    state.compile_time_s += trained.first_step_s
    t_epoch += trained.first_step_s
    seconds = time.perf_counter() - t_epoch
    val = evaluate(state.model, run.val, run.fmt, num_classes=run.num_classes, batch_size=run.cfg.eval_batch_size)
    metrics = _record(state, epoch, trained, val, seconds, time.perf_counter() - t_epoch)
    finite = math.isfinite(trained.total_loss) and (val.n == 0 or math.isfinite(val.loss))
    return metrics, finite


def _record(
    state: TrainState, epoch: int, trained: TrainedEpoch, val: Evaluation, train_s: float, epoch_s: float
) -> EpochMetrics:
    """Add an epoch to ``state``'s totals and history.

    Args:
        state: The run's state.
        epoch: The epoch's number (1-based).
        trained: What training measured.
        val: The validation after it.
        train_s: Seconds of the training steps (for images/s).
        epoch_s: Seconds of training and validation.

    Returns:
        The epoch's metrics, as appended to the history.
    """
    state.epoch = epoch
    state.train_images += trained.images
    state.train_seconds += train_s
    state.train_time_s += epoch_s
    metrics = EpochMetrics(
        epoch=epoch,
        train_loss=trained.train_loss,
        train_acc=trained.train_acc,
        val_loss=val.loss,
        val_acc=val.acc,
        lr=trained.lr,
        images_per_s=trained.images / max(train_s, 1e-9),
        elapsed_s=state.train_time_s + state.compile_time_s,
    )
    state.history.append(metrics)
    return metrics


def _result(state: TrainState, status: Status, reason: str | None, classes: tuple[str, ...]) -> TrainResult:
    """The :class:`TrainResult` of ``state``'s history and totals, without test metrics."""
    history = state.history
    val_accs = [m.val_acc for m in history if not math.isnan(m.val_acc)]
    return TrainResult(
        status=status,
        history=history,
        best_val_acc=max(val_accs, default=math.nan),
        final_val_acc=history[-1].val_acc if history else math.nan,
        final_val_loss=history[-1].val_loss if history else math.nan,
        epochs_run=len(history),
        train_time_s=state.train_time_s,
        images_per_s=state.train_images / state.train_seconds if state.train_seconds else 0.0,
        compile_time_s=state.compile_time_s,
        classes=tuple(classes),
        reason=reason,
        model=state.model,
    )


def _add_test_metrics(result: TrainResult, model: nn.Module, test: TensorSplit, run: _Run) -> None:
    """Evaluate ``model`` on the (non-empty) ``test`` split and fill ``result``'s test fields."""
    ev = evaluate(model, test, run.fmt, num_classes=run.num_classes, batch_size=run.cfg.eval_batch_size, confusion=True)
    conf = ev.confusion or []
    result.test_loss = ev.loss
    result.test_acc = ev.acc
    result.per_class_test_acc = {
        name: conf[i][i] / sum(conf[i]) if sum(conf[i]) else math.nan for i, name in enumerate(result.classes)
    }
    result.confusion_matrix = conf
