"""The schema of a spec file: typed, frozen configs for every section.

Every default of the tool is written here once, as a dataclass default. A spec's
``model`` and ``train`` sections may hold distributions (see
:mod:`search.config.distributions`); every other section is fixed. A spec whose every
leaf is fixed is a plain config: the same format describes one model to train and a
space to search.

Bounds of numeric fields live in field metadata (``ge``, ``gt``, ``le``) so that the
parser (:mod:`search.config.parsing`) can check fixed values and distribution ranges
alike. Checks across fields live in ``__post_init__`` and raise :class:`InvalidValue`.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from search.config.distributions import Node
from search.config.errors import InvalidValue, SpecError


def bounded(default: Any, **bounds: float) -> Any:
    """A dataclass field with a default and numeric bounds (``ge``, ``gt``, ``le``)."""
    return field(default=default, metadata=bounds)


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Stem:
    """The first convolution: 3x3 stride 1 for CIFAR, 7x7 stride 2 + max-pool for ImageNet."""

    width: int = bounded(64, ge=1)
    kernel: int = bounded(3, ge=1)
    stride: int = bounded(1, ge=1)
    maxpool: bool = False


@dataclass(frozen=True)
class Stage:
    """A run of residual blocks at one width; every stage after the first halves the resolution."""

    blocks: int = bounded(2, ge=1)
    width: int = bounded(64, ge=1)


@dataclass(frozen=True)
class SqueezeExcite:
    """Squeeze-and-excitation: ``none``, once after the ``stem`` (seed 003), or in every block."""

    name: Literal["none", "stem", "blocks"] = "none"
    ratio: int = bounded(16, ge=1)


@dataclass(frozen=True)
class Head:
    """Classifier: optional hidden layers (Linear [+BN] + ReLU [+dropout]) before the last Linear."""

    hidden: tuple[int, ...] = ()
    batchnorm: bool = False
    dropout: float = bounded(0.0, ge=0.0, le=0.99)


@dataclass(frozen=True)
class AuxHead:
    """Auxiliary classifier after stage ``after_stage`` (0-based), as in seed 000."""

    after_stage: int = bounded(2, ge=0)
    hidden: tuple[int, ...] = ()


@dataclass(frozen=True)
class ResNetConfig:
    """Our own ResNet: CIFAR-style by default, ImageNet-style with a 7x7 stem and max-pool.

    ``width`` of a Bottleneck stage is its inner width; its output is ``4 * width``
    (torchvision's convention). ``shortcut: identity`` is the parameter-free option A
    (strided subsampling, zero-padded channels) where shapes change.
    ``pool_kernel: null`` pools globally; an integer is a fixed ``AvgPool2d`` (seed 003: 8).
    """

    name: Literal["resnet"] = "resnet"
    num_classes: int = bounded(10, ge=2)
    in_channels: int = bounded(3, ge=1)
    stem: Stem = Stem()
    stages: tuple[Stage, ...] = (Stage(2, 64), Stage(2, 128), Stage(2, 256))
    block: Literal["basic", "bottleneck"] = "basic"
    preact: bool = False
    shortcut: Literal["projection", "identity"] = "projection"
    se: SqueezeExcite = SqueezeExcite()
    pool_kernel: int | None = bounded(None, ge=1)
    dropout: float = bounded(0.0, ge=0.0, le=0.99)
    head: Head = Head()
    aux_head: AuxHead | None = None
    zero_init_residual: bool = False

    def __post_init__(self) -> None:
        if not 1 <= len(self.stages) <= 4:
            raise InvalidValue("stages", f"a ResNet has 1 to 4 stages, got {len(self.stages)}")
        if self.aux_head is not None and self.aux_head.after_stage >= len(self.stages) - 1:
            raise InvalidValue(
                "aux_head.after_stage",
                f"must name a stage before the last (0 to {len(self.stages) - 2}), got {self.aux_head.after_stage}",
            )


TorchvisionArch = Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
TORCHVISION_ARCHS: tuple[TorchvisionArch, ...] = typing.get_args(TorchvisionArch)


@dataclass(frozen=True)
class TorchvisionResNetConfig:
    """torchvision's ImageNet ResNet, its ``fc`` replaced for ``num_classes``.

    ``weights`` is a local state-dict file, or the name of a torchvision weights enum
    member (``IMAGENET1K_V1``) looked up in the torch hub cache; never downloaded.
    ``freeze``: ``none`` trains everything, ``all_but_last_stage`` trains ``layer4`` and
    the head, ``all_but_head`` trains only the head (a linear probe).
    """

    name: TorchvisionArch = "resnet18"
    num_classes: int = bounded(1000, ge=2)
    weights: str | None = None
    freeze: Literal["none", "all_but_last_stage", "all_but_head"] = "none"
    dropout: float = bounded(0.0, ge=0.0, le=0.99)


ModelConfig = Union[ResNetConfig, TorchvisionResNetConfig]


# --------------------------------------------------------------------------- train


@dataclass(frozen=True)
class Augment:
    """Whole-batch augmentation on the training device (seed 003: pad 4 reflect + flip)."""

    crop_padding: int = bounded(4, ge=0)
    padding_mode: Literal["reflect", "zeros"] = "reflect"
    flip: bool = True
    cutout: int = bounded(0, ge=0)


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
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = bounded(0.0, ge=0.0)


@dataclass(frozen=True)
class AdamW:
    name: Literal["adamw"] = "adamw"
    lr: float = bounded(1e-3, gt=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
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
    step_epochs: int = bounded(30, ge=1)
    gamma: float = bounded(0.1, gt=0.0, le=1.0)
    warmup_epochs: float = bounded(0.0, ge=0.0)


@dataclass(frozen=True)
class MultiStep:
    name: Literal["multistep"] = "multistep"
    milestones: tuple[int, ...] = (50, 75)
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
    """

    epochs: int = bounded(30, ge=1)
    batch_size: int = bounded(256, ge=1)
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
    eval_batch_size: int = bounded(1024, ge=1)
    seed: int = bounded(0, ge=0)


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are split.

    ``root`` is a dataset folder or archive; unset, the ``--data-dir`` flag, the
    ``RESNET_SEARCH_DATA`` variable and the user cache are searched in that order.
    ``val_fraction`` of the training set is held out (stratified) for validation;
    ``train_subset``/``val_subset`` take balanced subsets of those for cheap trials.
    ``mean``/``std`` unset are computed from the training images and cached.
    ``image_size`` resizes every image; unset, CIFAR is 32 and an image folder must
    hold images of one size.
    """

    dataset: Literal["cifar10", "cifar100", "imagefolder"] = "cifar10"
    root: str | None = None
    image_size: int | None = bounded(None, ge=8)
    val_fraction: float = bounded(0.1, gt=0.0, le=0.5)
    train_subset: int | None = bounded(None, ge=1)
    val_subset: int | None = bounded(None, ge=1)
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    split_seed: int = bounded(0, ge=0)

    @property
    def input_size(self) -> int | None:
        """The side of the model's input: ``image_size``, else CIFAR's 32; unknown for an image folder."""
        if self.image_size is not None:
            return self.image_size
        return 32 if self.dataset in ("cifar10", "cifar100") else None


# --------------------------------------------------------------------------- study


@dataclass(frozen=True)
class Objective:
    metric: Literal["val_acc", "val_loss", "params", "flops"] = "val_acc"
    direction: Literal["maximize", "minimize"] = "maximize"


@dataclass(frozen=True)
class SamplerConfig:
    """Optuna sampler by name; ``n_startup_trials`` random trials before TPE/GP take over."""

    name: Literal["tpe", "random", "gp", "cmaes", "nsgaii"] = "tpe"
    n_startup_trials: int = bounded(10, ge=0)


@dataclass(frozen=True)
class MedianPruner:
    name: Literal["median"] = "median"
    n_startup_trials: int = bounded(5, ge=0)
    n_warmup_steps: int = bounded(2, ge=0)


@dataclass(frozen=True)
class PercentilePruner:
    name: Literal["percentile"] = "percentile"
    percentile: float = bounded(25.0, gt=0.0, le=100.0)
    n_startup_trials: int = bounded(5, ge=0)
    n_warmup_steps: int = bounded(2, ge=0)


@dataclass(frozen=True)
class SuccessiveHalvingPruner:
    name: Literal["successive_halving"] = "successive_halving"
    min_resource: int = bounded(1, ge=1)
    reduction_factor: int = bounded(3, ge=2)


@dataclass(frozen=True)
class HyperbandPruner:
    name: Literal["hyperband"] = "hyperband"
    min_resource: int = bounded(1, ge=1)
    reduction_factor: int = bounded(3, ge=2)


@dataclass(frozen=True)
class NoPruner:
    name: Literal["none"] = "none"


PrunerConfig = Union[MedianPruner, PercentilePruner, SuccessiveHalvingPruner, HyperbandPruner, NoPruner]


@dataclass(frozen=True)
class StudyConfig:
    """The Optuna study: its name (also the default storage file), objectives and search policy.

    ``enqueue`` lists fixed spec files (relative to this spec) whose configs are tried first.
    ``max_rejections`` ends a run after that many over-budget samples in a row.
    """

    name: str = "study"
    objectives: tuple[Objective, ...] = (Objective(),)
    n_trials: int = bounded(20, ge=1)
    sampler: SamplerConfig = SamplerConfig()
    pruner: PrunerConfig = MedianPruner()
    seed: int | None = bounded(0, ge=0)
    enqueue: tuple[str, ...] = ()
    max_rejections: int = bounded(1000, ge=1)

    def __post_init__(self) -> None:
        if not self.objectives:
            raise InvalidValue("objectives", "needs at least one objective")
        metrics = [o.metric for o in self.objectives]
        if len(set(metrics)) != len(metrics):
            raise InvalidValue("objectives", f"each metric may appear once, got {metrics}")


@dataclass(frozen=True)
class BudgetConfig:
    """Hard limits checked before a config trains. FLOPs: one fused multiply-add = one FLOP."""

    max_params: int | None = bounded(None, gt=0)
    max_flops: int | None = bounded(None, gt=0)


@dataclass(frozen=True)
class ResourcesConfig:
    """Per-trial Ray resources; fractional ``gpu`` (0.25) packs several trials on one GPU."""

    cpu: float = bounded(1.0, gt=0.0)
    gpu: float = bounded(0.0, ge=0.0)
    max_concurrent: int = bounded(1, ge=1)
    max_failures: int = bounded(0, ge=0)  # restarts of a trial whose worker died, before it is FAIL


# --------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial needs: a fixed model and a fixed recipe."""

    model: ModelConfig
    train: TrainConfig


@dataclass(frozen=True)
class Spec:
    """A parsed spec file: fixed sections, plus the search space of model and train.

    ``space`` is a :class:`search.config.distributions.Node` that samples a :class:`TrialConfig`.
    ``source`` is the file it came from (used to resolve relative paths); ``text`` is its
    YAML, which a study keeps so that its trials can be rebuilt and exported later.
    """

    study: StudyConfig
    data: DataConfig
    budget: BudgetConfig
    resources: ResourcesConfig
    space: Node
    source: str = "<spec>"
    text: str = ""

    @property
    def is_fixed(self) -> bool:
        return self.space.is_fixed

    def fixed(self) -> TrialConfig:
        """The one config of a fixed spec.

        Raises:
            SpecError: the spec is a search space; the message lists its open keys.
        """
        open_keys = self.space.open_keys()
        if open_keys:
            shown = ", ".join(open_keys[:6]) + (f" and {len(open_keys) - 6} more" if len(open_keys) > 6 else "")
            raise SpecError(self.source, open_keys[0], f"is a search space, not a fixed config; open keys: {shown}")
        return self.space.value()
