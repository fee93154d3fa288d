"""An exponential moving average of a model's weights and BatchNorm statistics (``train.ema``).

Hand-written rather than ``torch.optim.swa_utils.AveragedModel``: that one reads its step
counter back from the device at every update (a host sync per step on a GPU) and has no
warm-up. Here the decay is a host number and the update is one ``_foreach_lerp_`` over the
floating-point tensors; integer buffers (BatchNorm's batch counters) are copied.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import torch
from torch import nn

from search.config import Ema


class WeightEma:
    """A copy of ``model`` whose tensors follow ``model``'s as an exponential moving average.

    Args:
        model: The model being trained; its parameters and buffers are read at every
            :meth:`update` (they are updated in place, so the same tensors all run long).
        cfg: The decay and its warm-up.
    """

    def __init__(self, model: nn.Module, cfg: Ema) -> None:
        self.cfg = cfg
        self.module = copy.deepcopy(model)
        self.module.requires_grad_(False)
        self.updates = 0
        pairs = list(zip(_tensors(self.module), _tensors(model), strict=True))
        self._mine = [mine for mine, _ in pairs if mine.is_floating_point()]
        self._theirs = [theirs for mine, theirs in pairs if mine.is_floating_point()]
        self._copied = [(mine, theirs) for mine, theirs in pairs if not mine.is_floating_point()]

    def decay(self, updates: int) -> float:
        """The decay of update number ``updates`` (1-based): rising linearly to ``cfg.decay``."""
        warmup = self.cfg.warmup_steps
        return self.cfg.decay * min(1.0, updates / warmup) if warmup else self.cfg.decay

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the model's current tensors by one step."""
        self.updates += 1
        if self._mine:
            torch._foreach_lerp_(self._mine, self._theirs, 1.0 - self.decay(self.updates))
        for mine, theirs in self._copied:
            mine.copy_(theirs)

    def state_dict(self) -> dict[str, Any]:
        """The average's tensors and its update count, for the checkpoint."""
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


def _tensors(model: nn.Module) -> list[torch.Tensor]:
    """Parameters then buffers, in the module's order (a deep copy lists them alike)."""
    return list(itertools.chain(model.parameters(), model.buffers()))
