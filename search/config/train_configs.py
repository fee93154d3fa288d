"""The train section of a spec: augmentation, optimizers, LR schedules and the recipe, as
typed, frozen configs. Bounds of numeric fields live in field metadata (see :func:`bounded`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

from search.config.errors import InvalidValue
from search.config.parsing import bounded


@dataclass(frozen=True)
class RandomResizedCrop:
    """A random box of each image, resampled to the image's size (torchvision's ``RandomResizedCrop``).

    Each box covers a share of the image's area drawn uniformly from ``scale`` and has a
    width / height drawn log-uniformly from ``ratio``; 10 tries, then a centre crop of the
    image clamped to ``ratio``. Drawn and resampled (bilinear) on the training device.
    """

    scale: tuple[float, float] = bounded((0.35, 1.0), gt=0.0, le=1.0)
    ratio: tuple[float, float] = bounded((0.75, 4 / 3), gt=0.0, le=10.0)

    def __post_init__(self) -> None:
        for key in ("scale", "ratio"):
            low, high = getattr(self, key)
            if low > high:
                raise InvalidValue(key, f"[{low}, {high}]: the first value is a lower bound, at most the second")


@dataclass(frozen=True)
class Augment:
    """Whole-batch augmentation on the training device (seed 003: pad 4 reflect + flip).

    ``flip: true`` mirrors each image with probability 1/2 every epoch; ``alternating``
    mirrors a random half in the first epoch and then flips every image's state each
    epoch, so that every two epochs see both views of every image (airbench).
    ``random_resized_crop`` comes first, then the padded crop, flip and cutout.
    """

    crop_padding: int = bounded(4, ge=0, le=64)
    padding_mode: Literal["reflect", "zeros"] = "reflect"
    flip: Literal[True, False, "alternating"] = True
    cutout: int = bounded(0, ge=0, le=1024)
    random_resized_crop: RandomResizedCrop | None = None


@dataclass(frozen=True)
class Ema:
    """An exponential moving average of the weights (and BatchNorm statistics), evaluated and saved.

    After every optimizer step ``ema = d * ema + (1 - d) * weights``, where ``d`` rises
    linearly from 0 to ``decay`` over the first ``warmup_steps`` steps, so that the
    average does not keep the random initialisation for long.
    """

    decay: float = bounded(0.99, ge=0.0, le=0.99999)
    warmup_steps: int = bounded(100, ge=0)


@dataclass(frozen=True)
class Tta:
    """Test-time augmentation: views averaged (their logits) at every evaluation, mirrored (``flip``) and shifted.

    ``translate: N`` adds each view shifted by ``N`` pixels up-left and down-right
    (reflect padding), as airbench's level-2 test-time augmentation does with 1.
    """

    flip: bool = False
    translate: int = bounded(0, ge=0, le=64)


@dataclass(frozen=True)
class ProgressiveResize:
    """Progressive resizing: the first ``epochs`` epochs train on the augmented batches
    downscaled to ``size`` pixels (antialiased bilinear), the rest at the images' own size.

    A convolution's cost grows with the pixels: an epoch at 24 px has 56% of the pixels of
    one at 32 px (and took 65% of its time on 2 CPU cores, for the quickstart model); the
    early epochs learn coarse features as well at low resolution, and the
    last ones at full size adapt the network (and its BatchNorm statistics) to the size it
    is evaluated at (fast.ai's DAWNBench entries; Touvron et al. 2019 on the size gap).
    Validation and test always see the images' own size.
    """

    size: int = bounded(24, ge=4, le=4096)
    epochs: int = bounded(1, ge=1, le=100_000)


@dataclass(frozen=True)
class LrScaling:
    """The optimizer's ``lr`` is for ``reference_batch``; other batch sizes scale it by ``rule``.

    ``linear``: ``lr * batch_size / reference_batch`` (Goyal et al. 2017); ``sqrt``: by the
    square root of that ratio (adaptive optimizers).
    """

    reference_batch: int = bounded(256, ge=1)
    rule: Literal["linear", "sqrt"] = "linear"


@dataclass(frozen=True)
class SGD:
    name: Literal["sgd"] = "sgd"
    lr: float = bounded(0.1, gt=0.0)
    momentum: float = bounded(0.9, ge=0.0, le=1.0)
    nesterov: bool = False
    weight_decay: float = bounded(5e-4, ge=0.0)


@dataclass(frozen=True)
class Adam:
    name: Literal["adam"] = "adam"
    lr: float = bounded(1e-3, gt=0.0)
    betas: tuple[float, float] = bounded((0.9, 0.999), ge=0.0, lt=1.0)  # torch's Adam: each in [0, 1)
    weight_decay: float = bounded(0.0, ge=0.0)


@dataclass(frozen=True)
class AdamW:
    name: Literal["adamw"] = "adamw"
    lr: float = bounded(1e-3, gt=0.0)
    betas: tuple[float, float] = bounded((0.9, 0.999), ge=0.0, lt=1.0)
    weight_decay: float = bounded(0.05, ge=0.0)


OptimizerConfig = Union[SGD, Adam, AdamW]


@dataclass(frozen=True)
class Cosine:
    """Cosine decay to ``min_lr_ratio * lr`` after ``warmup_epochs`` of linear warm-up."""

    name: Literal["cosine"] = "cosine"
    warmup_epochs: float = bounded(0.0, ge=0.0)
    min_lr_ratio: float = bounded(0.0, ge=0.0, le=1.0)


@dataclass(frozen=True)
class OneCycle:
    """One-cycle: linear ramp from ``lr / div_factor`` to ``lr`` over ``pct_start``, then cosine down."""

    name: Literal["onecycle"] = "onecycle"
    pct_start: float = bounded(0.25, gt=0.0, le=0.99)
    div_factor: float = bounded(25.0, ge=1.0)
    final_div_factor: float = bounded(1e4, ge=1.0)


@dataclass(frozen=True)
class Step:
    name: Literal["step"] = "step"
    step_epochs: int = bounded(30, ge=1, le=100_000)
    gamma: float = bounded(0.1, gt=0.0, le=1.0)
    warmup_epochs: float = bounded(0.0, ge=0.0)


@dataclass(frozen=True)
class MultiStep:
    name: Literal["multistep"] = "multistep"
    milestones: tuple[int, ...] = bounded((50, 75), ge=1, le=100_000)
    gamma: float = bounded(0.1, gt=0.0, le=1.0)
    warmup_epochs: float = bounded(0.0, ge=0.0)


@dataclass(frozen=True)
class Constant:
    name: Literal["constant"] = "constant"
    warmup_epochs: float = bounded(0.0, ge=0.0)


SchedulerConfig = Union[Cosine, OneCycle, Step, MultiStep, Constant]


@dataclass(frozen=True)
class TrainConfig:
    """One training recipe.

    ``decay_norm_and_bias: false`` excludes BatchNorm weights and all biases from weight
    decay. ``grad_clip`` clips the global gradient norm, or each value with
    ``grad_clip_mode: value`` (seed 003 clips values at 0.1). ``aux_weight`` scales the
    auxiliary head's loss (seed 000). ``precision: auto`` is bf16 autocast on CUDA and
    fp32 on CPU; ``channels_last: auto`` likewise follows the device.

    The fast-training recipe (airbench's tricks, each off by default): ``ema`` evaluates
    and saves a moving average of the weights; ``tta`` averages mirrored/shifted views at
    evaluation; ``whiten_stem`` initialises the stem convolution from the training
    patches' covariance so that its outputs are whitened (``frozen``: and never trains
    it); ``lr_scaling`` scales the LR with the batch size; ``progressive_resize`` trains
    the first epochs at a lower resolution. ``cuda_graph`` replays the
    training step as one CUDA graph (static shapes: no per-kernel launch cost); off CUDA
    it is the ordinary step.

    Imbalanced classes: ``class_weights: balanced`` weights the training loss by
    ``n_samples / (n_classes * count_c)`` of the training split; ``sampler: balanced`` draws
    each epoch's batches with every class equally likely (the same number of batches).
    """

    epochs: int = bounded(30, ge=1, le=100_000)
    batch_size: int = bounded(256, ge=1, le=65536)
    optimizer: OptimizerConfig = SGD()
    scheduler: SchedulerConfig = Cosine()
    decay_norm_and_bias: bool = True
    augment: Augment = Augment()
    label_smoothing: float = bounded(0.0, ge=0.0, le=0.5)
    grad_clip: float | None = bounded(None, gt=0.0)
    grad_clip_mode: Literal["norm", "value"] = "norm"
    aux_weight: float = bounded(0.3, ge=0.0)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: Literal["auto", "on", "off"] = "auto"
    compile: bool = False
    eval_batch_size: int = bounded(1024, ge=1, le=65536)
    seed: int = bounded(0, ge=0, le=2**32 - 1)
    ema: Ema | None = None
    tta: Tta = Tta()
    whiten_stem: Literal["none", "init", "frozen"] = "none"
    lr_scaling: LrScaling | None = None
    progressive_resize: ProgressiveResize | None = None
    cuda_graph: bool = False
    class_weights: Literal["none", "balanced"] = "none"
    sampler: Literal["uniform", "balanced"] = "uniform"

    def __post_init__(self) -> None:
        resize = self.progressive_resize
        if resize is not None and resize.epochs >= self.epochs:
            raise InvalidValue(
                "progressive_resize.epochs",
                f"must be less than epochs ({self.epochs}) so that the last epochs train at the "
                f"images' own size, got {resize.epochs}",
            )
