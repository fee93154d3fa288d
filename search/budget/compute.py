"""What training costs, in what it costs: images seen x FLOPs per image at the side they were
trained at, and that cost in full-epoch equivalents (one epoch of the training set at the
trials' full image size is 1.0). An epoch at 16 px of a 32-px space costs about a quarter.

The training schedule is cut into stretches (:func:`schedule`): runs of steps at one image
side, ending at an epoch's end or at a successive-halving rung (:class:`~search.config.Rung`),
where the trainer validates and reports. The trainer follows the same stretches, so the cost
counted here is the cost of what it trained.

FLOPs per image at each side come from the exact count of the config
(:func:`~search.budget.counts.fast_count`), not from the pixel ratio: a ResNet's head and
its rounded strided feature maps make the ratio inexact. Validation passes are not counted:
they are forward passes only, the same for every trial of a spec, and a rung's extra
validation is a small share of a rung's training.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

from search.budget.counts import fast_count
from search.config import ModelConfig, ProgressiveResize, Rung


@dataclass(frozen=True)
class Stretch:
    """Steps ``start`` to ``stop`` (excluded) of epoch ``epoch`` (1-based), trained at
    ``image_size`` (None: the data's own side); ``rungs``: the indices of the rungs reported
    after its last step."""

    epoch: int
    start: int
    stop: int
    image_size: int | None
    rungs: tuple[int, ...] = ()

    @property
    def steps(self) -> int:
        return self.stop - self.start


def rung_steps(rungs: Sequence[Rung], steps_per_epoch: int) -> list[int]:
    """Each rung's place as a count of steps from the start: at least one step in."""
    return [max(1, math.ceil(rung.position * steps_per_epoch)) for rung in rungs]


def schedule(
    epochs: int, steps_per_epoch: int, rungs: Sequence[Rung] = (), resize: ProgressiveResize | None = None
) -> list[Stretch]:
    """The stretches of a run of ``epochs`` epochs of ``steps_per_epoch`` steps.

    The steps up to a rung train at the rung's ``image_size``; the others, and those of a rung
    without one, at ``resize.size`` in the first ``resize.epochs`` epochs
    (``train.progressive_resize``), else at full size. A rung past the run's end is never reached.
    """
    at = rung_steps(rungs, steps_per_epoch)
    stretches = []
    for epoch in range(1, epochs + 1):
        begin = (epoch - 1) * steps_per_epoch
        cuts = sorted({0, steps_per_epoch, *(s - begin for s in at if 0 < s - begin < steps_per_epoch)})
        epoch_size = resize.size if resize is not None and epoch <= resize.epochs else None
        for start, stop in zip(cuts, cuts[1:], strict=False):
            upcoming = [k for k, s in enumerate(at) if s > begin + start]
            size = rungs[upcoming[0]].image_size if upcoming else None
            reported = tuple(k for k, s in enumerate(at) if s == begin + stop)
            stretches.append(Stretch(epoch, start, stop, size if size is not None else epoch_size, reported))
    return stretches


def full_epochs(stretches: Sequence[Stretch], steps_per_epoch: int, flops_at: Callable[[int | None], float]) -> float:
    """The cost of training ``stretches`` in full-epoch equivalents: the images each stretch
    sees times the FLOPs per image at its side, over an epoch's images at full size (the batch
    size cancels out).

    Args:
        stretches: What was trained (a prefix of :func:`schedule`).
        steps_per_epoch: Steps of one epoch.
        flops_at: FLOPs of one image at a side (None: full size).
    """
    spent = sum(s.steps * flops_at(s.image_size) for s in stretches)
    return spent / (steps_per_epoch * flops_at(None))


def flops_counter(model: ModelConfig, full_size: int) -> Callable[[int | None], float]:
    """FLOPs of one image through ``model`` at a side (None: ``full_size``): the exact count of
    the config, once per side."""

    @cache
    def flops_at(size: int | None) -> float:
        side = full_size if size is None else size
        return float(fast_count(model, side).flops)

    return flops_at


def rung_costs(
    stretches: Sequence[Stretch], steps_per_epoch: int, flops_at: Callable[[int | None], float]
) -> list[float]:
    """What a run has spent on reaching each rung it reaches, in full-epoch equivalents."""
    return [
        full_epochs(stretches[: index + 1], steps_per_epoch, flops_at)
        for index, stretch in enumerate(stretches)
        for _ in stretch.rungs
    ]


def halving_cost(rung_costs: Sequence[float], whole: float, reduction_factor: int) -> float:
    """What a trial costs on average under successive halving that lets 1 in ``reduction_factor``
    go on at each rung: every trial pays up to the first rung, a third (at 3) the stretch to the
    second, a ninth the next, and so on to ``whole``. All three in the same unit.

    The share is the asymptotic one: a study's first trials at a rung all go on, and an
    asynchronous pruner compares a trial only with those that reached the rung before it.
    """
    total, share, reached = 0.0, 1.0, 0.0
    for cost in (*rung_costs, whole):
        total += share * max(0.0, cost - reached)
        reached = max(reached, cost)
        share /= reduction_factor
    return total


def halving_rungs(min_resource: int, reduction_factor: int, epochs: int) -> list[Rung]:
    """Optuna's successive halving without explicit rungs: it compares trials after
    ``min_resource * reduction_factor**k`` epochs, those before the last epoch."""
    rungs, at = [], min_resource
    while at < epochs:
        rungs.append(Rung(epochs=at))
        at *= reduction_factor
    return rungs
