"""Peak activation memory and model size at inference, from the config alone, and the
reference that measures both on a built model.

Both are exact, like the fast count, by one definition checked against a trace of the real
network (:func:`measure_footprint`):

* **peak activation memory**: the network runs eagerly in eval mode on one image (batch 1),
  every operation writing a new tensor except in-place ones (``ReLU(inplace=True)``,
  torchvision's ``out += identity``) and views (flatten, option A's subsampling, dropout in
  eval mode); a tensor lives from the operation that writes it to the last one that reads
  it (the input image from the start, the logits to the end). The peak is the largest sum
  of tensors alive at one operation. Scratch space inside an operation is not counted, and a
  runtime that fuses BatchNorm and ReLU into the convolution (onnxruntime does) needs less:
  for it the figure is an upper bound.
* **model size**: the tensors inference reads: every parameter and BatchNorm running mean
  and variance of the layers that run in eval mode (the auxiliary head does not).

Both are counted in elements; bytes follow from the deployment precision
(:data:`BYTES_PER_ELEMENT`; int8 counts one byte per weight and activation, before the
scales and zero points a quantized file adds). 1 kb = 1,024 bytes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from search.config import BudgetConfig, ModelConfig, ResNetConfig
from search.config.blocks import BLOCK_TYPES
from search.models.geometry import (
    BlockGeometry,
    ConvGeometry,
    ResNetGeometry,
    block_convs,
    resnet_geometry,
    torchvision_as_resnet,
)

__all__ = [
    "BYTES_PER_ELEMENT",
    "KB",
    "Footprint",
    "footprint",
    "measure_footprint",
    "check_footprint",
    "footprint_constraints",
]

BYTES_PER_ELEMENT = {"fp32": 4, "int8": 1}
KB = 1024


@dataclass(frozen=True)
class Footprint:
    """What inference of one image holds: its peak of live activations and the weights it reads."""

    activation_elements: int
    model_elements: int

    def activation_kb(self, precision: str = "fp32") -> float:
        return self.activation_elements * BYTES_PER_ELEMENT[precision] / KB

    def model_kb(self, precision: str = "fp32") -> float:
        return self.model_elements * BYTES_PER_ELEMENT[precision] / KB

    def as_dict(self) -> dict[str, dict[str, float]]:
        """kb at every precision: ``{"activation_kb": {"fp32": ..., "int8": ...}, "model_kb": {...}}``."""
        return {
            "activation_kb": {p: round(self.activation_kb(p), 3) for p in BYTES_PER_ELEMENT},
            "model_kb": {p: round(self.model_kb(p), 3) for p in BYTES_PER_ELEMENT},
        }


def peak_of(spans: Iterable[tuple[int, int, int]]) -> int:
    """The largest sum of ``size`` over spans ``(size, first, last)`` alive at one step
    (alive from ``first`` to ``last``, both included)."""
    delta: dict[int, int] = defaultdict(int)
    for size, first, last in spans:
        delta[first] += size
        delta[last + 1] -= size
    running = peak = 0
    for step in sorted(delta):
        running += delta[step]
        peak = max(peak, running)
    return peak


# --------------------------------------------------------------------------- from the config


class _Forward:
    """One forward pass as operations in order: which tensors each reads, how large the tensor
    it writes is, and how many weights it reads. Views and in-place operations write nothing."""

    def __init__(self, input_elements: int) -> None:
        self.spans: list[list[int]] = [[input_elements, 0, 0]]  # [elements, first, last]
        self.step = 0
        self.weights = 0

    def op(self, inputs: Iterable[int], elements: int, weights: int = 0) -> int:
        """A new tensor of ``elements`` written from ``inputs``; returns its id."""
        self.use(*inputs)
        self.spans.append([elements, self.step, self.step])
        self.weights += weights
        return len(self.spans) - 1

    def use(self, *tensors: int) -> None:
        """An operation that reads (or updates in place) ``tensors`` and writes nothing new."""
        self.step += 1
        for tensor in tensors:
            self.spans[tensor][2] = self.step

    def conv(self, x: int, c_in: int, c_out: int, kernel: int, size_out: int, bias: bool = False) -> int:
        return self.op([x], c_out * size_out * size_out, c_out * c_in * kernel * kernel + (c_out if bias else 0))

    def bn(self, x: int, channels: int, size: int) -> int:
        return self.op([x], channels * size * size, 4 * channels)  # weight, bias, running mean and variance

    def se(self, x: int, channels: int, size: int, ratio: int) -> int:
        hidden = max(1, channels // ratio)
        squeezed = self.op([x], channels)
        gate = self.op(
            [self.conv(self.conv(squeezed, channels, hidden, 1, 1, True), hidden, channels, 1, 1, True)], channels
        )
        return self.op([x, gate], channels * size * size)

    def linear(self, x: int, n_out: int) -> int:
        n_in = self.spans[x][0]
        return self.op([x], n_out, n_in * n_out + n_out)

    def peak(self, output: int) -> int:
        self.spans[output][2] = self.step + 1  # the logits outlive the pass
        return peak_of((e, first, last) for e, first, last in self.spans)


def footprint(config: ModelConfig, image_size: int = 32) -> Footprint:
    """Peak activation elements and weight elements of ``build_model(config, image_size)`` at
    inference on one image, without building it (see the module docstring).

    Raises:
        InvalidValue: ``pool_kernel`` is larger than the last feature map.
    """
    as_resnet = config if isinstance(config, ResNetConfig) else torchvision_as_resnet(config)
    block = _torchvision_block if not isinstance(config, ResNetConfig) else _BLOCKS[as_resnet.preact]
    geometry = resnet_geometry(as_resnet, image_size)
    f = _Forward(as_resnet.in_channels * image_size * image_size)
    x = _stem(f, as_resnet, geometry)
    for stage in geometry.stages:
        for shapes in stage.blocks:
            x = block(f, as_resnet, shapes, x)
    channels, size = geometry.out_channels, geometry.feature_size
    if as_resnet.preact:
        x = f.bn(x, channels, size)  # the final BatchNorm; its ReLU is in place
    x = f.op([x], channels * geometry.pooled_size**2)  # pooling; dropout and flatten are views
    for width in as_resnet.head.hidden:
        x = f.linear(x, width)
        if as_resnet.head.batchnorm:
            x = f.op([x], width, 4 * width)  # its ReLU is in place, its dropout a view
    return Footprint(f.peak(f.linear(x, as_resnet.num_classes)), f.weights)


def _stem(f: _Forward, config: ResNetConfig, geometry: ResNetGeometry) -> int:
    stem = geometry.stem
    x = f.conv(0, stem.in_channels, stem.out_channels, stem.kernel, stem.conv_size)
    if not config.preact:
        x = f.bn(x, stem.out_channels, stem.conv_size)
    if config.se.name == "stem":
        x = f.se(x, stem.out_channels, stem.conv_size, config.se.ratio)
    if config.stem.maxpool:
        x = f.op([x], stem.out_channels * stem.out_size * stem.out_size)
    return x


def _shortcut(f: _Forward, config: ResNetConfig, block: BlockGeometry, x: int, activated: int) -> int:
    """The identity branch of :mod:`search.models.resnet`, computed before the main path."""
    if not block.reshapes:
        return x
    c_in, c_out, out = block.in_channels, block.out_channels, block.out_size
    if config.shortcut == "identity":  # option A: a strided view, zero-padded when it widens
        return f.op([x], c_out * out * out) if c_out > c_in else x
    if config.preact:
        return f.conv(activated, c_in, c_out, 1, out)
    return f.bn(f.conv(x, c_in, c_out, 1, out), c_out, out)


def _postact_block(f: _Forward, config: ResNetConfig, block: BlockGeometry, x: int) -> int:
    identity = _shortcut(f, config, block, x, x)
    out = x
    for conv in block_convs(BLOCK_TYPES[config.block], block):
        out = f.bn(f.conv(out, conv.in_channels, conv.out_channels, conv.kernel, conv.out_size), *_out(conv))
    return _block_end(f, config, block, out, identity)


def _preact_block(f: _Forward, config: ResNetConfig, block: BlockGeometry, x: int) -> int:
    normalized = f.bn(x, block.in_channels, block.in_size)
    activated = f.op([normalized], block.in_channels * block.in_size**2)  # F.relu, not in place: x is kept
    identity = _shortcut(f, config, block, x, activated)
    out = activated
    for index, conv in enumerate(block_convs(BLOCK_TYPES[config.block], block)):
        if index:
            out = f.bn(out, conv.in_channels, conv.in_size)  # its ReLU is in place
        out = f.conv(out, conv.in_channels, conv.out_channels, conv.kernel, conv.out_size)
    return _block_end(f, config, block, out, identity)


def _block_end(f: _Forward, config: ResNetConfig, block: BlockGeometry, out: int, identity: int) -> int:
    if config.se.name == "blocks":
        out = f.se(out, block.out_channels, block.out_size, config.se.ratio)
    return f.op([out, identity], block.out_channels * block.out_size**2)  # the addition; its ReLU is in place


def _torchvision_block(f: _Forward, config: ResNetConfig, block: BlockGeometry, x: int) -> int:
    """torchvision's blocks: the downsample runs after the main path, and the addition is in place."""
    out = x
    for conv in block_convs(BLOCK_TYPES[config.block], block):
        out = f.bn(f.conv(out, conv.in_channels, conv.out_channels, conv.kernel, conv.out_size), *_out(conv))
    identity = x
    if block.reshapes:
        c_out, size = block.out_channels, block.out_size
        identity = f.bn(f.conv(x, block.in_channels, c_out, 1, size), c_out, size)
    f.use(out, identity)
    return out


_BLOCKS = {False: _postact_block, True: _preact_block}


def _out(conv: ConvGeometry) -> tuple[int, int]:
    return conv.out_channels, conv.out_size


# --------------------------------------------------------------------------- the reference


def measure_footprint(model: nn.Module, image_size: int, in_channels: int = 3) -> Footprint:
    """The footprint of a built model, measured: one image runs through it in eval mode under a
    dispatch mode that sees every tensor operation, and the storages each reads and writes give
    the tensors' lives (views share their base's storage; in-place operations write no new one).
    The model is put back in its former mode.

    An operation's output that nothing reads afterwards (and that is not the logits) is its
    scratch, not counted; the weights are the parameter and buffer storages the pass reads.
    """
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    weights = {t.untyped_storage().data_ptr(): t for t in (*model.parameters(), *model.buffers())}
    spans: dict[int, list[int]] = {}  # storage -> [bytes, first, last]
    read: set[int] = set()
    kept: list[torch.Tensor] = []  # every storage stays alive, so that none is reused under another tensor

    class Trace(TorchDispatchMode):
        step = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # torch's signature
            out = func(*args, **(kwargs or {}))
            Trace.step += 1
            for tensor in _tensors(tree_leaves((args, kwargs))):
                key = tensor.untyped_storage().data_ptr()
                if key in weights:
                    read.add(key)
                elif key in spans:
                    spans[key][2] = Trace.step
            for tensor in _tensors(tree_leaves(out)):
                key = tensor.untyped_storage().data_ptr()
                if key in spans:
                    spans[key][2] = Trace.step
                elif key not in weights:
                    spans[key] = [tensor.untyped_storage().nbytes(), Trace.step, Trace.step]
                    kept.append(tensor)
            return out

    device = next(model.parameters()).device
    image = torch.zeros(1, in_channels, image_size, image_size, device=device)
    spans[image.untyped_storage().data_ptr()] = [image.untyped_storage().nbytes(), 0, 0]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), Trace():
            logits = model(image)
    finally:
        model.train(was_training)
    spans[logits.untyped_storage().data_ptr()][2] = Trace.step + 1
    live = [(size, first, last) for size, first, last in spans.values() if last > first]
    element = image.element_size()
    return Footprint(peak_of(live) // element, sum(weights[k].untyped_storage().nbytes() for k in read) // element)


def _tensors(leaves: list) -> list[torch.Tensor]:
    return [leaf for leaf in leaves if isinstance(leaf, torch.Tensor) and leaf.untyped_storage().nbytes() > 0]


# --------------------------------------------------------------------------- the budget


def check_footprint(found: Footprint, budget: BudgetConfig) -> str | None:
    """``None`` if ``found`` fits the memory and model-size limits at the budget's precision,
    else why not ("activation memory 612.0 kb (fp32) > max 512 kb")."""
    precision = budget.precision
    reasons = []
    activation, model = found.activation_kb(precision), found.model_kb(precision)
    if budget.max_activation_kb is not None and activation > budget.max_activation_kb:
        reasons.append(f"activation memory {activation:,.1f} kb ({precision}) > max {budget.max_activation_kb:g} kb")
    if budget.max_model_kb is not None and model > budget.max_model_kb:
        reasons.append(f"model size {model:,.1f} kb ({precision}) > max {budget.max_model_kb:g} kb")
    return "; ".join(reasons) or None


def footprint_constraints(found: Footprint, budget: BudgetConfig) -> dict[str, float]:
    """Optuna constraint values by name (feasible where <= 0), one per set limit."""
    precision = budget.precision
    values = {}
    if budget.max_activation_kb is not None:
        values["activation_kb"] = found.activation_kb(precision) / budget.max_activation_kb - 1.0
    if budget.max_model_kb is not None:
        values["model_kb"] = found.model_kb(precision) / budget.max_model_kb - 1.0
    return values
