"""The schema of a spec file: typed, frozen configs for the data, study, budget and resources
sections, and the spec itself (model and train sections: :mod:`~search.config.model_configs`,
:mod:`~search.config.train_configs`).

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

from dataclasses import dataclass
from typing import Literal, Union

from search.config.distributions import Node
from search.config.errors import InvalidValue, SpecError
from search.config.files import study_name_problem
from search.config.model_configs import ModelConfig
from search.config.parsing import bounded
from search.config.train_configs import TrainConfig
from search.config.units import parse_duration

# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Resize:
    """How images of mixed sizes become the ``size`` x ``size`` squares the model takes.

    ``shorter_side``: the shorter side to ``size``, then a centre crop (torchvision's
    evaluation recipe; ``data.image_size`` alone does this); ``square``: a plain resize, the
    aspect ratio distorted; ``pad``: the longer side to ``size``, the aspect kept, centred on
    black (a letterbox). Pillow's bicubic, antialiased, in every mode.
    """

    size: int = bounded(224, ge=8, le=2048)
    mode: Literal["shorter_side", "square", "pad"] = "shorter_side"


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are split.

    ``root`` is a dataset folder or archive; unset, the ``--data-dir`` flag, the
    ``RESNET_SEARCH_DATA`` variable and the user cache are searched in that order.
    ``val_fraction`` of the training set is held out (stratified) for validation;
    ``train_subset``/``val_subset`` take balanced subsets of those for cheap trials.
    ``mean``/``std`` unset are computed from the training images and cached.
    ``image_size`` resizes every image; unset, CIFAR is 32 and an image folder must
    hold images of one size. ``resize`` says how (its ``size`` is ``image_size``: one of the
    two, or both agreeing). ``channels``: 3 decodes every image as RGB, 1 as grayscale
    (luma), ``auto`` takes 1 when every image of the source is single-channel (grayscale,
    16-bit grayscale, bilevel), else 3; ``model.in_channels`` must match what the data has.
    ``on_device`` says whether the training set is copied whole to the training device
    (``true``), streamed to it batch by batch from the memory-mapped cache (``false``) or,
    ``auto``, copied when it fits ``device_memory_budget_mb`` (unset: half of the device's free
    memory divided by the trials packed on it; on a CPU, host RAM).
    """

    dataset: Literal["cifar10", "cifar100", "imagefolder"] = "cifar10"
    root: str | None = None
    image_size: int | None = bounded(None, ge=8, le=2048)
    val_fraction: float = bounded(0.1, gt=0.0, le=0.5)
    train_subset: int | None = bounded(None, ge=1)
    val_subset: int | None = bounded(None, ge=1)
    mean: tuple[float, ...] | None = bounded(None, ge=0.0, le=1.0)  # of the [0, 1] pixel scale, one per channel
    std: tuple[float, ...] | None = bounded(None, gt=0.0, le=1.0)  # normalizing divides by it
    split_seed: int = bounded(0, ge=0, le=2**32 - 1)
    resize: Resize | None = None
    channels: Literal[3, 1, "auto"] = 3
    on_device: Literal["auto", True, False] = "auto"
    device_memory_budget_mb: float | None = bounded(None, gt=0.0, le=2.0**40)  # per trial, for the training set

    def __post_init__(self) -> None:
        if self.resize is not None:
            if self.image_size is not None and self.image_size != self.resize.size:
                raise InvalidValue(
                    "resize.size",
                    f"{self.resize.size} disagrees with image_size {self.image_size}: give one of them, or both equal",
                )
            object.__setattr__(self, "image_size", self.resize.size)  # one source of truth for the size
        allowed = (1, 3) if self.channels == "auto" else (self.channels,)
        for key in ("mean", "std"):
            values = getattr(self, key)
            if values is not None and len(values) not in allowed:
                wanted = " or ".join(map(str, allowed))
                raise InvalidValue(key, f"has {len(values)} values; it needs one per channel: {wanted}")

    @property
    def resize_mode(self) -> str:
        """How images are fitted to ``image_size``: ``resize.mode``, else ``shorter_side``."""
        return self.resize.mode if self.resize is not None else "shorter_side"

    @property
    def input_size(self) -> int | None:
        """The side of the model's input: ``image_size``, else CIFAR's 32; unknown for an image folder."""
        if self.image_size is not None:
            return self.image_size
        return 32 if self.dataset in ("cifar10", "cifar100") else None


# --------------------------------------------------------------------------- study


@dataclass(frozen=True)
class Objective:
    """A value the study optimizes: a validation metric of the last epoch (``val_acc``,
    ``val_loss``, ``balanced_acc``: the mean recall over the classes, ``macro_f1``: the mean
    F1), or a size or speed of the model. The pruner reads the first objective every epoch."""

    metric: Literal["val_acc", "val_loss", "balanced_acc", "macro_f1", "params", "flops", "latency_ms"] = "val_acc"
    direction: Literal["maximize", "minimize"] = "maximize"


@dataclass(frozen=True)
class SamplerConfig:
    """Optuna sampler by name; ``n_startup_trials`` random trials before TPE/GP take over."""

    name: Literal["tpe", "random", "gp", "cmaes", "nsgaii"] = "tpe"
    n_startup_trials: int = bounded(10, ge=0, le=1_000_000)


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
class Rung:
    """A point of a trial's training where successive halving compares it with its peers.

    Exactly one of ``fraction`` (of the first epoch: ``0.25`` reports after a quarter of its
    steps) and ``epochs`` (after that many whole epochs). ``image_size``: the steps since the
    previous rung train at this side (the images downscaled; unset: as without rungs).
    ``val_image_size``: the rung's validation runs at this side (unset: the trials' image
    size, the resolution the final model uses). A promoted trial trains on from where it is.
    """

    fraction: float | None = bounded(None, gt=0.0, le=1.0)
    epochs: int | None = bounded(None, ge=1, le=100_000)
    image_size: int | None = bounded(None, ge=8, le=2048)
    val_image_size: int | None = bounded(None, ge=8, le=2048)

    def __post_init__(self) -> None:
        if (self.fraction is None) == (self.epochs is None):
            raise InvalidValue("fraction", "a rung gives one of fraction (of the first epoch) or epochs, not both")

    @property
    def position(self) -> float:
        """Where the rung is, in epochs of training (``fraction`` or ``epochs``)."""
        return float(self.fraction if self.fraction is not None else self.epochs or 0)


@dataclass(frozen=True)
class SuccessiveHalvingPruner:
    """Asynchronous successive halving. Without ``rungs`` Optuna's, its rungs at epochs
    ``min_resource * reduction_factor**k``; with ``rungs``, trials are compared at those points
    (:class:`Rung`), in order of training, and the best ``1 / reduction_factor`` go on."""

    name: Literal["successive_halving"] = "successive_halving"
    min_resource: int = bounded(1, ge=1)
    reduction_factor: int = bounded(3, ge=2)
    rungs: tuple[Rung, ...] = ()

    def __post_init__(self) -> None:
        if self.rungs and self.min_resource != 1:
            raise InvalidValue("min_resource", "the rungs set where trials are compared; leave min_resource out")
        positions = [rung.position for rung in self.rungs]
        for index in range(1, len(positions)):
            if positions[index] <= positions[index - 1]:
                raise InvalidValue(
                    f"rungs[{index}]",
                    f"rungs come in order of training: {positions[index]:g} epochs is not after "
                    f"{positions[index - 1]:g}",
                )


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
class PriorConfig:
    """Designs the user believes in, sampled near while the study's evidence is thin (PriorBand).

    ``designs`` are fixed spec files (relative to this spec) mapped onto the space as
    ``enqueue`` maps them. A trial samples near one of them with probability ``weight``,
    times ``half_life / (half_life + finished trials)``, times how often the trials drawn
    near the designs are among the best quarter against their share of all trials (at most 1).
    Near: a number is drawn from a normal around the design's value (on the log scale where
    the range is) whose spread is ``spread`` of the range; a choice keeps the design's
    option with probability ``1 - spread``.
    """

    designs: tuple[str, ...] = ()
    weight: float = bounded(0.5, ge=0.0, le=1.0)
    half_life: float = bounded(10.0, gt=0.0, le=1_000_000.0)
    spread: float = bounded(0.15, gt=0.0, le=1.0)

    def __post_init__(self) -> None:
        if not self.designs:
            raise InvalidValue("designs", "needs at least one spec file of a fixed design")


@dataclass(frozen=True)
class StudyConfig:
    """The Optuna study: its name (also the default storage file), objectives and search policy.

    ``enqueue`` lists fixed spec files (relative to this spec) whose configs are tried first;
    ``prior`` samples near such designs, less as evidence accumulates (:class:`PriorConfig`).
    ``max_rejections`` ends a run after that many over-budget samples in a row. ``timeout``
    (``90s``, ``30m``, ``2h``, ``1d`` or seconds) ends a run: no trial starts after it, and
    running ones stop at their next epoch report.
    """

    name: str = "study"
    objectives: tuple[Objective, ...] = (Objective(),)
    n_trials: int = bounded(20, ge=1, le=1_000_000)
    sampler: SamplerConfig = SamplerConfig()
    pruner: PrunerConfig = MedianPruner()
    seed: int | None = bounded(0, ge=0, le=2**32 - 1)  # numpy's seeds are 32-bit
    enqueue: tuple[str, ...] = ()
    prior: PriorConfig | None = None
    max_rejections: int = bounded(1000, ge=1)
    timeout: float | str | None = None

    def __post_init__(self) -> None:
        name_problem = study_name_problem(self.name)
        if name_problem:
            raise InvalidValue("name", name_problem)
        if self.timeout is not None:
            parse_duration(self.timeout)  # raises InvalidValue("timeout", ...) naming the forms allowed
        if not self.objectives:
            raise InvalidValue("objectives", "needs at least one objective")
        metrics = [o.metric for o in self.objectives]
        if len(set(metrics)) != len(metrics):
            raise InvalidValue("objectives", f"each metric may appear once, got {metrics}")

    @property
    def timeout_s(self) -> float | None:
        """``timeout`` in seconds; None: no time budget."""
        return None if self.timeout is None else parse_duration(self.timeout)


@dataclass(frozen=True)
class LatencyConfig:
    """How a config's inference latency is measured before it trains (docs/deployment.md).

    The model is built with random weights, run by ``runtime`` (``onnxruntime``: exported to
    ONNX; ``torch``: eager) on ``device`` with ``threads`` threads, on a batch of
    ``batch_size`` images of ``image_size`` (unset: the trials' input size), in ``precision``
    (``int8``: statically quantized with onnxruntime, on the CPU). After ``warmup`` runs the
    median of ``repeats`` timed runs is the latency. A config measured over the limit by no
    more than ``tolerance`` (relative) is measured again before it is rejected. ``measure_on``:
    where a run measures: the ``driver``, or a Ray task on a ``worker`` node.
    """

    runtime: Literal["onnxruntime", "torch"] = "onnxruntime"
    device: Literal["cpu", "cuda"] = "cpu"
    threads: int = bounded(1, ge=1, le=1024)
    batch_size: int = bounded(1, ge=1, le=4096)
    image_size: int | None = bounded(None, ge=8, le=2048)
    precision: Literal["fp32", "int8"] = "fp32"
    warmup: int = bounded(10, ge=0, le=10_000)
    repeats: int = bounded(30, ge=3, le=100_000)
    tolerance: float = bounded(0.1, ge=0.0, le=1.0)
    measure_on: Literal["driver", "worker"] = "driver"  # not `on`: YAML reads that key as true

    def __post_init__(self) -> None:
        if self.precision == "int8" and (self.runtime, self.device) != ("onnxruntime", "cpu"):
            raise InvalidValue(
                "precision",
                f"int8 is measured with onnxruntime on the cpu (quantize_static); got runtime {self.runtime}, "
                f"device {self.device}",
            )


@dataclass(frozen=True)
class BudgetConfig:
    """Hard limits checked before a config trains. FLOPs: one fused multiply-add = one FLOP.

    ``max_activation_kb`` and ``max_model_kb`` (1 kb = 1,024 bytes) bound the peak activation
    memory at inference (batch 1) and the weights inference reads, at the deployment
    ``precision``: ``latency.precision``, fp32 when ``latency`` is unset. ``max_latency_ms``
    bounds the latency measured as ``latency`` says (its defaults when unset).
    """

    max_params: int | None = bounded(None, gt=0)
    max_flops: int | None = bounded(None, gt=0)
    max_latency_ms: float | None = bounded(None, gt=0.0)
    max_activation_kb: float | None = bounded(None, gt=0.0)
    max_model_kb: float | None = bounded(None, gt=0.0)
    latency: LatencyConfig | None = None

    @property
    def precision(self) -> str:
        """The precision memory and model size are counted at: the latency's, else fp32."""
        return self.latency.precision if self.latency is not None else "fp32"

    @property
    def latency_settings(self) -> LatencyConfig:
        """How latency is measured: ``latency``, or its defaults."""
        return self.latency if self.latency is not None else LatencyConfig()


@dataclass(frozen=True)
class ResourcesConfig:
    """Per-trial Ray resources; fractional ``gpu`` (0.25) packs several trials on one GPU."""

    cpu: float = bounded(1.0, gt=0.0, le=1024.0)
    gpu: float = bounded(0.0, ge=0.0, le=1024.0)
    max_concurrent: int = bounded(1, ge=1, le=1024)
    max_failures: int = bounded(0, ge=0)  # restarts of a trial whose worker died, before it is FAIL


@dataclass(frozen=True)
class TrackingConfig:
    """Experiment trackers the driver feeds from what trials report: a TensorBoard log folder
    (one run per trial) and an MLflow tracking URI (``file:mlruns``, ``sqlite:///mlflow.db``,
    ``http://host:5000``; one MLflow run per trial in an experiment named for the study)."""

    tensorboard: str | None = None
    mlflow: str | None = None


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
    tracking: TrackingConfig = TrackingConfig()

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
