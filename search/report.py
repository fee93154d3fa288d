"""The HTML report of a study: one self-contained file (plotly.js inline, works offline)
with its figures and tables, and ``trials.csv`` beside it.

Figures are plotly graph objects built from the study's trials; the page embeds
plotly.js once, with the first figure, and every later figure reuses it.
"""

from __future__ import annotations

import html
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState

from search.config import UserError
from search.results import (
    LEADERBOARD,
    format_flops,
    metric_names,
    ranked_trials,
    status_counts,
    study_spec,
    trial_status,
)
from search.storage import mask_password, study_dir
from search.records import ERROR, REJECTED

COLORS = {"complete": "#1f77b4", "pruned": "#ff7f0e", "failed": "#d62728", "rejected": "#7f7f7f",
          "running": "#2ca02c", "waiting": "#bcbd22"}
MIN_TRIALS_FOR_IMPORTANCE = 4  # fewer complete trials say nothing about which parameter matters
TEMPLATE = "plotly_white"


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`write_report` wrote: the page, the CSV, and how many figures the page holds."""

    html: Path
    csv: Path
    figures: int


# --------------------------------------------------------------------------- figures


def _maximize(study: optuna.Study) -> bool:
    return study.directions[0] == optuna.study.StudyDirection.MAXIMIZE


def history_figure(study: optuna.Study) -> go.Figure:
    """The first objective of every complete trial by trial number, and the best so far."""
    metric = metric_names(study)[0]
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    best, running = [], None
    for trial in complete:
        value = trial.values[0]
        if running is None or (value > running if _maximize(study) else value < running):
            running = value
        best.append(running)
    fig = go.Figure([  # the line first, so that the markers are drawn over it
        go.Scatter(x=[t.number for t in complete], y=best, mode="lines", name="best so far",
                   line={"shape": "hv", "color": "#d62728"}),
        go.Scatter(x=[t.number for t in complete], y=[t.values[0] for t in complete], mode="markers",
                   name=metric, text=[_hover(t) for t in complete], hoverinfo="text+y",
                   marker={"size": 9, "color": COLORS["complete"]}),
    ])
    fig.update_layout(title="Optimization history", xaxis_title="trial", yaxis_title=metric)
    return fig


def importance_figure(study: optuna.Study) -> go.Figure | str:
    """Hyperparameter importances (PED-ANOVA: needs no scikit-learn), or why there are none."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
        return (f"Hyperparameter importances need at least {MIN_TRIALS_FOR_IMPORTANCE} complete trials; "
                f"this study has {len(complete)}.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PED-ANOVA warns on small studies; the result says it all
            importances = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(),
                target=lambda t: t.values[0],
            )
    except (RuntimeError, ValueError) as error:  # e.g. every trial has the same parameters
        return f"Hyperparameter importances could not be computed: {error}"
    if not importances or not any(importances.values()):
        return "Hyperparameter importances: no parameter made a measurable difference yet."
    names = list(importances)[::-1]  # most important on top
    fig = go.Figure(go.Bar(x=[importances[n] for n in names], y=names, orientation="h"))
    fig.update_layout(title=f"Hyperparameter importances for {metric_names(study)[0]} (PED-ANOVA)",
                      xaxis_title="importance", height=max(300, 40 + 28 * len(names)))
    return fig


def pareto_2d(points: list[tuple[float, float, Any]], maximize: bool) -> list[tuple[float, float, Any]]:
    """The (params, value) points no other point beats with fewer or equal parameters."""
    front, best = [], None
    for params, value, item in sorted(points, key=lambda p: (p[0], -p[1] if maximize else p[1])):
        if best is None or (value > best if maximize else value < best):
            front.append((params, value, item))
            best = value
    return front


def size_figure(study: optuna.Study, max_params: int | None) -> go.Figure:
    """The first objective against parameters: complete trials, pruned ones at their last
    report, the parameter budget as a vertical line, and the value/size Pareto front."""
    metric = metric_names(study)[0]
    trials = study.get_trials(deepcopy=False)
    fig = go.Figure()
    for status, symbol in (("complete", "circle"), ("pruned", "x-thin-open")):
        chosen = [t for t in trials if trial_status(t) == status and "params" in t.user_attrs]
        values = [t.values[0] if t.values else _last_report(t) for t in chosen]
        kept = [(t, v) for t, v in zip(chosen, values) if v is not None]
        fig.add_trace(go.Scatter(
            x=[t.user_attrs["params"] for t, _ in kept], y=[v for _, v in kept], mode="markers",
            name=status + (" (last report)" if status == "pruned" else ""),
            marker={"symbol": symbol, "color": COLORS[status], "size": 9, "line": {"width": 2}},
            text=[_hover(t) for t, _ in kept], hoverinfo="text+x+y",
        ))
    complete = [(t.user_attrs["params"], t.values[0], t) for t in trials
                if t.state == TrialState.COMPLETE and "params" in t.user_attrs]
    front = pareto_2d(complete, _maximize(study))
    fig.add_trace(go.Scatter(  # markers too: a one-trial front is a point, not a line
        x=[p for p, _, _ in front], y=[v for _, v, _ in front], mode="lines+markers", name="Pareto front",
        line={"shape": "hv", "color": "black", "dash": "dot"},
        marker={"size": 15, "symbol": "circle-open", "color": "black"}, hoverinfo="skip"))
    if max_params:
        fig.add_vline(x=max_params, line={"color": "red", "dash": "dash"},
                      annotation_text=f"budget {max_params:,} params", annotation_position="top left")
    fig.update_layout(title=f"{metric} vs parameters", xaxis_title="parameters", yaxis_title=metric)
    return fig


def learning_curves_figure(study: optuna.Study, *, compact: bool = False) -> go.Figure:
    """Every trial's intermediate values (its reported metric per epoch); pruned trials dashed
    and ended with an x. ``compact`` drops the template, for storing in the study."""
    metric = metric_names(study)[0]
    fig = go.Figure()
    shown: set[str] = set()
    for trial in study.get_trials(deepcopy=False):
        if not trial.intermediate_values:
            continue
        status = trial_status(trial)
        steps = sorted(trial.intermediate_values)
        pruned = status == "pruned"
        fig.add_trace(go.Scatter(
            x=steps, y=[trial.intermediate_values[s] for s in steps], name=status,
            legendgroup=status, showlegend=status not in shown, mode="lines+markers",
            line={"color": COLORS[status], "dash": "dash" if pruned else "solid", "width": 1.5},
            marker={"size": [4] * (len(steps) - 1) + [11 if pruned else 4],
                    "symbol": ["circle"] * (len(steps) - 1) + ["x" if pruned else "circle"]},
            hovertext=f"trial {trial.number} ({status})", hoverinfo="text+x+y", opacity=0.8,
        ))
        shown.add(status)
    fig.update_layout(title="Learning curves (pruned: dashed, x where stopped)", xaxis_title="epoch",
                      yaxis_title=metric)
    last = max((max(t.intermediate_values) for t in study.get_trials(deepcopy=False) if t.intermediate_values),
               default=0)
    if last <= 20:
        fig.update_xaxes(dtick=1)  # epochs are whole numbers: no 1.5 ticks
    if compact:
        fig.update_layout(template="none")  # the default template would add ~10 kB to every save
    return fig


def parallel_figure(study: optuna.Study) -> go.Figure:
    """Parallel coordinates of the complete trials' parameters and first objective (Optuna's)."""
    metric = metric_names(study)[0]
    return optuna.visualization.plot_parallel_coordinate(study, target=lambda t: t.values[0], target_name=metric)


def states_figure(counts: dict[str, int]) -> go.Figure:
    """Trials per status as bars."""
    names = [name for name in counts if counts[name] or name in ("complete", "pruned", "failed", "rejected")]
    fig = go.Figure(go.Bar(x=names, y=[counts[n] for n in names], text=[counts[n] for n in names],
                           marker_color=[COLORS[n] for n in names], textposition="auto"))
    fig.update_layout(title="Trials by status (rejected: over the budget, never trained)", yaxis_title="trials",
                      height=350)
    return fig


def _last_report(trial: FrozenTrial) -> float | None:
    return trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else None


def _hover(trial: FrozenTrial) -> str:
    params = trial.user_attrs.get("params")
    return f"trial {trial.number}" + (f", {params:,} params" if params is not None else "")


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
        why = attrs.get(REJECTED) or attrs.get(ERROR) or ""
        rows.append([t.number, trial_status(t), *values, attrs.get("params"), format_flops(attrs.get("flops")),
                     attrs.get("epochs_run"), attrs.get("train_time_s"), *[t.params.get(n) for n in names], why])
    return _table(header, rows)


def leaderboard_table(board: dict[str, Any]) -> str:
    """The ``retrain`` leaderboard stored on the study."""
    header = ["rank", "trial", f"search {board.get('metric', 'value')}", "test acc mean", "test acc std",
              "seeds", "params", "FLOPs", "train s / seed"]
    rows = [[r["rank"], r["trial"], r["search_value"], _percent(r["test_acc_mean"]), _percent(r["test_acc_std"]),
             " ".join(map(str, r["seeds"])), r["params"], format_flops(r["flops"]), r["train_time_s_mean"]]
            for r in board.get("rows", [])]
    epochs = f", {board['epochs']} epochs" if board.get("epochs") else ""
    return f"<p>Retrained on train+val, tested on the test set ({board.get('date', '')}{epochs}).</p>" + _table(header, rows)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


# --------------------------------------------------------------------------- the page


def write_report(study: optuna.Study, storage_url: str, out: str | Path | None = None) -> ReportFiles:
    """Write the study's HTML report and ``trials.csv`` beside it.

    Args:
        study: A study made by ``resnet-search run`` (others work without the budget line).
        storage_url: Its storage, shown masked in the page.
        out: The HTML file; default ``studies/<study>/report.html``.

    Returns:
        The files written and the number of figures on the page.

    Raises:
        UserError: the study has no complete trial; the file cannot be written.
    """
    ranked_trials(study, 1)  # raises the one-line error for a study without results
    try:
        max_params = study_spec(study).budget.max_params
    except UserError:
        max_params = None
    path = Path(out) if out is not None else study_dir(study.study_name) / "report.html"
    counts = status_counts(study.get_trials(deepcopy=False))

    sections: list[tuple[str, go.Figure | str]] = [
        ("Optimization history", history_figure(study)),
        ("Hyperparameter importances", importance_figure(study)),
        ("Result vs parameters, the budget and the Pareto front", size_figure(study, max_params)),
        ("Learning curves (pruned: dashed, x where stopped)", learning_curves_figure(study)),
        ("Parallel coordinates of the complete trials", parallel_figure(study)),
        ("Trials by status (rejected: over the budget, never trained)", states_figure(counts)),
    ]
    board = study.user_attrs.get(LEADERBOARD)
    if board:
        sections.append(("Leaderboard (retrained)", leaderboard_table(board)))
    sections.append(("All trials", trials_table(study)))

    parts, figures = [], 0
    for title, content in sections:
        if isinstance(content, go.Figure):
            # The section heading names the figure: a plot title would repeat it.
            content.update_layout(template=TEMPLATE, title=None, margin={"t": 30, "l": 60, "r": 30, "b": 50})
            body = content.to_html(full_html=False, include_plotlyjs=figures == 0,  # plotly.js once, inline
                                   config={"displaylogo": False, "responsive": True})
            figures += 1
        elif content.lstrip().startswith("<"):
            body = content
        else:
            body = f'<p class="message">{html.escape(content)}</p>'
        parts.append(f'<section><h2>{html.escape(title)}</h2>{body}</section>')

    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    page = PAGE.format(
        title=html.escape(f"resnet-search report: {study.study_name}"),
        name=html.escape(study.study_name),
        storage=html.escape(mask_password(storage_url)),
        summary=html.escape(summary),
        objectives=html.escape(", ".join(f"{m} ({d.name.lower()})" for m, d in zip(metric_names(study), study.directions))),
        budget=html.escape(f"{max_params:,} params" if max_params else "none"),
        sections="\n".join(parts),
    )
    csv_path = path.with_name("trials.csv")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page, encoding="utf-8")
        trials_frame(study).to_csv(csv_path, index=False)
    except OSError as error:
        raise UserError(f"{path}: cannot write the report ({error.strerror or error})") from None
    return ReportFiles(path, csv_path, figures)


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
