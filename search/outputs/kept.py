"""What a study holds besides its trials, for the report and the ``export`` command: the data it
searched (as ``run`` recorded it) and the model folders with its best trials' weights."""

from __future__ import annotations

import html

import optuna

from search.study.keys import metric_names
from search.study.records import kept_models, recorded_data


def kept_lines(study: optuna.Study) -> list[str]:
    """One line per kept model folder: the trial, its value, the folder (``run --keep``)."""
    trials = study.get_trials(deepcopy=False)
    metric = metric_names(study)[0]
    lines = []
    for number, folder in sorted(kept_models(study).items()):
        values = trials[number].values if number < len(trials) else None
        value = f"{metric} {values[0]:.4f}, " if values else ""
        lines.append(f"trial {number} ({value}weights): {folder}")
    return lines


def data_and_models_html(study: optuna.Study) -> str:
    """The report's paragraph on the recorded data and the kept model folders."""
    record = recorded_data(study)
    parts = []
    if record is not None:
        train, val, test = record.counts
        parts.append(
            f"<p>Data: {html.escape(record.location)}: {len(record.classes)} classes "
            f"({html.escape(', '.join(record.classes[:10]))}{', ...' if len(record.classes) > 10 else ''}), "
            f"{train:,} train / {val:,} val / {test:,} test images of {record.image_size}px, "
            f"sha256 {record.sha256[:16]}...</p>"
        )
    lines = kept_lines(study)
    if lines:
        items = "".join(f"<li><code>{html.escape(line)}</code></li>" for line in lines)
        parts.append(
            "<p>Trained weights kept (model folders: <code>resnet-search predict FOLDER image.jpg</code>, "
            f"<code>evaluate FOLDER</code>, <code>export-model FOLDER</code>):</p><ul>{items}</ul>"
        )
    return "".join(parts)
