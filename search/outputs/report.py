"""The HTML report of a study: one page that leads with the winner (:mod:`~search.outputs.winner`),
then its figures and tables, with ``trials.csv`` and ``plotly.min.js`` beside it.

Figures are plotly graph objects built from the study's trials. plotly.js (4.6 MB) is written
once beside the page and loaded once by it, so a report of 50 trials stays well under 1 MB
and works offline: copy the folder, not the page alone.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go

from search.config import UserError
from search.config.files import check_output_file, check_output_folder, write_text
from search.config.secrets import mask_secrets
from search.outputs.figures import (
    history_figure,
    importance_figure,
    latency_sections,
    learning_curves_figure,
    parallel_figure,
    size_figure,
    states_figure,
)
from search.outputs.kept import data_and_models_html
from search.outputs.winner import winner_section
from search.study.keys import (
    EPOCHS_RUN,
    ERROR,
    FLOPS,
    INTERRUPTED,
    LEADERBOARD,
    PARAMS,
    REJECTED,
    TRAIN_TIME_S,
    metric_names,
    status_counts,
    trial_status,
)
from search.study.notes import format_flops
from search.study.storage import study_dir
from search.study.trials import ranked_trials, study_spec

TEMPLATE = "plotly_white"
REPORT_FILE = "report.html"
PLOTLY_JS = "plotly.min.js"  # beside the page; plotly's include_plotlyjs="directory" loads it by this name


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`write_report` wrote: the page, the CSV, and how many figures the page holds."""

    html: Path
    csv: Path
    figures: int


# --------------------------------------------------------------------------- tables


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def trials_table(study: optuna.Study) -> str:
    """Every trial: status, values, size, epochs, time, parameters, and why it stopped."""
    trials = study.get_trials(deepcopy=False)
    names = sorted({name for t in trials for name in t.params})
    header = ["trial", "status", *metric_names(study), "params", "FLOPs", "epochs", "train s", *names, "note"]
    rows = []
    for t in trials:
        values = list(t.values) if t.values else [None] * len(study.directions)
        attrs = t.user_attrs
        why = attrs.get(REJECTED) or attrs.get(ERROR) or attrs.get(INTERRUPTED) or ""
        rows.append(
            [
                t.number,
                trial_status(t),
                *values,
                attrs.get(PARAMS),
                format_flops(attrs.get(FLOPS)),
                attrs.get(EPOCHS_RUN),
                attrs.get(TRAIN_TIME_S),
                *[t.params.get(n) for n in names],
                why,
            ]
        )
    return _table(header, rows)


def leaderboard_table(board: dict[str, Any]) -> str:
    """The ``retrain`` leaderboard stored on the study."""
    header = [
        "rank",
        "trial",
        f"search {board.get('metric', 'value')}",
        "test acc mean",
        "test acc std",
        "seeds",
        "params",
        "FLOPs",
        "train s / seed",
    ]
    rows = [
        [
            r["rank"],
            r["trial"],
            r["search_value"],
            _percent(r["test_acc_mean"]),
            _percent(r["test_acc_std"]),
            " ".join(map(str, r["seeds"])),
            r["params"],
            format_flops(r["flops"]),
            r["train_time_s_mean"],
        ]
        for r in board.get("rows", [])
    ]
    epochs = f", {board['epochs']} epochs" if board.get("epochs") else ""
    return f"<p>Retrained on train+val, tested on the test set ({board.get('date', '')}{epochs}).</p>" + _table(
        header, rows
    )


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


# --------------------------------------------------------------------------- the page


def write_report(study: optuna.Study, storage_url: str, out_dir: str | Path | None = None) -> ReportFiles:
    """Write the study's HTML report, ``report.html``, with ``plotly.min.js`` and ``trials.csv`` beside it.

    Args:
        study: A study made by ``resnet-search run`` (others work without the budget line).
        storage_url: Its storage, shown masked in the page.
        out_dir: The folder; default ``studies/<study>``.

    Returns:
        The files written and the number of figures on the page.

    Raises:
        UserError: ``out_dir`` cannot be written (checked first); the study has no complete
            trial; a write failed (nothing half-written is left).
    """
    folder = check_output_folder(out_dir) if out_dir is not None else study_dir(study.study_name)
    path = check_output_file(folder / REPORT_FILE, flag="")
    ranked_trials(study, 1)  # raises the one-line error for a study without results
    try:
        spec = study_spec(study)
    except UserError:
        spec = None
    max_params = spec.budget.max_params if spec is not None else None
    counts = status_counts(study.get_trials(deepcopy=False))

    board = study.user_attrs.get(LEADERBOARD)
    best: list[go.Figure | str] = winner_section(study, spec, storage_url)
    if board:
        best += ["<h3>Leaderboard (retrained)</h3>", leaderboard_table(board)]
    kept = data_and_models_html(study)
    if kept:
        best += ["<h3>Data and trained models</h3>", kept]
    sections: list[tuple[str, go.Figure | str | list[go.Figure | str]]] = [
        ("The best trial", best),
        ("Optimization history", history_figure(study)),
        (f"Hyperparameter importances (from {counts['complete']} complete trials)", importance_figure(study)),
        ("Result vs parameters, the budget and the Pareto front", size_figure(study, max_params)),
        *latency_sections(study, spec.budget.max_latency_ms if spec is not None else None),
        ("Learning curves (pruned: dashed, x where stopped)", learning_curves_figure(study)),
        ("Parallel coordinates of the complete trials", parallel_figure(study)),
        ("Trials by status (rejected: over the budget, never trained)", states_figure(counts)),
    ]
    sections.append(("All trials", trials_table(study)))

    parts, figures = [], 0
    for title, content in sections:
        bodies = []
        for item in content if isinstance(content, list) else [content]:
            bodies.append(_body(item, first_figure=figures == 0))
            figures += isinstance(item, go.Figure)
        parts.append(f"<section><h2>{html.escape(title)}</h2>{''.join(bodies)}</section>")

    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    page = PAGE.format(
        title=html.escape(f"resnet-search report: {study.study_name}"),
        name=html.escape(study.study_name),
        storage=html.escape(mask_secrets(storage_url)),
        summary=html.escape(summary),
        objectives=html.escape(
            ", ".join(f"{m} ({d.name.lower()})" for m, d in zip(metric_names(study), study.directions))
        ),
        budget=html.escape(f"{max_params:,} params" if max_params else "none"),
        sections="\n".join(parts),
    )
    csv_path = path.with_name("trials.csv")
    _write_plotly_js(path.with_name(PLOTLY_JS))
    write_text(path, page)
    write_text(csv_path, trials_frame(study).to_csv(index=False))
    return ReportFiles(path, csv_path, figures)


def _body(item: go.Figure | str, first_figure: bool) -> str:
    """A section's part as HTML: a figure (the first one loads plotly.js), HTML, or a sentence."""
    if isinstance(item, go.Figure):
        # The section heading names the figure: a plot title would repeat it.
        item.update_layout(template=TEMPLATE, title=None, margin={"t": 30, "l": 60, "r": 30, "b": 50})
        return item.to_html(
            full_html=False,
            include_plotlyjs="directory" if first_figure else False,  # <script src="plotly.min.js">, once
            config={"displaylogo": False, "responsive": True},
        )
    if item.lstrip().startswith("<"):
        return item
    return f'<p class="message">{html.escape(item)}</p>'


def _write_plotly_js(path: Path) -> None:
    """plotly.js beside the page, written again only when plotly's own copy differs."""
    from plotly.offline import get_plotlyjs

    script = get_plotlyjs()
    if not path.is_file() or path.stat().st_size != len(script.encode("utf-8")):
        write_text(path, script)


def trials_frame(study: optuna.Study) -> Any:
    """Optuna's trials data frame (user attributes included) with our ``status`` column."""
    frame = study.trials_dataframe(multi_index=False)
    frame.insert(1, "status", [trial_status(t) for t in study.get_trials(deepcopy=False)])
    return frame


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; padding: 0 1em; color: #222; }}
section {{ margin: 2em 0; }}
h2 {{ border-bottom: 1px solid #ddd; padding-bottom: .2em; }}
dl {{ display: grid; grid-template-columns: max-content auto; gap: .2em 1em; }}
dt {{ font-weight: 600; }}
.scroll {{ overflow-x: auto; }}
table {{ border-collapse: collapse; font-size: 13px; }}
th, td {{ border: 1px solid #ddd; padding: 3px 8px; text-align: right; white-space: nowrap; }}
th {{ background: #f4f4f4; position: sticky; top: 0; }}
.message {{ color: #555; font-style: italic; }}
</style>
</head>
<body>
<h1>Study {name}</h1>
<dl>
<dt>storage</dt><dd>{storage}</dd>
<dt>objectives</dt><dd>{objectives}</dd>
<dt>budget</dt><dd>{budget}</dd>
<dt>trials</dt><dd>{summary}</dd>
</dl>
{sections}
</body>
</html>
"""
