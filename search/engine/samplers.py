"""The study's Optuna side: the sampler and pruner a spec names, and creating (or loading)
the spec's study with its warm-start configs enqueued."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna

from search.config import PrunerConfig, SamplerConfig, Spec, SpecError, load_spec, random_samples
from search.config.secrets import mask_secrets
from search.study.schema import SPEC_SOURCE, SPEC_TEXT
from search.study.storage import open_storage

# Samplers that learn from pruned infeasible trials (and the random one, which learns nothing).
LEARNS_FROM_REJECTIONS = (optuna.samplers.TPESampler, optuna.samplers.RandomSampler)
# Samplers that read constraint values (CMA-ES warns that it ignores them).
USES_CONSTRAINTS = (optuna.samplers.TPESampler, optuna.samplers.NSGAIISampler, optuna.samplers.GPSampler)


def make_sampler(config: SamplerConfig, seed: int | None) -> optuna.samplers.BaseSampler:
    """The Optuna sampler a spec names. TPE is multivariate, grouped (for conditional
    spaces) and uses the constant liar so that parallel trials spread out."""
    startup = config.n_startup_trials
    if config.name == "tpe":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # `group` is stable in use
            return optuna.samplers.TPESampler(
                n_startup_trials=startup, multivariate=True, group=True, constant_liar=True, seed=seed
            )
    if config.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if config.name == "gp":
        return optuna.samplers.GPSampler(n_startup_trials=startup, seed=seed)
    if config.name == "cmaes":
        return optuna.samplers.CmaEsSampler(n_startup_trials=startup, seed=seed, warn_independent_sampling=False)
    return optuna.samplers.NSGAIISampler(seed=seed)


def make_pruner(config: PrunerConfig, max_epochs: int) -> optuna.pruners.BasePruner:
    """The Optuna pruner a spec names; the step is the epoch."""
    if config.name == "median":
        return optuna.pruners.MedianPruner(config.n_startup_trials, config.n_warmup_steps)
    if config.name == "percentile":
        return optuna.pruners.PercentilePruner(config.percentile, config.n_startup_trials, config.n_warmup_steps)
    if config.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=config.min_resource, reduction_factor=config.reduction_factor
        )
    if config.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=config.min_resource, max_resource=max_epochs, reduction_factor=config.reduction_factor
        )
    return optuna.pruners.NopPruner()


def create_study(spec: Spec, storage: str | optuna.storages.BaseStorage) -> optuna.Study:
    """Create or load the spec's study; a new study gets the spec's warm-start configs enqueued.

    Args:
        spec: The parsed spec.
        storage: An Optuna storage URL, or a storage (in memory, for rehearsals).
    """
    storage = open_storage(storage) if isinstance(storage, str) else storage
    objectives = spec.study.objectives
    existing = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    resuming = spec.study.name in existing
    n_before = len(optuna.load_study(study_name=spec.study.name, storage=storage).trials) if resuming else 0
    seed = None if spec.study.seed is None else spec.study.seed + n_before  # no replay of old draws
    study = optuna.create_study(
        study_name=spec.study.name,
        storage=storage,
        load_if_exists=True,
        directions=[o.direction for o in objectives],
        sampler=make_sampler(spec.study.sampler, seed),
        pruner=make_pruner(spec.study.pruner, max_epochs(spec)),
    )
    stored = study.user_attrs.get(SPEC_TEXT)
    if stored is None:  # new, or half-created by a driver stopped while setting it up
        _set_up(study, spec)
    elif stored != mask_secrets(stored):  # kept in clear by an earlier version: a URI's password
        study.set_user_attr(SPEC_TEXT, mask_secrets(stored))
    return study


def _set_up(study: optuna.Study, spec: Spec) -> None:
    """Write what a study of ours holds besides its trials, the spec last: a study with its
    spec is complete, and one without it (its driver was killed in between) is completed by
    the next run, its warm-start configs enqueued once."""
    study.set_user_attr(SPEC_SOURCE, spec.source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([o.metric for o in spec.study.objectives])
    queued = [t.system_attrs.get("fixed_params") for t in study.get_trials(deepcopy=False)]
    for params in warm_start_params(spec):
        if params not in queued:
            study.enqueue_trial(params)
    study.set_user_attr(SPEC_TEXT, mask_secrets(spec.text))  # export and report rebuild trials from it


def max_epochs(spec: Spec) -> int:
    return max((c.train.epochs for c in random_samples(spec.space, 20, seed=0)), default=1)


def warm_start_params(spec: Spec) -> list[dict]:
    """The Optuna parameters of each ``study.enqueue`` file, mapped into the spec's space.

    Raises:
        SpecError: an enqueued file is not a fixed config of this space.
    """
    base = Path(spec.source).parent
    out = []
    for index, name in enumerate(spec.study.enqueue):
        config = load_spec(base / name).fixed()
        try:
            out.append(spec.space.params_of(config))
        except ValueError as error:
            raise SpecError(spec.source, f"study.enqueue[{index}]", f"{name} is not in this space: {error}") from None
    return out
