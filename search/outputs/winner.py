"""The first section of the report: the winner. The best trial (rank 1 of the retrained
leaderboard when there is one, else the best search result): its architecture and recipe
in a line each, its size against the budget, its learning curve, its test accuracy with the
spread over seeds, where its files are, and the two commands that use it.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial

from search.config import Spec, UserError
from search.config.secrets import mask_secrets
from search.outputs.retrain import accuracy_text
from search.study.keys import FLOPS, LEADERBOARD, PARAMS, metric_names
from search.study.notes import architecture_line, format_flops, recipe_line
from search.study.records import kept_models
from search.study.storage import default_storage, study_dir
from search.study.trials import ranked_trials, trial_config


def winner(study: optuna.Study) -> tuple[FrozenTrial, dict[str, Any] | None]:
    """The winning trial and its leaderboard row (None: not retrained)."""
    board = study.user_attrs.get(LEADERBOARD) or {}
    rows = [r for r in board.get("rows", []) if r.get("test_acc_mean") is not None]
    if rows:
        best = min(rows, key=lambda r: r["rank"])
        return study.get_trials(deepcopy=False)[best["trial"]], best
    return ranked_trials(study, 1)[0], None


def winner_section(study: optuna.Study, spec: Spec | None, storage_url: str) -> list[str | go.Figure]:
    """The winner as HTML parts and its learning-curve figure, in page order."""
    trial, row = winner(study)
    attrs = trial.user_attrs
    metric = metric_names(study)[0]
    facts: list[tuple[str, str]] = [
        ("trial", f"#{trial.number}, {metric} {trial.values[0]:.4f} in the search"),
    ]
    if spec is not None:
        try:
            config = trial_config(spec, trial)
            facts += [("architecture", architecture_line(config, None, None)), ("recipe", recipe_line(config))]
        except (ValueError, UserError):
            pass  # parameters the spec cannot replay (an edited spec): the rest still stands
    facts.append(("size", size_text(attrs.get(PARAMS), attrs.get(FLOPS), spec)))
    facts.append(("test accuracy", _test_text(row, study.study_name, storage_url)))
    folder = model_folder(study, trial.number, row)
    facts.append(("model folder", str(folder) if folder else "none kept (run --keep K keeps the best K trials')"))
    if folder:
        how, commands = "Use it", [f"resnet-search predict {folder} IMAGE...", f"resnet-search evaluate {folder}"]
    else:
        how, commands = (
            "Make a model of it: its fixed config, then trained",
            use_commands(study.study_name, storage_url, trial.number),
        )
    parts: list[str | go.Figure] = [
        "<dl>" + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in facts) + "</dl>",
        f"<p>{html.escape(how)}:</p><pre>" + html.escape("\n".join(commands)) + "</pre>",
    ]
    if trial.intermediate_values:
        parts.append(curve_figure(trial, metric))
    return parts


def model_folder(study: optuna.Study, number: int, row: dict[str, Any] | None) -> Path | None:
    """The winner's model folder: its first retrained seed's, else the one ``run --keep`` kept;
    relative to the current folder when inside it (as the user would type it)."""
    folder = kept_models(study).get(number)
    if row is not None and row.get("out_dir") and row.get("seeds"):
        retrained = Path(row["out_dir"]) / f"seed{row['seeds'][0]}"
        folder = retrained if retrained.is_dir() else folder
    if folder is None:
        return None
    try:
        return folder.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return folder


def size_text(params: int | None, flops: int | None, spec: Spec | None) -> str:
    """``4,697,742 params of the 5,000,000 budget (94%), 0.59 GFLOPs``."""
    budget = spec.budget if spec is not None else None
    text = f"{params:,} params" if params is not None else "params unknown"
    if params is not None and budget is not None and budget.max_params:
        text += f" of the {budget.max_params:,} budget ({params / budget.max_params:.0%})"
    text += f", {format_flops(flops)}"
    if flops and budget is not None and budget.max_flops:
        text += f" of {format_flops(budget.max_flops)} ({flops / budget.max_flops:.0%})"
    return text


def _test_text(row: dict[str, Any] | None, study_name: str, storage_url: str) -> str:
    if row is None:
        storage = _storage_flag(study_name, storage_url)
        return (
            "not measured yet: the search never touches the test set; "
            f"resnet-search retrain{storage} --study {study_name} --top 3 --seeds 0,1,2 measures it"
        )
    seeds = sum(isinstance(acc, (int, float)) and math.isfinite(acc) for acc in row.get("test_acc", []))
    over = f" over {seeds} seeds" if seeds > 1 else ""
    return f"{accuracy_text(row['test_acc_mean'], row.get('test_acc_std'), seeds)}{over} (retrained on train+val)"


def use_commands(study_name: str, storage_url: str, number: int) -> list[str]:
    """The two commands that turn the trial into a model: its fixed spec, and training it."""
    storage = _storage_flag(study_name, storage_url)
    exported = study_dir(study_name) / "export" / f"{study_name}_trial{number}.yaml"
    return [
        f"resnet-search export{storage} --study {study_name} --top 1",
        f"resnet-search train {exported} --data-dir DATA --seeds 0,1,2",
    ]


def _storage_flag(study_name: str, storage_url: str) -> str:
    return "" if storage_url == default_storage(study_name) else f" --storage {mask_secrets(storage_url)}"


def curve_figure(trial: FrozenTrial, metric: str) -> go.Figure:
    """The trial's reported metric per epoch."""
    steps = sorted(trial.intermediate_values)
    fig = go.Figure(
        go.Scatter(x=steps, y=[trial.intermediate_values[s] for s in steps], mode="lines+markers", name=metric)
    )
    fig.update_layout(xaxis_title="epoch", yaxis_title=metric, height=300)
    if len(steps) <= 20:
        fig.update_xaxes(dtick=1)
    return fig
