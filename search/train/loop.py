"""Training: one trial's model on one dataset, in one straight loop (airbench style).

The uint8 training set moves to the device once, or, when it does not fit the trial's part
of the device (``data.on_device``), is streamed there batch by batch from the memory-mapped
cache: a :class:`~search.train.feed.TrainFeed` holds it either way. Every epoch draws a seeded
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

from search.config import Augment, ResNetConfig, TrainConfig, TrialConfig, UserError
from search.data import ImageDataset, TensorSplit, normalize
from search.models import build_model
from search.train.balance import BatchOrder, loss_weights
from search.train.ema import WeightEma
from search.train.epoch import BatchFormat, EpochPart, EvalSetup, Evaluation, TrainedEpoch, evaluate, train_epoch
from search.train.feed import TrainFeed
from search.train.fidelity import Fidelity, merge_parts, plan_fidelity
from search.train.options import TrainOptions
from search.train.recipe import (
    build_optimizer,
    build_scheduler,
    cpu_channels_last_is_safe,
    param_groups,
    resolve_amp_dtype,
    resolve_channels_last,
    scaled_lr,
)
from search.train.result import EpochMetrics, Status, TrainResult
from search.train.state import RunId, TrainState
from search.train.step import TrainStep, step_class
from search.train.warm_start import check_num_classes, load_init_weights
from search.train.whiten import WHITEN_IMAGES, whiten_stem


@dataclass(frozen=True)
class _Run:
    """What stays fixed through a run: the recipe, the step, the data on the device, how it is evaluated.

    ``flip_bits`` is each training image's mirror state in odd epochs under
    ``flip: alternating`` (even epochs mirror the others), None otherwise. ``order`` draws
    each epoch's images (``train.sampler``). ``fidelity``: the epochs' stretches, where rungs
    report within them, and what each has cost.
    """

    cfg: TrainConfig
    augment: Augment
    step: TrainStep
    fmt: BatchFormat
    train: TrainFeed
    val: TensorSplit
    batch_size: int
    evaluation: EvalSetup
    flip_bits: torch.Tensor | None
    order: BatchOrder
    fidelity: Fidelity


Callback = Callable[[EpochMetrics], bool | None]


def train(
    trial: TrialConfig,
    data: ImageDataset,
    options: TrainOptions | None = None,
    *,
    augment: Augment | None = None,
    epochs: int | None = None,
) -> TrainResult:
    """Train ``trial.model`` with ``trial.train`` on ``data`` and evaluate it every epoch.

    The run is seeded by ``trial.train.seed``: model init, batch order and augmentation,
    so a CPU run repeats bit for bit (CUDA kernels may not).

    Args:
        trial: The model and the recipe.
        data: Train/val/test splits as uint8 tensors, with class names, mean and std.
        options: Where it trains, the per-epoch callback, the checkpoint and resuming, the
            test evaluation, another training split, the log (:class:`TrainOptions`);
            default: all defaults (the CPU, no callback, no checkpoint).
        augment: Overrides ``trial.train.augment``, the whole-batch augmentation
            applied on the device.
        epochs: Overrides ``trial.train.epochs`` (short trials); the LR schedule spans it.

    Returns:
        The :class:`TrainResult`; a non-finite loss ends the run with status ``nan``.

    Raises:
        UserError: The model's ``num_classes`` differs from the dataset's, or the
            checkpoint to resume belongs to another run.
        ValueError: Empty training split, or no trainable parameter.
    """
    cfg = trial.train
    options = options or TrainOptions()
    dev = torch.device(options.device)
    epochs = cfg.epochs if epochs is None else epochs
    split = data.train if options.train_split is None else options.train_split
    _check(trial, data, split)
    state, fmt = _set_up(trial, data, split, dev, epochs, options.log)
    checkpoint_path = options.checkpoint_path
    if options.resume and checkpoint_path is not None and Path(checkpoint_path).exists():
        state = TrainState.load(Path(checkpoint_path), state)
    fidelity = plan_fidelity(
        trial, data.image_size, len(split) // min(cfg.batch_size, len(split)), epochs, options.rungs
    )
    feed = _feed(split, data, dev, options.log)
    run = _make_run(cfg, state, fmt, cfg.augment if augment is None else augment, feed, data, fidelity)
    status: Status = "completed"
    reason: str | None = None
    first = state.epoch + 1
    for epoch in range(first, epochs + 1):
        # This process's first compiled step compiles (resumed or not): it is timed apart.
        metrics, finite = _run_epoch(
            state, run, epoch, time_first_step=cfg.compile and epoch == first, callback=options.callback
        )
        if metrics is None or not finite:  # stopped at a rung within the epoch, or a non-finite loss
            status, reason = (
                ("nan", _non_finite_reason(metrics)) if metrics else ("stopped", f"at a rung of epoch {epoch}")
            )
            break
        if checkpoint_path is not None:
            state.save(Path(checkpoint_path))
        if options.callback is not None and options.callback(metrics):
            status, reason = "stopped", f"stopped by the callback after epoch {epoch}"
            break
    result = _result(state, status, reason, data.classes)
    if options.evaluate_test and status != "nan" and data.test.labels.numel():
        _add_test_metrics(result, state.eval_model, _to(data.test, dev), run)
    return result


def _feed(split: TensorSplit, data: ImageDataset, device: torch.device, log: Callable[[str], None] | None) -> TrainFeed:
    """The training set placed as ``data.placement`` decides for ``device``, said on ``log``."""
    feed = TrainFeed(split, device, data.placement.decide(split.nbytes, device))
    if log is not None and not feed.decision.on_device:
        log(feed.decision.line())
    return feed


def _make_run(
    cfg: TrainConfig,
    state: TrainState,
    fmt: BatchFormat,
    augment: Augment,
    feed: TrainFeed,
    data: ImageDataset,
    fidelity: Fidelity,
) -> _Run:
    """The run's fixed parts, once ``state`` is set up or loaded from a checkpoint.

    The step is made after the checkpoint is loaded: a CUDA graph captures the very
    tensors it will train.
    """
    device = state.device
    batch_size = min(cfg.batch_size, len(feed))
    net = _compiled(state.model, cfg.compile)
    autocast = fmt.autocast(cache=not cfg.cuda_graph)
    weight = loss_weights(cfg, feed.labels, data.num_classes)
    step = step_class(cfg, state.device)(state, net, cfg, autocast, state.ema, scaled_lr(cfg, batch_size), weight)
    return _Run(
        cfg=cfg,
        augment=augment,
        step=step,
        fmt=fmt,
        train=feed,
        val=_to(data.val, device),
        batch_size=batch_size,
        evaluation=EvalSetup(data.num_classes, cfg.eval_batch_size, cfg.tta),
        flip_bits=_flip_bits(cfg.seed, len(feed), device) if augment.flip == "alternating" else None,
        order=BatchOrder.for_split(cfg.sampler, feed.labels, data.num_classes),
        fidelity=fidelity,
    )


def _flip_bits(seed: int, n: int, device: torch.device) -> torch.Tensor:
    """Each training image's mirror state in odd epochs: a fair coin per image, from ``seed``.

    A generator of its own, so that the batches and their crops are those of the run
    without alternating flips; a function of the seed alone, so a resumed run has the same.
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (n,), generator=generator).bool().to(device)


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
    check_num_classes(trial.model, data.classes)
    if trial.train.whiten_stem != "none" and not isinstance(trial.model, ResNetConfig):
        raise UserError(f"train.whiten_stem: only for model name resnet, not {trial.model.name}; allowed: none")


def _set_up(
    trial: TrialConfig,
    data: ImageDataset,
    split: TensorSplit,
    device: torch.device,
    epochs: int,
    log: Callable[[str], None] | None = None,
) -> tuple[TrainState, BatchFormat]:
    """The seeded model, optimizer, schedule and generator before the first epoch, and the batch format.

    Args:
        trial: The model and the recipe.
        data: For the image size and the normalization constants.
        split: The training split (its size sets the steps per epoch).
        device: Where to train.
        epochs: The run's epoch count; the LR schedule spans it.
        log: Receives the line on weights loaded from ``model.init_from``.

    Returns:
        The fresh state and how batches enter the model.
    """
    cfg = trial.train
    if device.type == "cuda":
        # Every step has the same shape, so cuDNN's autotuning pays for itself at once.
        torch.backends.cudnn.benchmark = True
    model, channels_last = _model(trial, data, split, device, log)
    # A private generator for the data order and augmentation (the global RNG, seeded by
    # _model, serves init and dropout), so that what the model does cannot shift the batches.
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.seed)
    n_train = len(split)
    batch_size = min(cfg.batch_size, n_train)
    steps_per_epoch = n_train // batch_size
    optimizer = build_optimizer(
        param_groups(model, cfg.optimizer.weight_decay, cfg.decay_norm_and_bias),
        cfg.optimizer,
        device,
        lr=scaled_lr(cfg, batch_size),
        capturable=cfg.cuda_graph and device.type == "cuda",
    )
    scheduler = build_scheduler(optimizer, cfg.scheduler, steps_per_epoch, steps_per_epoch * epochs)
    ema = WeightEma(model, cfg.ema) if cfg.ema is not None else None
    run_id = RunId(repr(trial), epochs, n_train)
    state = TrainState(model, optimizer, scheduler, generator, device, run_id, ema=ema)
    fmt = BatchFormat(
        device=device,
        mean=torch.tensor(data.mean, dtype=torch.float32, device=device),
        std=torch.tensor(data.std, dtype=torch.float32, device=device),
        channels_last=channels_last,
        amp_dtype=resolve_amp_dtype(cfg, device),
    )
    return state, fmt


def _model(
    trial: TrialConfig, data: ImageDataset, split: TensorSplit, device: torch.device, log: Callable[[str], None] | None
) -> tuple[nn.Module, bool]:
    """The seeded model on ``device``, its stem whitened if asked, and whether it is channels_last.

    Args:
        trial: The model and the recipe.
        data: For the image size and the normalization constants.
        split: The training split, whose first images' patches whiten the stem.
        device: Where to train.
        log: Receives the line on weights loaded from ``model.init_from``.

    Returns:
        The model (in channels_last where that is used) and whether it is.
    """
    cfg = trial.train
    torch.manual_seed(cfg.seed)
    model = build_model(trial.model, data.image_size).to(device)
    if trial.model.init_from is not None:
        line = load_init_weights(model, trial.model, data.classes, data.image_size)
        if log is not None:
            log(line)
    if cfg.whiten_stem != "none":
        images = normalize(split.read(torch.arange(min(WHITEN_IMAGES, len(split)))).to(device), data.mean, data.std)
        whiten_stem(model, images, freeze=cfg.whiten_stem == "frozen")
    channels_last = resolve_channels_last(cfg, device) and (device.type != "cpu" or cpu_channels_last_is_safe(model))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, channels_last


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


def _run_epoch(
    state: TrainState, run: _Run, epoch: int, *, time_first_step: bool, callback: Callback | None
) -> tuple[EpochMetrics | None, bool]:
    """Train epoch ``epoch`` stretch by stretch (reporting the rungs within it), validate, and add
    it to ``state`` (history and time totals).

    Returns:
        The epoch's metrics (None: the callback stopped the run at a rung within the epoch), and
        whether its training and validation losses were finite.
    """
    t_epoch = time.perf_counter()
    flips = None if run.flip_bits is None else run.flip_bits if epoch % 2 else ~run.flip_bits
    perm = run.order.draw(state.generator)
    parts: list[TrainedEpoch] = []
    epoch_rung: int | None = None  # the rung the epoch's own report is
    spent = 0.0
    for stretch, spent in run.fidelity.of_epoch(epoch):
        part = EpochPart(perm, stretch.start, stretch.stop, run.batch_size, flips, stretch.image_size)
        first = time_first_step and not parts
        parts.append(train_epoch(state, run.step, run.train, run.fmt, part, augment=run.augment, time_first_step=first))
        at_end = stretch.stop == run.fidelity.steps_per_epoch
        for rung in stretch.rungs:
            if at_end and rung == stretch.rungs[-1] and run.fidelity.rungs[rung].val_image_size is None:
                epoch_rung = rung
                continue
            report = _rung_report(state, run, rung, parts, t_epoch, epoch if at_end else epoch - 1)
            if callback is not None and callback(_with(report, spent, rung)):
                return None, True
    trained = merge_parts(parts)
    # The first compiled step is mostly compilation: book it apart from training time.
    state.compile_time_s += trained.first_step_s
    t_epoch += trained.first_step_s
    seconds = time.perf_counter() - t_epoch
    val = evaluate(state.eval_model, run.val, run.fmt, run.evaluation)
    metrics = _with(_record(state, epoch, trained, val, seconds, time.perf_counter() - t_epoch), spent, epoch_rung)
    finite = math.isfinite(trained.total_loss) and (val.n == 0 or math.isfinite(val.loss))
    return metrics, finite


def _rung_report(
    state: TrainState, run: _Run, rung: int, parts: list[TrainedEpoch], t_epoch: float, epochs_done: int
) -> EpochMetrics:
    """The report of a rung that is not an epoch's own: the epoch's training so far, validated at
    the rung's ``val_image_size`` (unset: the images' own size)."""
    val = evaluate(state.eval_model, run.val, run.fmt, run.evaluation, size=run.fidelity.rungs[rung].val_image_size)
    seconds = time.perf_counter() - t_epoch
    return _metrics(epochs_done, merge_parts(parts), val, seconds, state.train_time_s + state.compile_time_s + seconds)


def _with(metrics: EpochMetrics, full_epochs: float, rung: int | None) -> EpochMetrics:
    """``metrics`` (the very object, as kept in the history) with its cost and rung set."""
    metrics.full_epochs, metrics.rung = full_epochs, rung
    return metrics


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
    metrics = _metrics(epoch, trained, val, train_s, state.train_time_s + state.compile_time_s)
    state.history.append(metrics)
    return metrics


def _metrics(epoch: int, trained: TrainedEpoch, val: Evaluation, train_s: float, elapsed_s: float) -> EpochMetrics:
    """What an epoch's (or a rung's) training and validation measured, as one report: every
    validation metric, so that a rung reports the objective an epoch does."""
    return EpochMetrics(
        epoch=epoch,
        train_loss=trained.train_loss,
        train_acc=trained.train_acc,
        val_loss=val.loss,
        val_acc=val.acc,
        lr=trained.lr,
        images_per_s=trained.images / max(train_s, 1e-9),
        elapsed_s=elapsed_s,
        balanced_acc=val.balanced_acc,
        macro_f1=val.macro_f1,
    )


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
        model=state.eval_model,
    )


def _add_test_metrics(result: TrainResult, model: nn.Module, test: TensorSplit, run: _Run) -> None:
    """Evaluate ``model`` on the (non-empty) ``test`` split and fill ``result``'s test fields."""
    ev = evaluate(model, test, run.fmt, run.evaluation, confusion=True)
    conf = ev.confusion or []
    result.test_loss = ev.loss
    result.test_acc = ev.acc
    result.per_class_test_acc = {
        name: conf[i][i] / sum(conf[i]) if sum(conf[i]) else math.nan for i, name in enumerate(result.classes)
    }
    result.confusion_matrix = conf
