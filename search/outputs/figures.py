"""The figures of a study, as plotly graph objects built from its trials: the optimization
history, importances, value against size, learning curves, parallel coordinates, states."""

from __future__ import annotations

import warnings
from typing import Any

import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState

from search.study.keys import LATENCY_MS, PARAMS, metric_names, trial_status

COLORS = {
    "complete": "#1f77b4",
    "pruned": "#ff7f0e",
    "failed": "#d62728",
    "interrupted": "#9467bd",  # stopped by the run (budget, Ctrl-C), trained again: not a failure's red
    "rejected": "#7f7f7f",
    "running": "#2ca02c",
    "waiting": "#bcbd22",
}
MIN_TRIALS_FOR_IMPORTANCE = 20  # below this, importances are noise: one lucky trial moves them


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
    fig = go.Figure(
        [  # the line first, so that the markers are drawn over it
            go.Scatter(
                x=[t.number for t in complete],
                y=best,
                mode="lines",
                name="best so far",
                line={"shape": "hv", "color": "#d62728"},
            ),
            go.Scatter(
                x=[t.number for t in complete],
                y=[t.values[0] for t in complete],
                mode="markers",
                name=metric,
                text=[_hover(t) for t in complete],
                hoverinfo="text+y",
                marker={"size": 9, "color": COLORS["complete"]},
            ),
        ]
    )
    fig.update_layout(title="Optimization history", xaxis_title="trial", yaxis_title=metric)
    return fig


def importance_figure(study: optuna.Study) -> go.Figure | str:
    """Hyperparameter importances (PED-ANOVA: needs no scikit-learn), or why there are none."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
        return (
            f"Not shown: hyperparameter importances from {len(complete)} complete trial(s) would be noise "
            f"(a single lucky trial decides them); they need at least {MIN_TRIALS_FOR_IMPORTANCE}."
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PED-ANOVA warns on small studies; the result says it all
            importances = optuna.importance.get_param_importances(
                study,
                evaluator=optuna.importance.PedAnovaImportanceEvaluator(),
                target=lambda t: t.values[0],
            )
    except (RuntimeError, ValueError) as error:  # e.g. every trial has the same parameters
        return f"Hyperparameter importances could not be computed: {error}"
    if not importances or not any(importances.values()):
        return "Hyperparameter importances: no parameter made a measurable difference yet."
    names = list(importances)[::-1]  # most important on top
    fig = go.Figure(go.Bar(x=[importances[n] for n in names], y=names, orientation="h"))
    fig.update_layout(
        title=f"Hyperparameter importances for {metric_names(study)[0]} (PED-ANOVA, {len(complete)} complete trials)",
        xaxis_title="importance",
        height=max(300, 40 + 28 * len(names)),
    )
    return fig


def pareto_2d(points: list[tuple[float, float, Any]], maximize: bool) -> list[tuple[float, float, Any]]:
    """The (cost, value) points no other point beats at an equal or lower cost (parameters, latency)."""
    front, best = [], None
    for params, value, item in sorted(points, key=lambda p: (p[0], -p[1] if maximize else p[1])):
        if best is None or (value > best if maximize else value < best):
            front.append((params, value, item))
            best = value
    return front


def size_figure(study: optuna.Study, max_params: int | None) -> go.Figure:
    """The first objective against parameters: complete trials, pruned ones at their last
    report, the parameter budget as a vertical line, and the value/size Pareto front."""
    return _cost_figure(study, PARAMS, "parameters", max_params, f"budget {max_params:,} params" if max_params else "")


def latency_sections(study: optuna.Study, max_latency_ms: float | None) -> list[tuple[str, go.Figure]]:
    """The first objective against measured latency, as :func:`size_figure` has it against
    parameters (with the latency limit and the value/latency Pareto front); none for a study
    that measured no latency."""
    if not any(LATENCY_MS in t.user_attrs for t in study.get_trials(deepcopy=False)):
        return []
    label = f"budget {max_latency_ms:g} ms" if max_latency_ms else ""
    figure = _cost_figure(study, LATENCY_MS, "latency (ms, measured before training)", max_latency_ms, label)
    return [("Result vs latency, the budget and the Pareto front", figure)]


def _cost_figure(study: optuna.Study, cost: str, cost_title: str, limit: float | None, limit_label: str) -> go.Figure:
    """The first objective against a cost every trial records (``cost``, a user attribute)."""
    metric = metric_names(study)[0]
    trials = study.get_trials(deepcopy=False)
    fig = go.Figure()
    for status, symbol in (("complete", "circle"), ("pruned", "x-thin-open")):
        chosen = [t for t in trials if trial_status(t) == status and cost in t.user_attrs]
        values = [t.values[0] if t.values else _last_report(t) for t in chosen]
        kept = [(t, v) for t, v in zip(chosen, values) if v is not None]
        fig.add_trace(
            go.Scatter(
                x=[t.user_attrs[cost] for t, _ in kept],
                y=[v for _, v in kept],
                mode="markers",
                name=status + (" (last report)" if status == "pruned" else ""),
                marker={"symbol": symbol, "color": COLORS[status], "size": 9, "line": {"width": 2}},
                text=[_hover(t) for t, _ in kept],
                hoverinfo="text+x+y",
            )
        )
    complete = [
        (t.user_attrs[cost], t.values[0], t) for t in trials if t.state == TrialState.COMPLETE and cost in t.user_attrs
    ]
    front = pareto_2d(complete, _maximize(study))
    fig.add_trace(
        go.Scatter(  # markers too: a one-trial front is a point, not a line
            x=[p for p, _, _ in front],
            y=[v for _, v, _ in front],
            mode="lines+markers",
            name="Pareto front",
            line={"shape": "hv", "color": "black", "dash": "dot"},
            marker={"size": 15, "symbol": "circle-open", "color": "black"},
            hoverinfo="skip",
        )
    )
    if limit:
        fig.add_vline(
            x=limit, line={"color": "red", "dash": "dash"}, annotation_text=limit_label, annotation_position="top left"
        )
    fig.update_layout(title=f"{metric} vs {cost_title}", xaxis_title=cost_title, yaxis_title=metric)
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
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=[trial.intermediate_values[s] for s in steps],
                name=status,
                legendgroup=status,
                showlegend=status not in shown,
                mode="lines+markers",
                line={"color": COLORS[status], "dash": "dash" if pruned else "solid", "width": 1.5},
                marker={
                    "size": [4] * (len(steps) - 1) + [11 if pruned else 4],
                    "symbol": ["circle"] * (len(steps) - 1) + ["x" if pruned else "circle"],
                },
                hovertext=f"trial {trial.number} ({status})",
                hoverinfo="text+x+y",
                opacity=0.8,
            )
        )
        shown.add(status)
    fig.update_layout(
        title="Learning curves (pruned: dashed, x where stopped)", xaxis_title="epoch", yaxis_title=metric
    )
    last = max(
        (max(t.intermediate_values) for t in study.get_trials(deepcopy=False) if t.intermediate_values), default=0
    )
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
    fig = go.Figure(
        go.Bar(
            x=names,
            y=[counts[n] for n in names],
            text=[counts[n] for n in names],
            marker_color=[COLORS[n] for n in names],
            textposition="auto",
        )
    )
    fig.update_layout(
        title="Trials by status (rejected: over the budget, never trained)", yaxis_title="trials", height=350
    )
    return fig


def _last_report(trial: FrozenTrial) -> float | None:
    return trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else None


def _hover(trial: FrozenTrial) -> str:
    params, latency = trial.user_attrs.get(PARAMS), trial.user_attrs.get(LATENCY_MS)
    return (
        f"trial {trial.number}"
        + (f", {params:,} params" if params is not None else "")
        + (f", {latency:.3f} ms" if latency is not None else "")
    )
