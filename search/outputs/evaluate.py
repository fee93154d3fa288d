"""``resnet-search evaluate``: a model folder's accuracy, per-class accuracy and confusion matrix
on a split of its data (or of other data), computed as training computed it, so that the
test accuracy ``retrain`` recorded is reproduced to the image on the same data and device."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from search.config import UserError
from search.config.files import check_output_file, check_output_folder, write_text
from search.data import TensorSplit
from search.data.fingerprint import load_recorded
from search.outputs.model import load_model
from search.train.epoch import evaluate

SPLITS = ("test", "val", "train")


@dataclass(frozen=True)
class ModelEvaluation:
    """What :func:`evaluate_model` measured; ``confusion`` has true classes as rows."""

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

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "classes": list(self.classes)}

    def table(self) -> str:
        """The printed form: accuracy, then per class, then the confusion matrix."""
        width = max(len(c) for c in self.classes)
        lines = [
            f"model {self.model}: {self.split} split of {self.data} ({self.images:,} images)",
            f"accuracy {self.accuracy:.2%} ({self.correct:,}/{self.images:,}), loss {self.loss:.4f}",
            "per class:",
        ]
        for i, name in enumerate(self.classes):
            acc, row = self.per_class[name], self.confusion[i]
            shown = "-" if acc is None else f"{acc:.2%}"
            lines.append(f"  {name:<{width}}  {shown:>7} ({row[i]:,}/{sum(row):,})")
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
    ev = evaluate(
        model.module,
        device_split,
        model.format,
        num_classes=len(model.classes),
        batch_size=cfg.eval_batch_size,
        confusion=True,
        tta=cfg.tta,
    )
    if not math.isfinite(ev.loss):
        raise UserError(
            f"{owner}: its outputs on the {split} split are not finite (loss {ev.loss}): the weights or "
            "model.json's normalisation do not make a working model; no accuracy is reported"
        )
    matrix = ev.confusion or []
    result = ModelEvaluation(
        model=str(folder.path),
        split=split,
        data=record.location,
        images=ev.n,
        correct=sum(matrix[i][i] for i in range(len(matrix))),
        accuracy=ev.acc,
        loss=ev.loss,
        classes=model.classes,
        per_class={c: (matrix[i][i] / sum(matrix[i]) if sum(matrix[i]) else None) for i, c in enumerate(model.classes)},
        confusion=matrix,
    )
    write_text(target, json.dumps(_finite(result.as_dict()), indent=2) + "\n")
    return result, target


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
