"""Training: one trial's model on one dataset, in one straight loop (airbench style).

The whole uint8 training set moves to the device once. Every epoch draws a seeded
permutation, augments and normalizes each batch on the device, and steps the optimizer
and a per-step LR schedule. Losses and correct counts accumulate as device tensors and
are read once per epoch, so a GPU never waits for the host inside an epoch.

:func:`train` returns a :class:`TrainResult`; :func:`write_outputs` writes it to a folder
(``metrics.json``, ``history.csv``, ``curves.html``); :class:`ProgressPrinter` is a
callback that prints one line per epoch.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from search.data import ImageDataset, TensorSplit, augment_batch, normalize
from search.config import UserError
from search.models import build_model
from search.config import Augment, OptimizerConfig, SchedulerConfig, Spec, TrainConfig, TrialConfig, fixed_document, to_plain

Status = Literal["completed", "stopped", "nan"]

# channels_last on CPU (``channels_last: auto``). Measured with torch 2.14 on a 2-core
# AVX2 x86 CPU (no native bf16), fp32 training steps on 32x32 inputs, best of several:
# NHWC was 1.2-1.5x faster than contiguous for 78k- and 309k-parameter CIFAR ResNets and
# on par for the 4.7M SE-ResNet (oneDNN's convolutions are NHWC-native), never slower:
# auto uses it on CPU as on CUDA.
CHANNELS_LAST_ON_CPU = True

CHECKPOINT_VERSION = 1


# --------------------------------------------------------------------------- results


@dataclass
class EpochMetrics:
    """What one epoch did; passed to the callback and kept in the history.

    ``train_*`` are measured on the augmented batches in training mode (label smoothing
    included); ``val_*`` on the validation split in eval mode with plain cross-entropy,
    so that trials with different smoothing compare. ``lr`` is the first param group's
    LR at the epoch's last step. ``images_per_s`` counts training images only (no
    evaluation); ``elapsed_s`` is the wall time since the run started (resumes included).
    """

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    images_per_s: float
    elapsed_s: float


@dataclass
class TrainResult:
    """The outcome of :func:`train`.

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


# --------------------------------------------------------------------------- settings


def resolve_amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``cfg.precision`` on ``device``, None for plain fp32.

    Args:
        cfg: The training recipe.
        device: Where the model runs.

    Returns:
        ``torch.bfloat16`` for ``bf16``, and for ``auto`` on CUDA (bf16 needs no loss
        scaling); None otherwise (``auto`` on CPU is fp32: without AVX512-BF16/AMX, CPU
        bf16 autocast measured 8-15x slower than fp32).
    """
    if cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def resolve_channels_last(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether model and inputs use channels_last for ``cfg.channels_last`` on ``device``.

    Args:
        cfg: The training recipe.
        device: Where the model runs.

    Returns:
        True for ``on``; for ``auto`` on CUDA (tensor-core convolutions want NHWC), and on
        CPU as :data:`CHANNELS_LAST_ON_CPU` says (measured faster there too).
    """
    if cfg.channels_last == "auto":
        return device.type == "cuda" or CHANNELS_LAST_ON_CPU
    return cfg.channels_last == "on"


def cpu_channels_last_is_safe(model: nn.Module) -> bool:
    """Whether ``model`` may train in channels_last on the CPU.

    torch 2.14.1's CPU convolution corrupts the heap (the process aborts) when it trains a
    strided 1x1 convolution with fewer than 8 input channels in channels_last, as the
    projection shortcut of a thin stage is; such models train contiguous.
    """
    return not any(
        isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1) and m.in_channels < 8
        for m in model.modules()
    )


def param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> list[dict[str, Any]]:
    """Optimizer param groups: trainable parameters only, optionally sparing norms and biases.

    Args:
        model: The model; parameters with ``requires_grad=False`` (frozen) are left out.
        weight_decay: The decay of the decayed group.
        decay_norm_and_bias: False puts normalization weights and every bias into a
            second group with zero decay (decaying them only shrinks the scale BN learns).

    Returns:
        One group, or two (decayed first, then zero-decay); empty groups are dropped.

    Raises:
        ValueError: The model has no trainable parameter.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters (everything is frozen)")
    if decay_norm_and_bias:
        return [{"params": trainable, "weight_decay": weight_decay}]
    spared: set[int] = set()
    for module in model.modules():
        norm = isinstance(module, (_BatchNorm, nn.GroupNorm, nn.LayerNorm))
        for name, p in module.named_parameters(recurse=False):
            if norm or name == "bias":
                spared.add(id(p))
    groups = [
        {"params": [p for p in trainable if id(p) not in spared], "weight_decay": weight_decay},
        {"params": [p for p in trainable if id(p) in spared], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(groups: list[dict[str, Any]], cfg: OptimizerConfig, device: torch.device) -> torch.optim.Optimizer:
    """The optimizer of ``cfg`` over ``groups``.

    Args:
        groups: From :func:`param_groups` (they carry the weight decay).
        cfg: SGD, Adam or AdamW.
        device: Where the parameters live: CUDA gets the fused kernels (one launch for
            all parameters); elsewhere torch's default implementation.

    Returns:
        A torch optimizer.
    """
    kw: dict[str, Any] = {"fused": True} if device.type == "cuda" else {}
    if cfg.name == "sgd":
        # torch refuses nesterov without momentum; nesterov then means nothing anyway.
        nesterov = cfg.nesterov and cfg.momentum > 0
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=nesterov, **kw)
    opt_cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return opt_cls(groups, lr=cfg.lr, betas=tuple(cfg.betas), **kw)


def lr_factor(cfg: SchedulerConfig, step: int, steps_per_epoch: int, total_steps: int) -> float:
    """The LR multiplier for optimizer step ``step`` (0-based), as LambdaLR uses it.

    Warm-up is linear, ``(step + 1) / warmup_steps``, so the first step already moves and
    the last warm-up step runs at the full LR; ``warmup_epochs`` may be fractional.
    Cosine then decays to ``min_lr_ratio``, reached at ``step == total_steps`` (the value
    after the last step), as torch's own schedulers do. One-cycle ramps linearly from
    ``1 / div_factor`` to 1 over ``pct_start`` of the steps, then follows a cosine down to
    ``1 / (div_factor * final_div_factor)``. Step and multi-step decay by ``gamma`` at
    epoch boundaries.

    Args:
        cfg: The scheduler.
        step: The number of optimizer steps taken so far.
        steps_per_epoch: Optimizer steps in one epoch.
        total_steps: Optimizer steps in the whole run.

    Returns:
        The factor that multiplies the optimizer's base LR.
    """
    if cfg.name == "onecycle":
        up = max(1, round(cfg.pct_start * total_steps))
        start = 1.0 / cfg.div_factor
        end = start / cfg.final_div_factor
        if step < up:
            return start + (1.0 - start) * step / up
        p = min(1.0, (step - up) / max(1, total_steps - up))
        return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * p))
    warm_steps = round(cfg.warmup_epochs * steps_per_epoch)
    warm = min(1.0, (step + 1) / warm_steps) if warm_steps > 0 else 1.0
    if cfg.name == "cosine":
        p = min(1.0, max(0, step - warm_steps) / max(1, total_steps - warm_steps))
        return warm * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * p)))
    epoch = step // steps_per_epoch
    if cfg.name == "step":
        return warm * cfg.gamma ** (epoch // cfg.step_epochs)
    if cfg.name == "multistep":
        return warm * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    return warm  # constant


# --------------------------------------------------------------------------- evaluation


def _sync(device: torch.device) -> None:
    # Only for timing: CUDA runs asynchronously, so a clock read needs the queue drained.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_classes: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    batch_size: int,
    amp_dtype: torch.dtype | None,
    channels_last: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and the confusion matrix (true x predicted), as device tensors.

    The caller reads them once; nothing here waits for the device.
    """
    model.eval()
    loss_sum = torch.zeros((), device=images.device)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.long, device=images.device)
    with torch.inference_mode(), torch.autocast(images.device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        for x, y in zip(images.split(batch_size), labels.split(batch_size)):
            out = model(normalize(x, mean, std, dtype=torch.float32, channels_last=channels_last))
            logits = (out[0] if isinstance(out, tuple) else out).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            # bincount of (true, predicted) pairs is the confusion matrix in one kernel.
            confusion += torch.bincount(y * num_classes + logits.argmax(1), minlength=num_classes**2)
    return loss_sum, confusion.view(num_classes, num_classes)


# --------------------------------------------------------------------------- checkpoints


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: a crash leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _load_checkpoint(path: Path, device: torch.device, trial: TrialConfig, epochs: int, n_train: int) -> dict[str, Any]:
    """Read a checkpoint written by :func:`train` and check that it belongs to this run.

    Raises:
        UserError: The checkpoint is of another trial, epoch count or training set size.
    """
    state = torch.load(path, map_location=device, weights_only=True)
    mine = {"version": CHECKPOINT_VERSION, "trial": repr(trial), "epochs": epochs, "n_train": n_train}
    theirs = {k: state.get(k) for k in mine}
    if theirs != mine:
        bad = ", ".join(k for k in mine if theirs[k] != mine[k])
        raise UserError(f"{path}: checkpoint does not match this run ({bad} differ); delete it or drop --resume")
    return state


# --------------------------------------------------------------------------- training


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
    so a CPU run repeats bit for bit (CUDA kernels may not). Each epoch drops the last
    partial batch (a new permutation every epoch, so no image is skipped for long) so
    every step has the same shape, which keeps BatchNorm sane and compiled graphs reused.

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
        The :class:`TrainResult`; a non-finite loss ends the run with status ``nan``
        rather than an exception.

    Raises:
        UserError: The model's ``num_classes`` differs from the dataset's, or the
            checkpoint to resume belongs to another run.
        ValueError: Empty training split, or no trainable parameter.
    """
    cfg = trial.train
    augment = cfg.augment if augment is None else augment
    device = torch.device(device)
    epochs = cfg.epochs if epochs is None else epochs
    split = data.train if train_split is None else train_split
    n_train = int(split.labels.numel())
    if n_train == 0:
        raise ValueError("the training split is empty")
    if trial.model.num_classes != data.num_classes:
        raise UserError(
            f"model.num_classes is {trial.model.num_classes} but the dataset has {data.num_classes} classes"
        )
    amp_dtype = resolve_amp_dtype(cfg, device)
    channels_last = resolve_channels_last(cfg, device)
    if device.type == "cuda":
        # Every step has the same shape, so cuDNN's autotuning pays for itself at once.
        torch.backends.cudnn.benchmark = True

    # Seed the global RNG for init and dropout, and a private generator for the data
    # order and augmentation, so that what the model does cannot shift the batches.
    torch.manual_seed(cfg.seed)
    model = build_model(trial.model, data.image_size).to(device)
    channels_last = channels_last and (device.type != "cpu" or cpu_channels_last_is_safe(model))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed)

    # The dataset goes to the device once; batches are then index lookups there.
    images, labels = split.images.to(device), split.labels.to(device)
    val_images, val_labels = data.val.images.to(device), data.val.labels.to(device)
    batch_size = min(cfg.batch_size, n_train)
    steps_per_epoch = n_train // batch_size
    total_steps = steps_per_epoch * epochs

    optimizer = build_optimizer(
        param_groups(model, cfg.optimizer.weight_decay, cfg.decay_norm_and_bias), cfg.optimizer, device
    )
    # LR changes every step (not every epoch) so that warm-up and decay are smooth even
    # for runs of a few epochs.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(cfg.scheduler, s, steps_per_epoch, total_steps)
    )

    history: list[EpochMetrics] = []
    start_epoch, train_time, train_images, train_seconds, compile_time = 1, 0.0, 0, 0.0, 0.0
    if resume and checkpoint_path is not None and Path(checkpoint_path).exists():
        state = _load_checkpoint(Path(checkpoint_path), device, trial, epochs, n_train)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"].cpu())
        if device.type == "cuda" and state["cuda_rng"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        gen.set_state(state["generator"].cpu())
        history = [EpochMetrics(**m) for m in state["history"]]
        start_epoch = state["epoch"] + 1
        train_time, train_images, train_seconds = state["train_time_s"], state["train_images"], state["train_seconds"]
        compile_time = state["compile_time_s"]

    # Compile after loading weights; the original module keeps the state_dict keys plain
    # and runs evaluation eagerly (no recompilation for eval mode or the odd last batch).
    net: nn.Module = torch.compile(model) if cfg.compile else model  # type: ignore[assignment]
    compiled_once = not cfg.compile
    autocast = torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None)
    # Normalization constants live on the device once: building them per step would copy
    # from the host every step, and on CUDA that copy waits for the GPU.
    mean = torch.tensor(data.mean, dtype=torch.float32, device=device)
    std = torch.tensor(data.std, dtype=torch.float32, device=device)
    status: Status = "completed"
    reason: str | None = None

    for epoch in range(start_epoch, epochs + 1):
        t_epoch = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)
        total_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        perm = torch.randperm(n_train, device=device, generator=gen)
        lr = optimizer.param_groups[0]["lr"]
        for step in range(steps_per_epoch):
            t_step = time.perf_counter()
            idx = perm[step * batch_size : (step + 1) * batch_size]
            x = augment_batch(images[idx], augment, gen)
            x = normalize(x, mean, std, dtype=torch.float32, channels_last=channels_last)
            y = labels[idx]
            with autocast:
                out = net(x)
                if isinstance(out, tuple):  # an aux head in training mode
                    logits, aux = out
                    main = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                    loss = main + cfg.aux_weight * F.cross_entropy(aux, y, label_smoothing=cfg.label_smoothing)
                else:
                    logits = out
                    loss = main = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                # Neither clip reads a value back to the host (no error_if_nonfinite):
                # no sync per step; both use the multi-tensor kernels where they exist.
                if cfg.grad_clip_mode == "norm":
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                else:
                    nn.utils.clip_grad_value_(model.parameters(), cfg.grad_clip)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            # Device-side sums: the host reads them once, after the epoch. The total loss
            # (aux included) is what could blow up, so the NaN check sees it too.
            loss_sum += main.detach().float()
            total_sum += loss.detach().float()
            correct += (logits.detach().argmax(1) == y).sum()
            if not compiled_once:
                # The first compiled step is mostly compilation: book it apart.
                _sync(device)
                first_step = time.perf_counter() - t_step
                compile_time += first_step
                t_epoch += first_step
                compiled_once = True
        train_loss_sum, total_loss_sum, train_correct = torch.stack([loss_sum, total_sum, correct.float()]).tolist()
        seconds = time.perf_counter() - t_epoch
        epoch_images = steps_per_epoch * batch_size
        train_images += epoch_images
        train_seconds += seconds

        val_loss_t, val_conf = _evaluate(
            model, val_images, val_labels, num_classes=data.num_classes, mean=mean, std=std,
            batch_size=cfg.eval_batch_size, amp_dtype=amp_dtype, channels_last=channels_last,
        )
        n_val = int(val_labels.numel())
        val_loss_sum, val_correct = torch.stack([val_loss_t, val_conf.diagonal().sum().float()]).tolist()
        train_time += time.perf_counter() - t_epoch
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=train_loss_sum / steps_per_epoch,
            train_acc=train_correct / epoch_images,
            val_loss=val_loss_sum / n_val if n_val else math.nan,
            val_acc=val_correct / n_val if n_val else math.nan,
            lr=lr,
            images_per_s=epoch_images / max(seconds, 1e-9),
            elapsed_s=train_time + compile_time,
        )
        history.append(metrics)
        if not math.isfinite(total_loss_sum) or (n_val and not math.isfinite(metrics.val_loss)):
            status = "nan"
            reason = (
                f"non-finite loss in epoch {epoch} (train {metrics.train_loss}, val {metrics.val_loss}, "
                f"lr {lr:.3g}); lower the learning rate or clip gradients"
            )
            break
        if checkpoint_path is not None:
            _save_checkpoint(Path(checkpoint_path), {
                "version": CHECKPOINT_VERSION, "trial": repr(trial), "epochs": epochs, "n_train": n_train,
                "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
                "generator": gen.get_state(), "history": [asdict(m) for m in history],
                "train_time_s": train_time, "train_images": train_images, "train_seconds": train_seconds,
                "compile_time_s": compile_time,
            })
        if callback is not None and callback(metrics):
            status, reason = "stopped", f"stopped by the callback after epoch {epoch}"
            break

    val_accs = [m.val_acc for m in history if not math.isnan(m.val_acc)]
    result = TrainResult(
        status=status,
        history=history,
        best_val_acc=max(val_accs, default=math.nan),
        final_val_acc=history[-1].val_acc if history else math.nan,
        final_val_loss=history[-1].val_loss if history else math.nan,
        epochs_run=len(history),
        train_time_s=train_time,
        images_per_s=train_images / train_seconds if train_seconds else 0.0,
        compile_time_s=compile_time,
        classes=tuple(data.classes),
        reason=reason,
        model=model,
    )
    if evaluate_test and status != "nan" and data.test.labels.numel():
        test_labels = data.test.labels.to(device)
        loss_t, conf_t = _evaluate(
            model, data.test.images.to(device), test_labels, num_classes=data.num_classes, mean=mean, std=std,
            batch_size=cfg.eval_batch_size, amp_dtype=amp_dtype, channels_last=channels_last,
        )
        conf = conf_t.tolist()
        n_test = int(test_labels.numel())
        result.test_loss = loss_t.item() / n_test
        result.test_acc = sum(conf[i][i] for i in range(len(conf))) / n_test
        result.per_class_test_acc = {
            name: conf[i][i] / sum(conf[i]) if sum(conf[i]) else math.nan for i, name in enumerate(data.classes)
        }
        result.confusion_matrix = conf
    return result


# --------------------------------------------------------------------------- outputs


def _finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def _write_text(path: Path, text: str) -> None:
    # tmp + replace: a reader (dashboard, a resumed study) never sees half a file.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_outputs(result: TrainResult, out_dir: Path, *, config_dict: dict[str, Any], params: int) -> None:
    """Write a finished run to ``out_dir``: ``metrics.json``, ``history.csv``, ``curves.html``.

    ``metrics.json`` holds ``val_acc`` (final epoch), ``best_val_acc``, ``val_loss``,
    ``test_acc``, ``test_loss``, ``params``, ``train_time_s``, ``compile_time_s``,
    ``images_per_s``, ``epochs`` (run), ``status``, ``reason``, ``config``, ``classes``,
    ``per_class_test_acc`` and ``confusion_matrix`` (rows true, columns predicted);
    non-finite numbers become null. ``curves.html`` embeds plotly.js, so it opens offline.

    Args:
        result: What :func:`train` returned.
        out_dir: The folder (created if missing).
        config_dict: The trial's config as plain data, stored under ``config``.
        params: The model's parameter count.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {
        "val_acc": result.final_val_acc,
        "best_val_acc": result.best_val_acc,
        "val_loss": result.final_val_loss,
        "test_acc": result.test_acc,
        "test_loss": result.test_loss,
        "params": params,
        "train_time_s": result.train_time_s,
        "compile_time_s": result.compile_time_s,
        "images_per_s": result.images_per_s,
        "epochs": result.epochs_run,
        "status": result.status,
        "reason": result.reason,
        "config": config_dict,
        "classes": list(result.classes),
        "per_class_test_acc": result.per_class_test_acc,
        "confusion_matrix": result.confusion_matrix,
    }
    _write_text(out_dir / "metrics.json", json.dumps(_finite_or_none(metrics), indent=2) + "\n")

    buf = io.StringIO()
    names = [f.name for f in fields(EpochMetrics)]
    writer = csv.DictWriter(buf, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    writer.writerows(asdict(m) for m in result.history)
    _write_text(out_dir / "history.csv", buf.getvalue())

    _write_text(out_dir / "curves.html", _curves_html(result.history))


def _curves_html(history: list[EpochMetrics]) -> str:
    """Loss and accuracy per epoch, train and val, side by side, as a standalone page."""
    import plotly.graph_objects as go  # plotly is slow to import; only outputs need it
    from plotly.subplots import make_subplots

    epochs = [m.epoch for m in history]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "accuracy"))
    for col, key in ((1, "loss"), (2, "acc")):
        for part, dash in (("train", "solid"), ("val", "dot")):
            fig.add_trace(
                go.Scatter(
                    x=epochs, y=[getattr(m, f"{part}_{key}") for m in history], mode="lines+markers",
                    name=f"{part} {key}", line={"dash": dash},
                ),
                row=1, col=col,
            )
        fig.update_xaxes(title_text="epoch", row=1, col=col)
    fig.update_layout(title="training curves", template="plotly_white")
    return fig.to_html(include_plotlyjs=True, full_html=True)


# --------------------------------------------------------------------------- progress


class ProgressPrinter:
    """A callback that logs one line per epoch: epoch/total, losses, accuracies, speed, ETA.

    It never stops the run (returns None); chain it with others via :func:`chain_callbacks`.

    Args:
        total_epochs: The run's epoch count, for ``epoch/total`` and the ETA.
        log: Where each line goes (``print`` by default).
        prefix: Put before every line (a trial number, say).
    """

    def __init__(self, total_epochs: int, log: Callable[[str], None] = print, prefix: str = "") -> None:
        self.total_epochs = total_epochs
        self.log = log
        self.prefix = prefix

    def format(self, m: EpochMetrics) -> str:
        """The line for ``m``."""
        eta = m.elapsed_s / m.epoch * (self.total_epochs - m.epoch)
        width = len(str(self.total_epochs))
        return (
            f"{self.prefix}epoch {m.epoch:>{width}}/{self.total_epochs}"
            f"  loss {m.train_loss:.4f}  acc {m.train_acc:6.2%}"
            f"  val_loss {m.val_loss:.4f}  val_acc {m.val_acc:6.2%}"
            f"  lr {m.lr:.3g}  {m.images_per_s:,.0f} img/s  ETA {_duration(eta)}"
        )

    def __call__(self, m: EpochMetrics) -> None:
        self.log(self.format(m))


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


def chain_callbacks(*callbacks: Callable[[EpochMetrics], bool | None] | None) -> Callable[[EpochMetrics], bool]:
    """One callback that calls each given one (None skipped) and stops if any asks to.

    Args:
        callbacks: Callbacks in calling order; all run every epoch.

    Returns:
        A callback for :func:`train`.
    """
    active = [cb for cb in callbacks if cb is not None]

    def call(m: EpochMetrics) -> bool:
        return any([bool(cb(m)) for cb in active])  # a list, so every callback runs

    return call


# --------------------------------------------------------------------------- a fixed spec


def train_spec(
    spec: Spec,
    *,
    data_dir: str | Path | None = None,
    download: bool = True,
    epochs: int | None = None,
    seeds: list[int] | None = None,
    out_dir: str | Path | None = None,
    device: str | None = None,
    resume: bool = False,
    log: Callable[[str], None] = print,
) -> str:
    """Train a fixed spec's config once per seed and write each run's outputs (``train`` command).

    Each run trains on the training split, validates every epoch and evaluates the test
    split at the end; its files go to ``out_dir`` (one seed) or ``out_dir/seed<N>``:
    ``metrics.json``, ``history.csv``, ``curves.html``, ``checkpoint.pt`` (written every
    epoch) and ``config.yaml`` (the config as a fixed spec, to train it again).

    Args:
        spec: A spec whose every leaf is fixed.
        data_dir: Where to look for the dataset (see :func:`search.data.load_dataset`).
        download: Allow downloading a missing standard dataset.
        epochs: Overrides ``train.epochs``.
        seeds: Seeds to train with; default the spec's ``train.seed``.
        out_dir: Output folder; default ``runs/<study name>``.
        device: ``cuda`` or ``cpu``; default CUDA when available.
        resume: Continue each seed's run from its checkpoint, where there is one.
        log: Receives one progress line per epoch.

    Returns:
        A summary: one line per seed, and mean +- std over seeds when there are several.

    Raises:
        SpecError: The spec is not fixed.
        UserError: The data cannot be found or does not fit the model.
    """
    from search.data import load_dataset  # reading data pulls in image decoding: only here

    trial = spec.fixed()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    data = load_dataset(spec.data, data_dir=data_dir, download=download)
    out = Path(out_dir) if out_dir is not None else Path("runs") / spec.study.name
    seeds = seeds or [trial.train.seed]
    lines, val_accs, test_accs = [], [], []
    for seed in seeds:
        run = replace(trial, train=replace(trial.train, seed=seed))
        run_dir = out / f"seed{seed}" if len(seeds) > 1 else out
        prefix = f"seed {seed}: " if len(seeds) > 1 else ""
        total = epochs or run.train.epochs
        result = train(
            run, data, device=device, epochs=epochs,
            callback=ProgressPrinter(total, log=log, prefix=prefix), evaluate_test=True,
            checkpoint_path=run_dir / "checkpoint.pt", resume=resume,
        )
        params = sum(p.numel() for p in result.model.parameters()) if result.model is not None else 0
        write_outputs(result, run_dir, config_dict=to_plain(run), params=params)
        _write_text(run_dir / "config.yaml", yaml.safe_dump(fixed_document(spec, run), sort_keys=False))
        val_accs.append(result.final_val_acc)
        test_accs.append(result.test_acc if result.test_acc is not None else math.nan)
        lines.append(
            f"seed {seed}: {result.status}, val_acc {result.final_val_acc:.2%}, test_acc {test_accs[-1]:.2%}, "
            f"{params:,} params, {result.train_time_s:.0f} s, {result.images_per_s:,.0f} img/s -> {run_dir}"
            + (f" ({result.reason})" if result.reason else "")
        )
    if len(seeds) > 1:
        for name, accs in (("val_acc", val_accs), ("test_acc", test_accs)):
            lines.append(f"{name}: mean {statistics.fmean(accs):.2%} +- {statistics.stdev(accs):.2%} over {len(accs)} seeds")
    return "\n".join(lines)
