"""Where a trial's training set lives while it trains: copied whole to the device, or streamed.

``data.on_device``: ``true`` copies the uint8 training set to the training device once (the
airbench way: a batch is then an index lookup there); ``false`` leaves it in the memory-mapped
cache and streams it, one batch ahead, through pinned memory on CUDA; ``auto`` (the default)
copies it when it fits the trial's budget and streams it otherwise.

The budget is ``data.device_memory_budget_mb`` when set (per trial, for the training set
alone), else half of the device's free memory divided by the trials packed on the device:
the other half is left to the weights, activations and optimizer state. On CUDA the free
memory is :func:`torch.cuda.mem_get_info`'s; on a CPU the "device" is host RAM and its free
memory is the kernel's ``MemAvailable``, so a training set larger than half of it is read
batch by batch from the mapped file instead of being copied into the trial's memory.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Literal

import torch

OnDevice = Literal["auto", True, False]
DATA_SHARE = 0.5  # of a trial's part of the free memory, what the training set may fill under auto
MB = 2**20


@dataclass(frozen=True)
class Placement:
    """How a dataset's training set is placed: the setting, the budget, the trials sharing the device.

    Attributes:
        on_device: ``data.on_device``.
        budget_mb: ``data.device_memory_budget_mb``: None measures the free memory.
        trials_per_device: The trials packed on one device (a fractional ``resources.gpu``).
    """

    on_device: OnDevice = "auto"
    budget_mb: float | None = None
    trials_per_device: int = 1

    def shared_by(self, trials: int) -> Placement:
        """This placement for a device that ``trials`` trials share."""
        return replace(self, trials_per_device=max(1, trials))

    def decide(self, nbytes: int, device: torch.device) -> Decision:
        """Whether a training set of ``nbytes`` bytes goes to ``device`` whole, and why.

        Raises:
            Nothing: an unmeasurable device counts as having no free memory under ``auto``.
        """
        size = f"{nbytes / MB:,.1f} MB"
        if self.on_device is not True and self.on_device is not False:
            return self._auto(nbytes, device, size)
        how = "data.on_device: true" if self.on_device else "data.on_device: false"
        return Decision(bool(self.on_device), f"{size}; {how}")

    def _auto(self, nbytes: int, device: torch.device, size: str) -> Decision:
        if self.budget_mb is not None:
            budget, source = self.budget_mb * MB, "data.device_memory_budget_mb"
        else:
            free = free_memory(device)
            per = f" / {self.trials_per_device} trials" if self.trials_per_device > 1 else ""
            where = "host RAM available" if device.type == "cpu" else f"{device.type} memory free"
            budget = DATA_SHARE * free / self.trials_per_device
            source = f"half of {free / MB:,.0f} MB {where}{per}"
        fits = nbytes <= budget
        verdict = "fits" if fits else "over"
        return Decision(fits, f"{size} {verdict} the budget of {budget / MB:,.1f} MB ({source}); data.on_device: auto")


@dataclass(frozen=True)
class Decision:
    """Where the training set goes: ``on_device`` true copies it whole; ``why`` says it in words."""

    on_device: bool
    why: str

    @property
    def mode(self) -> str:
        return "on device" if self.on_device else "streamed"

    def line(self) -> str:
        """``training set: streamed (15,000.0 MB over the budget ...)``."""
        return f"training set: {self.mode} ({self.why})"


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device``: CUDA's free memory, or host RAM available on a CPU (0 if unknown)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return host_available()


def host_available() -> int:
    """``MemAvailable`` from ``/proc/meminfo`` (free plus reclaimable cache), else free pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def trials_per_device(gpu: float) -> int:
    """The trials that share one device when each asks for ``gpu`` GPUs: ``1 / gpu`` of a
    fractional GPU (0.25: four); one otherwise (a CPU trial measures the host RAM still
    available when it starts, after the trials already running took theirs)."""
    return max(1, math.floor(1 / gpu + 1e-9)) if 0 < gpu < 1 else 1
