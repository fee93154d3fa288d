"""A finished run's files: ``metrics.json``, ``history.csv`` and ``curves.html``, each written
whole or not at all (:func:`search.config.files.write_text`)."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from search.config.files import write_text
from search.train.result import EpochMetrics, TrainResult


def _finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def write_outputs(result: TrainResult, out_dir: Path, *, config_dict: dict[str, Any], params: int) -> None:
    """Write a finished run to ``out_dir``: ``metrics.json``, ``history.csv``, ``curves.html``.

    ``metrics.json`` holds ``val_acc`` (final epoch), ``best_val_acc``, ``val_loss``,
    ``balanced_acc`` and ``macro_f1`` (final epoch, validation: the objectives' values),
    ``test_acc``, ``test_loss``, ``params``, ``train_time_s``, ``compile_time_s``,
    ``images_per_s``, ``epochs`` (run), ``status``, ``reason``, ``config``, ``classes``,
    ``per_class_test_acc`` and ``confusion_matrix`` (rows true, columns predicted);
    non-finite numbers become null. ``curves.html`` embeds plotly.js, so it opens offline.

    Args:
        result: What :func:`search.train.train` returned.
        out_dir: The folder (created if missing).
        config_dict: The trial's config as plain data, stored under ``config``.
        params: The model's parameter count.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    last = result.history[-1] if result.history else None
    metrics = {
        "val_acc": result.final_val_acc,
        "best_val_acc": result.best_val_acc,
        "val_loss": result.final_val_loss,
        "balanced_acc": last.balanced_acc if last else None,
        "macro_f1": last.macro_f1 if last else None,
        "test_acc": result.test_acc,
        "test_loss": result.test_loss,
        "params": params,
        "train_time_s": result.train_time_s,
        "compile_time_s": result.compile_time_s,
        "images_per_s": result.images_per_s,
        "epochs": result.epochs_run,
        "status": result.status,
        "reason": result.reason,
        "config": config_dict,
        "classes": list(result.classes),
        "per_class_test_acc": result.per_class_test_acc,
        "confusion_matrix": result.confusion_matrix,
    }
    write_text(out_dir / "metrics.json", json.dumps(_finite_or_none(metrics), indent=2) + "\n")

    buf = io.StringIO()
    names = [f.name for f in fields(EpochMetrics)]
    writer = csv.DictWriter(buf, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    writer.writerows(asdict(m) for m in result.history)
    write_text(out_dir / "history.csv", buf.getvalue())

    write_text(out_dir / "curves.html", _curves_html(result.history))


def _curves_html(history: list[EpochMetrics]) -> str:
    """Loss and accuracy per epoch, train and val, side by side, as a standalone page."""
    import plotly.graph_objects as go  # plotly is slow to import; only outputs need it
    from plotly.subplots import make_subplots

    epochs = [m.epoch for m in history]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "accuracy"))
    for col, key in ((1, "loss"), (2, "acc")):
        for part, dash in (("train", "solid"), ("val", "dot")):
            fig.add_trace(
                go.Scatter(
                    x=epochs,
                    y=[getattr(m, f"{part}_{key}") for m in history],
                    mode="lines+markers",
                    name=f"{part} {key}",
                    line={"dash": dash},
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text="epoch", row=1, col=col)
    fig.update_layout(title="training curves", template="plotly_white")
    return fig.to_html(include_plotlyjs=True, full_html=True)
