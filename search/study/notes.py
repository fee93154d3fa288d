"""A trial in words: one line for its architecture, one for its recipe, and the Markdown note
optuna-dashboard shows for it. A note is made from the trial's own record only, so writing
it costs the same for trial 10 and trial 1,000."""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial

from search.config import Spec, SpecError, UserError
from search.config.describe import architecture_line, format_flops, recipe_line
from search.study.keys import (
    ACTIVATION_KB,
    EPOCHS_RUN,
    ERROR,
    FLOPS,
    INTERRUPTED,
    LATENCY_MS,
    MODEL_KB,
    PARAMS,
    REJECTED,
    REPEAT_OF,
    TRAIN_TIME_S,
    metric_names,
    trial_status,
)
from search.study.trials import study_spec, trial_config

__all__ = ["architecture_line", "format_flops", "recipe_line", "trial_note", "write_trial_note"]


def trial_note(study: optuna.Study, trial: FrozenTrial, spec: Spec | None) -> str:
    """The Markdown note optuna-dashboard shows for ``trial``."""
    head = f"**{trial_status(trial)}**"
    if trial.values:
        head += " · " + ", ".join(f"{m} {v:.4g}" for m, v in zip(metric_names(study), trial.values))
    attrs = trial.user_attrs
    if EPOCHS_RUN in attrs:
        head += f" · {attrs[EPOCHS_RUN]} epochs"
    if attrs.get(TRAIN_TIME_S) is not None:
        head += f" · {attrs[TRAIN_TIME_S]:.0f} s"
    lines = [head, ""]
    config = None
    if spec is not None:
        try:
            config = trial_config(spec, trial)
        except ValueError:  # a sample the space rejected part-way has no complete config
            config = None
    if config is not None:
        lines += [f"`{architecture_line(config, attrs.get(PARAMS), attrs.get(FLOPS))}`", "", recipe_line(config), ""]
    deployment = [
        f"{label} {attrs[key]:,.{digits}f} {unit}"
        for key, label, unit, digits in (
            (LATENCY_MS, "latency", "ms", 3),
            (ACTIVATION_KB, "activation memory", "kb", 1),
            (MODEL_KB, "model", "kb", 1),
        )
        if isinstance(attrs.get(key), (int, float))
    ]
    if deployment:
        lines += ["deployment: " + ", ".join(deployment), ""]
    for key, label in (
        (REJECTED, "rejected for the budget, never trained"),
        (ERROR, "error"),
        (INTERRUPTED, "interrupted"),
        (REPEAT_OF, "a repeat, never trained, answered from the record of trial"),
    ):
        if key in attrs:
            lines.append(f"{label}: {attrs[key]}")
    return "\n".join(lines).strip() + "\n"


def write_trial_note(study: optuna.Study, trial: FrozenTrial, spec: Spec | None = None) -> bool:
    """Write ``trial``'s note for optuna-dashboard (architecture and recipe in one line each);
    it replaces an earlier note of the trial.

    Args:
        study: The trial's study (a live :class:`optuna.Study`: notes are written through it).
        trial: The finished trial.
        spec: The study's spec, where the caller holds it (the search does): saves parsing
            the stored spec text again for every trial.

    Returns:
        False when the study has no stored spec (not made by ``resnet-search run``): the note
        then holds the trial's status and results only.
    """
    from optuna_dashboard import save_note

    if spec is None:
        try:
            spec = study_spec(study)
        except (UserError, SpecError):
            spec = None
    # optuna_dashboard.save_note wants a live Trial; any finished one can be reopened by id.
    save_note(optuna.Trial(study, trial._trial_id), trial_note(study, trial, spec))
    return spec is not None
