"""Training on imbalanced classes: loss weights (``train.class_weights``) and the order of the
training images in an epoch (``train.sampler``).

Both are computed on the device from the training split's labels: the weights once per run,
the order once per epoch from the run's seeded generator, so a run repeats (and resumes) as
one with the uniform order does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from search.config import TrainConfig


def class_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """How many of ``labels`` fall in each of ``num_classes`` classes (int64, on the labels' device)."""
    return torch.bincount(labels, minlength=num_classes)


def balanced_class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """scikit-learn's ``balanced`` weights: ``n_samples / (n_classes * count_c)``, float32.

    ``n_classes`` counts the classes present in ``labels`` (as scikit-learn's
    ``compute_class_weight`` does); an absent class gets weight 0, which no label ever reads.
    """
    counts = class_counts(labels, num_classes).float()
    present = (counts > 0).sum()
    weights = labels.numel() / (present * counts)
    return torch.where(counts > 0, weights, torch.zeros_like(weights))


def loss_weights(cfg: TrainConfig, labels: torch.Tensor, num_classes: int) -> torch.Tensor | None:
    """The cross-entropy's class weights that ``cfg.class_weights`` asks for; None: unweighted."""
    return balanced_class_weights(labels, num_classes) if cfg.class_weights == "balanced" else None


@dataclass(frozen=True)
class BatchOrder:
    """The order an epoch visits the training images in: a permutation (``uniform``), or
    (``balanced``) as many draws with replacement, each image drawn with probability inversely
    proportional to its class's frequency, so that every class present is equally likely in
    every batch. The epoch keeps its number of batches either way.

    ``by_class`` is the training indices sorted by class, ``starts`` and ``counts`` each
    class's slice of it, ``present`` the classes with images (all None for ``uniform``).
    """

    size: int
    by_class: torch.Tensor | None = None
    starts: torch.Tensor | None = None
    counts: torch.Tensor | None = None
    present: torch.Tensor | None = None

    @classmethod
    def for_split(cls, sampler: str, labels: torch.Tensor, num_classes: int) -> BatchOrder:
        """The order ``sampler`` (``uniform`` or ``balanced``) makes for the training ``labels``."""
        if sampler == "uniform":
            return cls(labels.numel())
        counts = class_counts(labels, num_classes)
        by_class = torch.argsort(labels, stable=True)
        present = torch.nonzero(counts).flatten()  # once: nonzero waits for the device
        return cls(labels.numel(), by_class, torch.cumsum(counts, 0) - counts, counts, present)

    def draw(self, generator: torch.Generator) -> torch.Tensor:
        """``size`` training indices for one epoch, drawn from ``generator`` (on the device)."""
        device = generator.device
        if self.by_class is None or self.starts is None or self.counts is None or self.present is None:
            return torch.randperm(self.size, device=device, generator=generator)
        present = self.present
        # A class uniformly, then an image of it uniformly: P(image) = 1 / (classes * count_c).
        pick = present[torch.randint(len(present), (self.size,), device=device, generator=generator)]
        within = (torch.rand(self.size, device=device, generator=generator) * self.counts[pick]).long()
        within = torch.minimum(within, self.counts[pick] - 1)  # rand is below 1, its product may round up
        return self.by_class[self.starts[pick] + within]
