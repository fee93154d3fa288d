"""``resnet-search evaluate``: a model folder's accuracy, balanced accuracy and macro-F1, each
class's precision, recall and F1, and the confusion matrix on a split of its data (or of other
data), computed as training computed it, so that the test accuracy ``retrain`` recorded is
reproduced to the image on the same data and device."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from search.config import UserError
from search.config.files import check_output_file, check_output_folder, write_text
from search.data import TensorSplit
from search.data.fingerprint import load_recorded
from search.outputs.model import load_model
from search.train.class_metrics import class_scores
from search.train.epoch import EvalSetup, Evaluation, evaluate

SPLITS = ("test", "val", "train")


@dataclass(frozen=True)
class ModelEvaluation:
    """What :func:`evaluate_model` measured; ``confusion`` has true classes as rows.

    ``per_class`` is each class's recall (its accuracy); ``scores`` each class's ``precision``,
    ``recall``, ``f1`` (None where undefined: no image predicted, none true) and ``support``.
    ``balanced_accuracy`` is the mean recall, ``macro_f1`` the mean F1 (scikit-learn's
    definitions: :mod:`~search.train.class_metrics`).
    """

    model: str
    split: str
    data: str
    images: int
    correct: int
    accuracy: float
    loss: float
    classes: tuple[str, ...]
    per_class: dict[str, float | None]
    confusion: list[list[int]]
    balanced_accuracy: float
    macro_f1: float
    scores: dict[str, dict[str, float | int | None]]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "classes": list(self.classes)}

    def table(self) -> str:
        """The printed form: accuracy, then per class, then the confusion matrix."""
        width = max(len(c) for c in self.classes)
        lines = [
            f"model {self.model}: {self.split} split of {self.data} ({self.images:,} images)",
            f"accuracy {self.accuracy:.2%} ({self.correct:,}/{self.images:,}), loss {self.loss:.4f}",
            f"balanced accuracy {self.balanced_accuracy:.2%}, macro-F1 {self.macro_f1:.4f}",
            "per class:",
            " " * (width + 4) + " ".join(f"{h:>9}" for h in ("precision", "recall", "F1")) + "  support",
        ]
        for i, name in enumerate(self.classes):
            score, row = self.scores[name], self.confusion[i]
            shown = [_percent(score["precision"]), _percent(score["recall"]), _percent(score["f1"])]
            lines.append(f"  {name:<{width}}  " + " ".join(f"{s:>9}" for s in shown) + f"  {row[i]:,}/{sum(row):,}")
        cell = max(width, *(len(f"{n:,}") for row in self.confusion for n in row))
        lines.append("confusion matrix (rows: true class, columns: predicted):")
        lines.append(" " * (width + 2) + " ".join(f"{c[:cell]:>{cell}}" for c in self.classes))
        for name, row in zip(self.classes, self.confusion):
            lines.append(f"  {name:<{width}}" + " ".join(f"{n:>{cell},}" for n in row))
        return "\n".join(lines)


def evaluate_model(
    path: str | Path,
    *,
    data_dir: str | Path | None = None,
    split: str = "test",
    device: str | None = None,
    download: bool = False,
    out_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> tuple[ModelEvaluation, Path]:
    """Evaluate a model folder on a split of its recorded data, or of ``data_dir``.

    The split is made by the data section of the folder's ``config.yaml`` (the same
    validation fraction, subsets and seed as in training); batches, memory format,
    precision and test-time views are the training loop's.

    Args:
        path: The model folder, or an ``.onnx`` file ``export-model`` wrote.
        data_dir: Other data (beats the data recorded in ``model.json``).
        split: ``test``, ``val`` or ``train``.
        device: Where to run; default CUDA when available.
        download: Whether a known dataset found nowhere may be downloaded.
        out_dir: The JSON file's folder, default the model's; its name: :func:`_default_out`.
        log: Receives the line on data that differs from the record.

    Returns:
        The evaluation, and the JSON file written.

    Raises:
        UserError: ``out_dir`` cannot be written (checked first); not a model folder; recorded
            data that moved or changed (without ``data_dir``); data of other classes; an
            empty split; an unknown split.
    """
    if split not in SPLITS:
        raise UserError(f"--split {split!r}: allowed: {', '.join(SPLITS)}")
    given = check_output_folder(out_dir) if out_dir is not None else None
    model = load_model(path, device)
    folder = model.folder
    target = check_output_file(_default_out(folder.path, split, given), flag="")
    owner = f"model {folder.path}"
    data, record = load_recorded(folder.spec.data, folder.data, data_dir, owner=owner, download=download, log=log)
    if data.classes != model.classes:
        raise UserError(
            f"{record.location} has classes {', '.join(data.classes)}; {owner} classifies "
            f"{', '.join(model.classes)} (names and order must match)"
        )
    chosen: TensorSplit = {"test": data.test, "val": data.val, "train": data.train}[split]
    if len(chosen) == 0:
        raise UserError(f"{record.location}: the {split} split is empty; pick another with --split")
    cfg = model.trial.train
    device_split = TensorSplit(chosen.images.to(model.device), chosen.labels.to(model.device))
    setup = EvalSetup(len(model.classes), cfg.eval_batch_size, cfg.tta)
    ev = evaluate(model.module, device_split, model.format, setup, confusion=True)
    if not math.isfinite(ev.loss):
        raise UserError(
            f"{owner}: its outputs on the {split} split are not finite (loss {ev.loss}): the weights or "
            "model.json's normalisation do not make a working model; no accuracy is reported"
        )
    result = _result(str(folder.path), split, record.location, ev, model.classes)
    write_text(target, json.dumps(_finite(result.as_dict()), indent=2) + "\n")
    return result, target


def _result(model: str, split: str, data: str, ev: Evaluation, classes: tuple[str, ...]) -> ModelEvaluation:
    """The :class:`ModelEvaluation` of the evaluation ``ev`` (its confusion matrix read back)."""
    matrix = ev.confusion or []
    return ModelEvaluation(
        model=model,
        split=split,
        data=data,
        images=ev.n,
        correct=sum(matrix[i][i] for i in range(len(matrix))),
        accuracy=ev.acc,
        loss=ev.loss,
        classes=classes,
        per_class={c: (matrix[i][i] / sum(matrix[i]) if sum(matrix[i]) else None) for i, c in enumerate(classes)},
        confusion=matrix,
        balanced_accuracy=ev.balanced_acc,
        macro_f1=ev.macro_f1,
        scores=per_class_scores(matrix, classes),
    )


def per_class_scores(matrix: list[list[int]], classes: tuple[str, ...]) -> dict[str, dict[str, float | int | None]]:
    """Each class's precision, recall, F1 and support from the confusion ``matrix``; a score
    whose denominator is 0 is None (scikit-learn counts it 0 in the means)."""
    scores = class_scores(torch.tensor(matrix))
    predicted = [sum(row[i] for row in matrix) for i in range(len(classes))]
    table: dict[str, dict[str, float | int | None]] = {}
    for i, name in enumerate(classes):
        support = sum(matrix[i])
        table[name] = {
            "precision": float(scores.precision[i]) if predicted[i] else None,
            "recall": float(scores.recall[i]) if support else None,
            "f1": float(scores.f1[i]) if support + predicted[i] else None,
            "support": support,
        }
    return table


def _percent(value: float | int | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _default_out(model: Path, split: str, folder: Path | None) -> Path:
    """``evaluation_<split>.json`` in ``folder`` (default the model folder);
    ``<name>.evaluation_<split>.json`` for an ONNX file (default beside it)."""
    if model.is_file():
        return (folder or model.parent) / f"{model.stem}.evaluation_{split}.json"
    return (folder or model) / f"evaluation_{split}.json"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
