"""A run cut at successive-halving rungs (:class:`~search.config.Rung`): which steps of which
epoch train at which side, where the trainer validates and reports within an epoch, and what
each stretch has cost so far in full-epoch equivalents (:mod:`search.budget.compute`).

A run without rungs is one stretch per epoch (at ``train.progressive_resize``'s side in its
first epochs): it trains exactly as before, and its reports count their cost all the same.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from search.budget.compute import Stretch, flops_counter, schedule
from search.config import Rung, TrialConfig
from search.train.epoch import TrainedEpoch


@dataclass(frozen=True)
class Fidelity:
    """A run's stretches, what training has cost after each (full-epoch equivalents), and its rungs."""

    rungs: tuple[Rung, ...]
    stretches: tuple[Stretch, ...]
    spent: tuple[float, ...]
    steps_per_epoch: int

    def of_epoch(self, epoch: int) -> list[tuple[Stretch, float]]:
        """The stretches of ``epoch`` with the cost spent at the end of each."""
        return [(s, spent) for s, spent in zip(self.stretches, self.spent, strict=True) if s.epoch == epoch]


def plan_fidelity(
    trial: TrialConfig, image_size: int, steps_per_epoch: int, epochs: int, rungs: Sequence[Rung] = ()
) -> Fidelity:
    """The stretches of a run of ``epochs`` epochs of ``trial`` on images of ``image_size``."""
    stretches = schedule(epochs, steps_per_epoch, rungs, trial.train.progressive_resize)
    flops_at = flops_counter(trial.model, image_size)
    epoch_cost = steps_per_epoch * flops_at(None)
    costs = (s.steps * flops_at(s.image_size) / epoch_cost for s in stretches)
    return Fidelity(tuple(rungs), tuple(stretches), tuple(itertools.accumulate(costs)), steps_per_epoch)


def merge_parts(parts: Sequence[TrainedEpoch]) -> TrainedEpoch:
    """One epoch's measures from those of its parts (means weighted by their steps and images)."""
    if len(parts) == 1:
        return parts[0]
    images = sum(p.images for p in parts)  # every step has the same batch: images weigh as steps do
    return TrainedEpoch(
        train_loss=sum(p.train_loss * p.images for p in parts) / images,
        train_acc=sum(p.train_acc * p.images for p in parts) / images,
        total_loss=sum(p.total_loss for p in parts),
        lr=parts[-1].lr,
        images=images,
        first_step_s=parts[0].first_step_s,
    )
