"""``resnet-search export``: the best trials' configs as fixed spec files, with where they came from."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial

from search._version import __version__
from search.config import fixed_document
from search.config.files import check_output_folder, write_text
from search.config.secrets import mask_secrets
from search.study.keys import FLOPS, PARAMS, SPEC_SOURCE, metric_names
from search.study.records import kept_models
from search.study.storage import safe_study_name, study_dir
from search.study.trials import ranked_trials, study_spec, trial_config


def export_best(
    study: optuna.Study,
    storage_url: str,
    *,
    top: int = 1,
    out_dir: str | Path | None = None,
    pareto: bool = False,
) -> list[Path]:
    """Write the best trials' configs as fixed spec files, ``<study>_trial<N>.yaml``.

    Each file trains with ``resnet-search train`` and counts with ``resnet-search count``;
    its ``provenance`` says where it came from (storage password masked).

    Args:
        study: A study made by ``resnet-search run``.
        storage_url: Its storage, recorded (masked) in the provenance.
        top: How many of the best COMPLETE trials (by the first objective).
        out_dir: Folder for the files; default ``studies/<study>/export``.
        pareto: Write the Pareto front of a multi-objective study instead (``top`` is ignored).

    Returns:
        The files written, best first (Pareto front: by trial number).

    Raises:
        UserError: ``out_dir`` cannot be written (checked first); see :func:`ranked_trials`;
            the study has no stored spec.
    """
    out = check_output_folder(out_dir) if out_dir is not None else study_dir(study.study_name) / "export"
    trials = ranked_trials(study, top, pareto)
    spec = study_spec(study)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for trial in trials:
        document = fixed_document(spec, trial_config(spec, trial), provenance(study, storage_url, trial))
        path = out / f"{safe_study_name(study.study_name)}_trial{trial.number}.yaml"  # stays in out
        write_text(path, yaml.safe_dump(document, sort_keys=False))
        paths.append(path)
    return paths


def provenance(study: optuna.Study, storage_url: str, trial: FrozenTrial) -> dict[str, Any]:
    """Where an exported config came from: study, storage (masked), trial, results, the model
    folder with its trained weights (``run --keep``; None if not kept), versions."""
    date = trial.datetime_complete or trial.datetime_start
    return {
        "study": study.study_name,
        "storage": mask_secrets(storage_url),
        "spec_source": study.user_attrs.get(SPEC_SOURCE),
        "trial": trial.number,
        "values": dict(zip(metric_names(study), trial.values)),
        "search_params": dict(trial.params),
        "params": trial.user_attrs.get(PARAMS),
        "flops": trial.user_attrs.get(FLOPS),
        "model": str(kept_models(study)[trial.number]) if trial.number in kept_models(study) else None,
        "date": date.isoformat(timespec="seconds") if date else None,
        "versions": {
            "resnet-search": __version__,
            "torch": _version("torch"),  # from metadata: exporting should not import torch
            "optuna": optuna.__version__,
        },
    }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
