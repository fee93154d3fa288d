"""The training batches of a run: the one object that holds the training set and hands the
epoch loop uint8 batches on the device, whichever way the set is placed.

On the device (``data.on_device`` true, or ``auto`` when it fits): the set is copied there
once and a batch is an index lookup. Streamed: the set stays in the memory-mapped cache; each
batch's rows are gathered on the host (into pinned memory on CUDA) and copied to the device
with ``non_blocking``, one batch ahead, so the gather and the copy of batch k+1 overlap the
device's work on batch k. Each batch gets its own pinned buffer from PyTorch's caching host
allocator, which does not hand a buffer out again before the copy that read it has finished:
correct by construction, with no event bookkeeping here. On a CPU the same code runs minus
the pinning (the copy to the device is then a no-op).

Either way the batches are the same rows in the same order (the permutation is drawn on the
device from the run's generator, as before), so a run's weights do not depend on the placement.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from search.data import TensorSplit
from search.data.placement import Decision

# A batch: the indices into the training set (on the device), the uint8 images, the labels.
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class TrainFeed:
    """The training set of a run, placed per ``decision``, as device batches.

    Attributes:
        decision: Where the set lives and why (for the run's log and the preflight block).
        labels: All training labels, on the device (8 bytes an image, always copied).
    """

    def __init__(self, split: TensorSplit, device: torch.device, decision: Decision) -> None:
        self.decision = decision
        self.device = device
        self.labels = split.labels.to(device)
        self._split = split
        # On the device: the whole set, copied once (a fresh copy on a CPU too: out of the map).
        self._images = split.images.to(device) if decision.on_device else None
        self._pin = device.type == "cuda" and not decision.on_device

    def __len__(self) -> int:
        return len(self._split)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return self._split.image_shape

    def batches(self, perm: torch.Tensor, batch_size: int, start: int = 0, stop: int | None = None) -> Iterator[Batch]:
        """The full batches ``start`` to ``stop`` (excluded) of ``perm`` (an order on the device).

        Args:
            perm: The epoch's order of the training images.
            batch_size: Images per batch; a last partial batch is dropped.
            start: The first batch (an epoch cut at a successive-halving rung goes on from there).
            stop: The batch to stop before; None: the epoch's last full batch.
        """
        stop = len(perm) // batch_size if stop is None else stop
        if self._images is not None:
            for step in range(start, stop):
                idx = perm[step * batch_size : (step + 1) * batch_size]
                yield idx, self._images[idx], self.labels[idx]
            return
        order = perm.cpu()  # one read of the order per part of an epoch; the gathers need it on the host
        ahead = self._fetch(order, start, batch_size) if start < stop else None
        for step in range(start, stop):
            images = ahead
            ahead = self._fetch(order, step + 1, batch_size) if step + 1 < stop else None
            idx = perm[step * batch_size : (step + 1) * batch_size]
            assert images is not None
            yield idx, images, self.labels[idx]

    def _fetch(self, order: torch.Tensor, step: int, batch_size: int) -> torch.Tensor:
        """Batch ``step`` gathered from the host copy and on its way to the device (asynchronously)."""
        rows = order[step * batch_size : (step + 1) * batch_size]
        buffer = torch.empty((len(rows), *self.image_shape), dtype=torch.uint8, pin_memory=self._pin)
        self._split.read(rows, out=buffer)
        return buffer.to(self.device, non_blocking=True)
