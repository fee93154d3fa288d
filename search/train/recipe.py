"""The training recipe's pieces that are not the loop: optimizer, LR schedule, precision, memory format.

:func:`param_groups` and :func:`build_optimizer` make the optimizer (the planner's step
probe uses them too), :func:`lr_factor` is the per-step LR multiplier and
:func:`build_scheduler` wraps it in a ``LambdaLR``; :func:`resolve_amp_dtype` and
:func:`resolve_channels_last` turn ``auto`` settings into concrete ones for a device.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from search.config import OptimizerConfig, SchedulerConfig, TrainConfig

# channels_last on CPU (``channels_last: auto``). Measured with torch 2.14 on a 2-core
# AVX2 x86 CPU (no native bf16), fp32 training steps on 32x32 inputs, best of several:
# NHWC was 1.2-1.5x faster than contiguous for 78k- and 309k-parameter CIFAR ResNets and
# on par for the 4.7M SE-ResNet (oneDNN's convolutions are NHWC-native), never slower:
# auto uses it on CPU as on CUDA.
CHANNELS_LAST_ON_CPU = True


def default_device(requested: str | torch.device | None = None) -> torch.device:
    """The device a run uses: the one asked for, else CUDA when there is a GPU, else the CPU.
    Every command that trains or evaluates decides it here."""
    if requested is not None:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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

    Args:
        model: The model to train.

    Returns:
        False if it has a strided 1x1 convolution with fewer than 8 input channels.
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


def build_optimizer(
    groups: list[dict[str, Any]],
    cfg: OptimizerConfig,
    device: torch.device,
    *,
    lr: float | None = None,
    capturable: bool = False,
) -> torch.optim.Optimizer:
    """The optimizer of ``cfg`` over ``groups``.

    Args:
        groups: From :func:`param_groups` (they carry the weight decay).
        cfg: SGD, Adam or AdamW.
        device: Where the parameters live: CUDA gets the fused kernels (one launch for
            all parameters); elsewhere torch's default implementation.
        lr: The LR to use instead of ``cfg.lr`` (:func:`scaled_lr`).
        capturable: For a CUDA graph (CUDA only): the LR is a device tensor that the
            schedule fills in place, and Adam keeps its step count on the device.

    Returns:
        A torch optimizer.
    """
    kw: dict[str, Any] = {"fused": True} if device.type == "cuda" else {}
    base = cfg.lr if lr is None else lr
    rate: float | torch.Tensor = torch.tensor(base, device=device) if capturable else base
    if cfg.name == "sgd":
        # torch refuses nesterov without momentum; nesterov then means nothing anyway.
        nesterov = cfg.nesterov and cfg.momentum > 0
        return torch.optim.SGD(groups, lr=rate, momentum=cfg.momentum, nesterov=nesterov, **kw)
    if capturable:
        kw["capturable"] = True
    opt_cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    beta1, beta2 = cfg.betas  # a YAML list or a tuple
    return opt_cls(groups, lr=rate, betas=(beta1, beta2), **kw)


def scaled_lr(cfg: TrainConfig, batch_size: int) -> float:
    """The optimizer's LR for ``batch_size`` under ``cfg.lr_scaling`` (``cfg.optimizer.lr`` without it).

    Args:
        cfg: The recipe.
        batch_size: The batch size the run steps with.

    Returns:
        ``lr * ratio`` (linear) or ``lr * sqrt(ratio)``, ``ratio = batch_size / reference_batch``.
    """
    scaling = cfg.lr_scaling
    if scaling is None:
        return cfg.optimizer.lr
    ratio = batch_size / scaling.reference_batch
    return cfg.optimizer.lr * (ratio if scaling.rule == "linear" else math.sqrt(ratio))


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


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, steps_per_epoch: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A scheduler that sets the LR of every optimizer step from :func:`lr_factor`.

    The LR changes every step (not every epoch) so that warm-up and decay are smooth even
    for runs of a few epochs.

    Args:
        optimizer: From :func:`build_optimizer`; its LRs are the base LRs.
        cfg: The scheduler.
        steps_per_epoch: Optimizer steps in one epoch.
        total_steps: Optimizer steps in the whole run.

    Returns:
        A ``LambdaLR``, to step once after every optimizer step.
    """
    # A plain lambda, not a partial: LambdaLR leaves functions out of its state_dict, so
    # the checkpoint holds no pickled callable.
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s, steps_per_epoch, total_steps))
