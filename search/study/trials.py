"""Reading a study back: load it by name, the spec it was searched with, each trial's fixed
config, the ranking of its trials, and recovering trials a killed driver left RUNNING."""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.config import Spec, TrialConfig, UserError, parse_spec
from search.config.secrets import mask_secrets
from search.study.keys import INTERRUPTED, REPEAT_OF, RETRY_OF, SPEC_SOURCE, SPEC_TEXT, status_counts
from search.study.storage import open_existing_storage


def load_study(storage_url: str, study_name: str | None = None) -> optuna.Study:
    """Load a study by name; without a name, the storage's only study.

    Raises:
        UserError: the storage cannot be opened, the study does not exist (the message lists
            those that do), or no name was given and the storage holds none or several.
    """
    storage = open_existing_storage(storage_url)
    names = optuna.study.get_all_study_names(storage)
    where = mask_secrets(storage_url)
    if study_name is None:
        if len(names) != 1:
            listed = ", ".join(names) if names else "none"
            raise UserError(f"storage {where} holds {len(names)} studies ({listed}); pick one with --study NAME")
        study_name = names[0]
    elif study_name not in names:
        listed = ", ".join(names) if names else "none"
        raise UserError(f"storage {where}: no study {study_name!r}; studies there: {listed}")
    return optuna.load_study(study_name=study_name, storage=storage)


def find_study(storage: str | optuna.storages.BaseStorage, study_name: str) -> optuna.Study | None:
    """The study ``study_name`` if the storage holds it (a rerun), else None (a new study)."""
    if study_name not in optuna.study.get_all_study_names(storage):
        return None
    return optuna.load_study(study_name=study_name, storage=storage)


def study_spec(study: optuna.Study) -> Spec:
    """The spec the study was searched with, parsed from the text stored on it.

    Raises:
        UserError: the study was not made by ``resnet-search run`` (no spec stored).
    """
    text = study.user_attrs.get(SPEC_TEXT)
    if text is None:
        raise UserError(
            f"study {study.study_name} has no stored spec (user attribute {SPEC_TEXT!r}): "
            "it was not made by resnet-search run, or its driver was stopped while creating it "
            "(run its spec again to complete it)"
        )
    return parse_spec(text, study.user_attrs.get(SPEC_SOURCE) or f"study {study.study_name}")


def trial_config(spec: Spec, trial: FrozenTrial) -> TrialConfig:
    """The fixed config a trial trained: its Optuna parameters replayed through the spec's space."""
    return spec.space.sample(optuna.trial.FixedTrial(trial.params, trial.number))


def ranked_trials(study: optuna.Study, top: int, pareto: bool = False) -> list[FrozenTrial]:
    """The best ``top`` COMPLETE trials by the first objective, or the whole Pareto front.

    Rejected, pruned and failed trials never qualify: only COMPLETE ones have results; nor
    do repeats (``repeat_of``): their trained original stands for them.

    Raises:
        UserError: ``top`` < 1, no complete trial, or ``pareto`` on a single-objective study.
    """
    if top < 1:
        raise UserError(f"--top must be at least 1, got {top}")
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and REPEAT_OF not in t.user_attrs]
    if not complete:
        counts = ", ".join(f"{n} {s}" for s, n in status_counts(trials).items() if n) or "no trials"
        raise UserError(f"study {study.study_name} has no complete trial yet ({counts})")
    if pareto:
        if len(study.directions) < 2:
            raise UserError(f"study {study.study_name} has one objective: --pareto needs a multi-objective study")
        return sorted((t for t in study.best_trials if REPEAT_OF not in t.user_attrs), key=lambda t: t.number)
    return sorted(complete, key=lambda t: (sort_sign(study) * t.values[0], t.number))[:top]


def sort_sign(study: optuna.Study) -> int:
    """-1 for a maximised first objective, +1 for a minimised one: ``sorted`` puts the best first."""
    return -1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1


def recover_interrupted(study: optuna.Study) -> int:
    """Trials a killed driver left RUNNING: mark them FAIL and enqueue their parameters again.

    Returns:
        How many trials were recovered.
    """
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for frozen in stale:
        optuna.Trial(study, frozen._trial_id).set_user_attr(INTERRUPTED, "the driver stopped before it finished")
        study.tell(frozen.number, state=TrialState.FAIL)
        study.enqueue_trial(frozen.params, user_attrs={RETRY_OF: frozen.number})
    return len(stale)


def requeue_stopped(study: optuna.Study) -> int:
    """Trials an earlier run's time budget stopped (FAIL, ``interrupted``, never enqueued
    again): enqueue their parameters, so that this run trains them again.

    Returns:
        How many trials were enqueued.
    """
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs[RETRY_OF] for t in trials if RETRY_OF in t.user_attrs}
    stopped = [t for t in trials if t.state == TrialState.FAIL and INTERRUPTED in t.user_attrs]
    for frozen in stopped:
        if frozen.number not in retried:
            study.enqueue_trial(frozen.params, user_attrs={RETRY_OF: frozen.number})
    return sum(t.number not in retried for t in stopped)
