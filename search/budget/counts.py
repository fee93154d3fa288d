"""Parameter and FLOP counts, and the budget check that runs before a config trains.

Two ways to count, equal to the unit:

* :func:`count_model` - the reference: parameters of a built model and fvcore's FLOPs.
* :func:`fast_count` - the same numbers from the config alone, in microseconds, so that a
  sampler can reject over-budget configs without building (let alone tracing) a model.

FLOPs follow fvcore's conventions, traced in eval mode on one image (batch 1):

* one fused multiply-add is one FLOP; convolution = ``C_out * C_in * k * k * H_out * W_out``
  and linear = ``in * out``, biases not counted;
* BatchNorm in eval mode = 2 per element of its input (scale and shift);
* ``adaptive_avg_pool2d`` (global pooling, the SE squeeze) = 1 per input element;
* free: ReLU, sigmoid, max-pool, fixed ``AvgPool2d``, the residual addition, the SE
  multiplication, option A's subsampling and padding, dropout, flatten;
* the auxiliary head only runs in training mode, so its FLOPs are not counted (its
  parameters are).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn

from search.config import (
    BudgetConfig,
    ModelConfig,
    ResNetConfig,
)
from search.config.blocks import BLOCK_TYPES
from search.models.geometry import (
    BlockGeometry,
    ResNetGeometry,
    block_convs,
    resnet_geometry,
    torchvision_as_resnet,
)

__all__ = ["Counts", "count_model", "fast_count", "check_budget", "constraint_values"]


@dataclass(frozen=True)
class Counts:
    """Size of one model: all parameters, the trainable ones, FLOPs of one forward pass."""

    params: int
    trainable_params: int
    flops: int


# --------------------------------------------------------------------------- reference


def count_model(model: nn.Module, image_size: int, in_channels: int = 3) -> Counts:
    """Count ``model``'s parameters, and its FLOPs with fvcore on one ``image_size`` image.

    The model is traced in eval mode (and put back in its former mode), on the device of
    its parameters.
    """
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch: tracing is deprecated; tracer warnings
            from fvcore.nn import FlopCountAnalysis  # slow import, warns; only the reference needs it

            analysis = FlopCountAnalysis(model, torch.zeros(1, in_channels, image_size, image_size, device=device))
            # fvcore would log every op it has no counter for (add, max_pool2d...) and every
            # module the trace never called (the aux head): expected, hence silenced.
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            flops = int(analysis.total())
    finally:
        model.train(was_training)
    return Counts(params, trainable, flops)


# --------------------------------------------------------------------------- from the config


class _Tally:
    """Running totals of a walk through the architecture; the helpers mirror the layers."""

    __slots__ = ("params", "flops", "bn2d_scales")

    def __init__(self) -> None:
        self.params = 0
        self.flops = 0
        self.bn2d_scales = 0  # BatchNorm2d weights: not trainable with batchnorm.frozen_scale

    def conv(self, c_in: int, c_out: int, kernel: int, size_out: int, bias: bool = False) -> None:
        weights = c_out * c_in * kernel * kernel
        self.params += weights + (c_out if bias else 0)
        self.flops += weights * size_out * size_out

    def bn(self, channels: int, size: int, spatial: bool = True) -> None:
        self.params += 2 * channels
        self.bn2d_scales += channels if spatial else 0
        self.flops += 2 * channels * size * size

    def linear(self, n_in: int, n_out: int) -> None:
        self.params += n_in * n_out + n_out
        self.flops += n_in * n_out

    def se(self, channels: int, size: int, ratio: int) -> None:
        hidden = max(1, channels // ratio)
        self.flops += channels * size * size  # the squeeze: adaptive_avg_pool2d
        self.conv(channels, hidden, 1, 1, bias=True)
        self.conv(hidden, channels, 1, 1, bias=True)


def fast_count(config: ModelConfig, image_size: int = 32) -> Counts:
    """Parameters and FLOPs of ``build_model(config, image_size)`` without building it.

    Equal to :func:`count_model` to the unit (see the module docstring for what counts).

    Args:
        config: Our own ResNet or a torchvision one.
        image_size: Side of the square input images.

    Returns:
        All parameters, the trainable ones, and the FLOPs of one forward pass.

    Raises:
        InvalidValue: ``pool_kernel`` is larger than the last feature map.
    """
    t = _Tally()
    as_resnet = config if isinstance(config, ResNetConfig) else torchvision_as_resnet(config)
    after_stage = _tally_resnet(t, as_resnet, resnet_geometry(as_resnet, image_size))
    # Freezing keeps what follows the last stage (all_but_head) or the one before it trainable
    # (search.models.freezing): everything counted up to there is frozen.
    frozen = 0
    if config.freeze == "all_but_last_stage":
        frozen = after_stage[-2]
    elif config.freeze == "all_but_head":
        frozen = after_stage[-1]
    if isinstance(config, ResNetConfig) and config.batchnorm.frozen_scale:
        frozen += t.bn2d_scales  # never combined with freeze (ResNetConfig refuses it)
    return Counts(t.params, t.params - frozen, t.flops)


def _tally_resnet(t: _Tally, config: ResNetConfig, geometry: ResNetGeometry) -> list[int]:
    """Walk the whole network of :mod:`search.models.resnet`; returns the tally's params after each stage."""
    stem = geometry.stem
    t.conv(stem.in_channels, stem.out_channels, stem.kernel, stem.conv_size)
    if not config.preact:
        t.bn(stem.out_channels, stem.conv_size)
    if config.se.name == "stem":
        t.se(stem.out_channels, stem.conv_size, config.se.ratio)

    after_stage: list[int] = []
    for stage in geometry.stages:
        for block in stage.blocks:
            _tally_block(t, config, block)
        after_stage.append(t.params)

    channels, size = geometry.out_channels, geometry.feature_size
    if config.preact:
        t.bn(channels, size)
    if config.pool_kernel is None:
        t.flops += channels * size * size  # adaptive_avg_pool2d
    _tally_head(t, geometry.head_features, config.head.hidden, config.head.batchnorm, config.num_classes)

    if config.aux_head is not None:
        # Parameters only: the aux head does not run in eval mode, where FLOPs are counted.
        aux = _Tally()
        aux_channels = geometry.stages[config.aux_head.after_stage].out_channels
        _tally_head(aux, aux_channels, config.aux_head.hidden, False, config.num_classes)
        t.params += aux.params
    return after_stage


def _tally_block(t: _Tally, config: ResNetConfig, block: BlockGeometry) -> None:
    """One block of :mod:`search.models.resnet`: its convs and BatchNorms (before each conv in a
    pre-activation block, after it otherwise), SE and shortcut."""
    c_in, c_out, out = block.in_channels, block.out_channels, block.out_size
    preact = config.preact
    for conv in block_convs(BLOCK_TYPES[config.block], block):
        if preact:
            t.bn(conv.in_channels, conv.in_size)
        t.conv(conv.in_channels, conv.out_channels, conv.kernel, conv.out_size)
        if not preact:
            t.bn(conv.out_channels, conv.out_size)
    if config.se.name == "blocks":
        t.se(c_out, out, config.se.ratio)
    if config.shortcut == "projection" and block.reshapes:
        t.conv(c_in, c_out, 1, out)
        if not preact:
            t.bn(c_out, out)


def _tally_head(t: _Tally, features: int, hidden: tuple[int, ...], batchnorm: bool, num_classes: int) -> None:
    """Hidden Linear layers [+ BatchNorm1d], then the classifier's Linear."""
    for width in hidden:
        t.linear(features, width)
        if batchnorm:
            t.bn(width, 1, spatial=False)
        features = width
    t.linear(features, num_classes)


# --------------------------------------------------------------------------- the budget


def check_budget(counts: Counts, budget: BudgetConfig) -> str | None:
    """``None`` if ``counts`` fit ``budget``, else why not ("4,912,330 params > max 4,000,000").

    The parameter limit is on all parameters, frozen ones included: it bounds model size.
    """
    reasons = []
    if budget.max_params is not None and counts.params > budget.max_params:
        reasons.append(f"{counts.params:,} params > max {budget.max_params:,}")
    if budget.max_flops is not None and counts.flops > budget.max_flops:
        reasons.append(f"{counts.flops:,} FLOPs > max {budget.max_flops:,}")
    return "; ".join(reasons) or None


def constraint_values(counts: Counts, budget: BudgetConfig) -> tuple[float, ...]:
    """Optuna constraint values (feasible where every value is <= 0), one per set limit.

    ``params / max_params - 1`` then ``flops / max_flops - 1``; empty without limits.
    """
    values: list[float] = []
    if budget.max_params is not None:
        values.append(counts.params / budget.max_params - 1.0)
    if budget.max_flops is not None:
        values.append(counts.flops / budget.max_flops - 1.0)
    return tuple(values)
