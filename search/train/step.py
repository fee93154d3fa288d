"""The training step: forward, loss, backward, clipping, optimizer and LR schedule, then the EMA.

:class:`TrainStep` runs it eagerly, launching each kernel from Python. :class:`GraphedStep`
(``train.cuda_graph`` on a CUDA device) runs its first :data:`GRAPH_WARMUP_STEPS` steps
eagerly on a side stream, captures the next one as a CUDA graph that reads the batch from
static buffers, and from then on copies each batch into those buffers and replays the
graph: one launch per step instead of hundreds, which is what bounds small models on a
GPU. The schedule sets the LR in a device tensor the graph reads; the EMA and the loss
sums stay outside the graph. A capture that fails warns once and leaves the run eager.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from search.config import TrainConfig
from search.train.ema import WeightEma
from search.train.state import TrainState

# Eager steps before the capture, as torch's CUDA-graph notes advise: they create the
# optimizer's momentum buffers and let cuDNN pick its kernels, which a capture cannot do.
GRAPH_WARMUP_STEPS = 3


@dataclass(frozen=True)
class StepOutput:
    """One step's logits, main-head loss and optimized loss (device tensors), and the LR it used."""

    logits: torch.Tensor
    main: torch.Tensor
    loss: torch.Tensor
    lr: float


def losses(
    out: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    y: torch.Tensor,
    cfg: TrainConfig,
    class_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The logits, the main head's loss and the loss to optimize (aux head weighted in).

    ``class_weight`` (``train.class_weights``) weights each image's loss by its class; the
    mean is then over the batch's weights, as torch's weighted cross-entropy takes it.
    """
    smoothing = cfg.label_smoothing
    if isinstance(out, tuple):  # an aux head in training mode
        logits, aux = out
        main = F.cross_entropy(logits, y, weight=class_weight, label_smoothing=smoothing)
        aux_loss = F.cross_entropy(aux, y, weight=class_weight, label_smoothing=smoothing)
        return logits, main, main + cfg.aux_weight * aux_loss
    main = F.cross_entropy(out, y, weight=class_weight, label_smoothing=smoothing)
    return out, main, main


class TrainStep:
    """The eager step: each call trains on one batch.

    Args:
        state: The model, optimizer and scheduler the step advances.
        net: What runs the forward pass: ``state.model`` or a compiled wrapper of it.
        cfg: The recipe: label smoothing, aux weight, gradient clipping.
        autocast: The autocast context of the batch format.
        ema: The weight average to update after every step, if any.
        base_lr: The first param group's LR before the schedule (for the reported LR).
        class_weight: The loss's class weights on the device (``train.class_weights``), if any.
    """

    def __init__(
        self,
        state: TrainState,
        net: nn.Module,
        cfg: TrainConfig,
        autocast: torch.autocast,
        ema: WeightEma | None,
        base_lr: float,
        class_weight: torch.Tensor | None = None,
    ) -> None:
        self.state, self.net, self.cfg, self.autocast, self.ema, self.base_lr = state, net, cfg, autocast, ema, base_lr
        self.class_weight = class_weight

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        """Train on the batch ``x``, ``y`` (on the device, ``x`` normalized)."""
        lr = self.current_lr()
        self.state.optimizer.zero_grad(set_to_none=True)
        logits, main, loss = self.forward_backward(x, y)
        self.state.optimizer.step()
        self.finish()
        return StepOutput(logits, main, loss, lr)

    def current_lr(self) -> float:
        """The LR of the coming step, computed on the host (a tensor LR would need a device read)."""
        scheduler = self.state.scheduler
        factors = getattr(scheduler, "lr_lambdas", None)
        if not factors:
            return float(self.state.optimizer.param_groups[0]["lr"])
        return self.base_lr * factors[0](scheduler.last_epoch)

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Forward pass and losses under autocast, backward, and the gradient clip."""
        with self.autocast:
            logits, main, loss = losses(self.net(x), y, self.cfg, self.class_weight)
        loss.backward()
        cfg = self.cfg
        if cfg.grad_clip is not None:
            # Neither clip reads a value back to the host (no error_if_nonfinite):
            # no sync per step, and both can be captured in a CUDA graph.
            if cfg.grad_clip_mode == "norm":
                nn.utils.clip_grad_norm_(self.state.model.parameters(), cfg.grad_clip)
            else:
                nn.utils.clip_grad_value_(self.state.model.parameters(), cfg.grad_clip)
        return logits, main, loss

    def finish(self) -> None:
        """What follows the optimizer step on the host: the schedule and the weight average."""
        self.state.scheduler.step()
        if self.ema is not None:
            self.ema.update()


class GraphedStep(TrainStep):
    """The step as a CUDA graph: warm-up steps, one capture, then replays (see the module docstring).

    The optimizer must hold its LR as a device tensor (``build_optimizer(..., capturable=True)``)
    so that the schedule reaches the captured step, and ``autocast`` must not cache casts.
    """

    # Set per instance as the run goes: steps so far, the captured graph and its static
    # tensors (input, labels, logits, main loss, loss), or a failed capture.
    calls: int = 0
    graph: torch.cuda.CUDAGraph | None = None
    static: tuple[torch.Tensor, ...] = ()
    failed: bool = False

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        if self.graph is not None and x.shape != self.static[0].shape:
            # A new batch shape (train.progressive_resize reaching full size): a graph
            # replays one shape only, so warm up and capture again for this one.
            self.graph, self.static, self.calls = None, (), 0
        self.calls += 1
        if self.graph is not None:
            return self._replay(x, y)
        if self.failed:
            return super().__call__(x, y)
        if self.calls <= GRAPH_WARMUP_STEPS:
            return self._side_stream_step(x, y)
        return self._capture(x, y)

    def _side_stream_step(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            out = super().__call__(x, y)
        torch.cuda.current_stream(x.device).wait_stream(side)
        return out

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        static_x, static_y = x.clone(), y.clone()
        graph = torch.cuda.CUDAGraph()
        # Gradients are allocated inside the capture, in the graph's memory: the backward
        # pass of every replay writes the same tensors, and nothing zeroes them again.
        self.state.optimizer.zero_grad(set_to_none=True)
        try:
            with torch.cuda.graph(graph):
                logits, main, loss = self.forward_backward(static_x, static_y)
                self.state.optimizer.step()
        except RuntimeError as error:
            warnings.warn(f"train.cuda_graph: capturing the step failed ({error}); training eagerly", stacklevel=2)
            self.failed = True
            torch.cuda.synchronize(x.device)
            return TrainStep.__call__(self, x, y)
        self.graph = graph
        self.static = (static_x, static_y, logits, main, loss)
        return self._replay(x, y)

    def _replay(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        assert self.graph is not None
        lr = self.current_lr()
        static_x, static_y, logits, main, loss = self.static
        static_x.copy_(x)
        static_y.copy_(y)
        self.graph.replay()
        self.finish()
        return StepOutput(logits, main, loss, lr)


def step_class(cfg: TrainConfig, device: torch.device) -> type[TrainStep]:
    """:class:`GraphedStep` where ``cfg.cuda_graph`` asks for it and the device is CUDA, else the
    eager :class:`TrainStep` (a graph's ``autocast`` must not cache casts)."""
    return GraphedStep if cfg.cuda_graph and device.type == "cuda" else TrainStep
