"""Per-class scores from a confusion matrix (rows: true class, columns: predicted), in torch, so
that the validation pass computes them on the device and reads them back with its other numbers.

Accuracy rewards predicting the majority class; balanced accuracy (the mean recall over the
classes present) and macro-F1 (the mean F1 over the classes present or predicted) do not.
Both follow scikit-learn's definitions (``balanced_accuracy_score`` and
``f1_score(average='macro')``, whose zero-division value is 0), which the tests compare against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ClassScores:
    """Each class's precision, recall and F1 (0 where undefined, as scikit-learn's default),
    and its support (true images): float tensors of one value per class."""

    precision: torch.Tensor
    recall: torch.Tensor
    f1: torch.Tensor
    support: torch.Tensor


def class_scores(confusion: torch.Tensor) -> ClassScores:
    """Precision, recall, F1 and support of every class of ``confusion`` (``C x C``)."""
    conf = confusion.double()
    tp = conf.diagonal()
    support = conf.sum(1)
    predicted = conf.sum(0)
    return ClassScores(
        precision=_ratio(tp, predicted),
        recall=_ratio(tp, support),
        f1=_ratio(2 * tp, support + predicted),  # 2tp / (2tp + fp + fn)
        support=support,
    )


def balanced_accuracy(confusion: torch.Tensor) -> torch.Tensor:
    """The mean recall over the classes with true images (a 0-d tensor; NaN when there are none)."""
    scores = class_scores(confusion)
    present = scores.support > 0
    return (scores.recall * present).sum() / present.sum()


def macro_f1(confusion: torch.Tensor) -> torch.Tensor:
    """The mean F1 over the classes that are true or predicted at least once (NaN when none are)."""
    scores = class_scores(confusion)
    seen = (scores.support + confusion.double().sum(0)) > 0
    return (scores.f1 * seen).sum() / seen.sum()


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator``, 0 where the denominator is 0."""
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1), torch.zeros_like(numerator))
