"""One training epoch (its batches from a :class:`~search.train.feed.TrainFeed`) and one evaluation pass.

Losses and correct counts accumulate as device tensors and are read once at the end, so
a GPU never waits for the host inside an epoch or an evaluation.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from search.config import Augment, Tta
from search.data import TensorSplit, augment_batch, downscale, normalize
from search.train.class_metrics import balanced_accuracy, macro_f1
from search.train.feed import TrainFeed
from search.train.state import TrainState
from search.train.step import TrainStep


@dataclass(frozen=True)
class BatchFormat:
    """How a uint8 batch enters the model: normalization, memory format and autocast dtype.

    ``mean`` and ``std`` are float32 tensors on ``device``: building them per step would
    copy from the host every step, and on CUDA that copy waits for the GPU.
    """

    device: torch.device
    mean: torch.Tensor
    std: torch.Tensor
    channels_last: bool
    amp_dtype: torch.dtype | None

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` (uint8 or on the [0, 1] scale) normalized to float32 in the model's memory format."""
        return normalize(images, self.mean, self.std, dtype=torch.float32, channels_last=self.channels_last)

    def autocast(self, cache: bool = True) -> torch.autocast:
        """An autocast context for ``amp_dtype``; a disabled one for plain fp32.

        Args:
            cache: Keep the casts of weights for the context's lifetime; a CUDA graph
                capture needs it off (its casts must happen inside the graph).
        """
        # autocast wants a dtype even when disabled; bf16 is one it accepts everywhere.
        enabled = self.amp_dtype is not None
        dtype = self.amp_dtype or torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype, enabled=enabled, cache_enabled=cache)


@dataclass(frozen=True)
class TrainedEpoch:
    """What :func:`train_epoch` measured.

    ``train_loss`` is the mean main-head loss per step and ``train_acc`` the fraction of
    training images classified right (both on augmented batches); ``total_loss`` is the
    summed loss that was optimized (aux head included), the one a blow-up shows in.
    ``lr`` is the first param group's LR at the last step; ``first_step_s`` the seconds
    of the first step when it was timed apart (compilation), else 0.
    """

    train_loss: float
    train_acc: float
    total_loss: float
    lr: float
    images: int
    first_step_s: float


@dataclass(frozen=True)
class EpochPart:
    """Steps ``start`` to ``stop`` (excluded) of an epoch whose order is ``perm``, and the
    shape of their batches: what :func:`train_epoch` trains.

    Attributes:
        perm: The epoch's order of the training images (step ``i`` takes
            ``perm[i * batch_size : (i + 1) * batch_size]``).
        start: The first step to train.
        stop: The step to stop before (a whole epoch: ``len(perm) // batch_size``).
        batch_size: Images per step, at most ``len(perm)``.
        flips: Which training images this epoch mirrors (``flip: alternating``); None
            lets the augmentation draw them.
        size: Train on the augmented batches downscaled to this side
            (``train.progressive_resize``, a rung's ``image_size``); None keeps the images' size.
    """

    perm: torch.Tensor
    start: int
    stop: int
    batch_size: int
    flips: torch.Tensor | None = None
    size: int | None = None


@dataclass(frozen=True)
class EvalSetup:
    """How a run evaluates a split, the same at every evaluation: what :func:`evaluate` is told
    besides the model, the split and the batch format.

    Attributes:
        num_classes: Rows and columns of the confusion matrix.
        batch_size: Images per forward pass.
        tta: The views whose logits are averaged (:func:`tta_views`); none by default.
    """

    num_classes: int
    batch_size: int
    tta: Tta = Tta()


@dataclass(frozen=True)
class Evaluation:
    """Plain cross-entropy, accuracy, balanced accuracy and macro-F1 on a split (NaN for an
    empty one; see :mod:`~search.train.class_metrics`).

    ``confusion`` (rows true, columns predicted) is read back only when asked for.
    """

    n: int
    loss: float
    acc: float
    confusion: list[list[int]] | None = None
    balanced_acc: float = math.nan
    macro_f1: float = math.nan


def sync(device: torch.device) -> None:
    """Wait for ``device``'s queued work: CUDA runs asynchronously, so a clock read needs it drained."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_epoch(
    state: TrainState,
    step_fn: TrainStep,
    feed: TrainFeed,
    fmt: BatchFormat,
    part: EpochPart,
    *,
    augment: Augment,
    time_first_step: bool = False,
) -> TrainedEpoch:
    """Step the optimizer and the LR schedule once per batch of ``part``: a whole epoch, or the
    steps of one up to a successive-halving rung.

    The last partial batch of an epoch is dropped (a new permutation every epoch, so no
    image is skipped for long): every step has the same shape, which keeps BatchNorm sane
    and compiled graphs reused. The augmentation draws from ``state.generator``.

    Args:
        state: The model, optimizer, scheduler and generator; the epoch advances them.
        step_fn: One training step (forward, backward, optimizer, schedule, EMA).
        feed: The training images (uint8) and labels, handed out as device batches
            (copied to the device whole or streamed: the loop does not know which).
        fmt: How batches enter the model.
        part: The steps to train, in their order, with their batch size, mirrored images
            and image side.
        augment: The whole-batch augmentation.
        time_first_step: Time the first step apart (it is mostly compilation).

    Returns:
        The epoch's (or part's) losses, accuracy and LR, read back once.
    """
    device = fmt.device
    state.model.train()
    loss_sum = torch.zeros((), device=device)
    total_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    perm, batch_size, flips, size = part.perm, part.batch_size, part.flips, part.size
    steps = part.stop - part.start
    lr = state.optimizer.param_groups[0]["lr"]
    first_step_s = 0.0
    t_step = time.perf_counter()
    batches = feed.batches(perm, batch_size, part.start, part.stop)
    for step, (idx, batch, y) in enumerate(batches, start=part.start):
        mask = None if flips is None else flips[idx]
        x = fmt.prepare(augment_batch(batch, augment, state.generator, flip_mask=mask))
        if size is not None:
            x = downscale(x, size, fmt.channels_last)
        out = step_fn(x, y)
        lr = out.lr
        # Device-side sums: the host reads them once, after the epoch. The total loss
        # (aux included) is what could blow up, so the NaN check sees it too.
        loss_sum += out.main.detach().float()
        total_sum += out.loss.detach().float()
        correct += (out.logits.detach().argmax(1) == y).sum()
        if time_first_step and step == part.start:
            sync(device)
            first_step_s = time.perf_counter() - t_step
    train_loss_sum, total_loss_sum, n_correct = torch.stack([loss_sum, total_sum, correct.float()]).tolist()
    images = steps * batch_size
    return TrainedEpoch(
        train_loss=train_loss_sum / steps,
        train_acc=n_correct / images,
        total_loss=total_loss_sum,
        lr=lr,
        images=images,
        first_step_s=first_step_s,
    )


def evaluate(
    model: nn.Module,
    split: TensorSplit,
    fmt: BatchFormat,
    setup: EvalSetup,
    *,
    confusion: bool = False,
    size: int | None = None,
) -> Evaluation:
    """Cross-entropy and accuracy of ``model`` in eval mode on ``split``, with test-time augmentation.

    Args:
        model: The model; run eagerly (a compiled wrapper would recompile for eval mode
            and for the odd last batch).
        split: Images (uint8) and labels, on the device.
        fmt: How batches enter the model.
        setup: The classes, the images per forward pass and the test-time views.
        confusion: Also read back the confusion matrix.
        size: Validate on the images downscaled to this side (a rung's ``val_image_size``);
            None keeps their size.

    Returns:
        The mean loss, the accuracy, balanced accuracy, macro-F1 and, if asked, the confusion matrix.
    """
    model.eval()
    num_classes, batch_size, tta = setup.num_classes, setup.batch_size, setup.tta
    device = split.images.device
    loss_t = torch.zeros((), device=device)
    conf_t = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)
    with torch.inference_mode(), fmt.autocast():
        for x, y in zip(split.images.split(batch_size), split.labels.split(batch_size), strict=True):
            prepared = fmt.prepare(x)
            views = tta_views(prepared if size is None else downscale(prepared, size), tta, fmt.channels_last)
            logits = torch.stack([_logits(model(view)) for view in views]).mean(0)
            loss_t += F.cross_entropy(logits, y, reduction="sum")
            # bincount of (true, predicted) pairs is the confusion matrix in one kernel.
            conf_t += torch.bincount(y * num_classes + logits.argmax(1), minlength=num_classes**2)
    n = len(split)
    conf_t = conf_t.view(num_classes, num_classes)
    # One read for all the numbers: each read waits for the device.
    numbers = [loss_t, conf_t.diagonal().sum().float(), balanced_accuracy(conf_t).float(), macro_f1(conf_t).float()]
    loss_sum, n_correct, balanced, f1 = torch.stack(numbers).tolist()
    return Evaluation(
        n=n,
        loss=loss_sum / n if n else math.nan,
        acc=n_correct / n if n else math.nan,
        confusion=conf_t.tolist() if confusion else None,
        balanced_acc=balanced if n else math.nan,
        macro_f1=f1 if n else math.nan,
    )


def _logits(out: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return (out[0] if isinstance(out, tuple) else out).float()


def tta_views(x: torch.Tensor, tta: Tta, channels_last: bool = False) -> list[torch.Tensor]:
    """The views of the batch ``x`` that :func:`evaluate` averages: ``x`` itself first.

    Args:
        x: Normalized float images, ``N x C x H x W``.
        tta: ``translate: t`` adds ``x`` shifted by ``t`` pixels up-left and down-right
            (reflect padding); ``flip`` then adds the mirror image of every view.
        channels_last: Put every view in channels_last memory format, as the model expects.

    Returns:
        1, 2, 3 or 6 views of the same shape as ``x``.
    """
    views = [x]
    t = tta.translate
    if t:
        h, w = x.shape[-2:]
        padded = F.pad(x, (t, t, t, t), mode="reflect")
        views += [padded[..., :h, :w], padded[..., 2 * t :, 2 * t :]]
    if tta.flip:
        views += [view.flip(-1) for view in views]
    if channels_last:
        views = [view.contiguous(memory_format=torch.channels_last) for view in views]
    return views
