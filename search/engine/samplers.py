"""The study's Optuna side: the sampler and pruner a spec names, and creating (or loading)
the spec's study with its warm-start configs enqueued."""

from __future__ import annotations

import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from search.config import PrunerConfig, SamplerConfig, Spec, SpecError, load_spec, random_samples
from search.config.schema import HyperbandPruner, MedianPruner, NoPruner, PercentilePruner, SuccessiveHalvingPruner
from search.config.secrets import mask_secrets
from search.engine.prior import PriorSampler
from search.engine.rungs import RungHalvingPruner
from search.study.keys import SPEC_SOURCE, SPEC_TEXT
from search.study.storage import open_storage


@dataclass(frozen=True)
class SamplerKind:
    """A sampler a spec can name: its class, how it is made, and what it can learn from.

    Attributes:
        cls: The Optuna sampler class.
        make: ``make(config, seed)`` builds it.
        learns_from_rejections: It learns from pruned infeasible trials (TPE), or learns
            nothing at all (random): a run of rejections is not a sign of a stuck sampler.
        uses_constraints: It reads constraint values (CMA-ES warns that it ignores them).
    """

    cls: type[optuna.samplers.BaseSampler]
    make: Callable[[SamplerConfig, int | None], optuna.samplers.BaseSampler]
    learns_from_rejections: bool
    uses_constraints: bool


def _tpe(config: SamplerConfig, seed: int | None) -> optuna.samplers.BaseSampler:
    """Multivariate, grouped (for conditional spaces), with the constant liar so that parallel
    trials spread out."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # `group` is stable in use
        return optuna.samplers.TPESampler(
            n_startup_trials=config.n_startup_trials, multivariate=True, group=True, constant_liar=True, seed=seed
        )


def _quiet(
    cls: Callable[..., optuna.samplers.BaseSampler],
) -> Callable[[SamplerConfig, int | None], optuna.samplers.BaseSampler]:
    """How a model-based sampler that draws conditional parameters at random (GP, CMA-ES) is
    made: without its warning per parameter drawn so, which would flood a conditional space's log."""
    return lambda config, seed: cls(
        n_startup_trials=config.n_startup_trials, seed=seed, warn_independent_sampling=False
    )


SAMPLERS: dict[str, SamplerKind] = {
    "tpe": SamplerKind(optuna.samplers.TPESampler, _tpe, True, True),
    "random": SamplerKind(
        optuna.samplers.RandomSampler, lambda c, seed: optuna.samplers.RandomSampler(seed), True, False
    ),
    "gp": SamplerKind(optuna.samplers.GPSampler, _quiet(optuna.samplers.GPSampler), False, True),
    "cmaes": SamplerKind(optuna.samplers.CmaEsSampler, _quiet(optuna.samplers.CmaEsSampler), False, False),
    "nsgaii": SamplerKind(
        optuna.samplers.NSGAIISampler, lambda c, seed: optuna.samplers.NSGAIISampler(seed=seed), False, True
    ),
}

PRUNERS: dict[type, Callable[[Any, int], optuna.pruners.BasePruner]] = {
    MedianPruner: lambda c, epochs: optuna.pruners.MedianPruner(c.n_startup_trials, c.n_warmup_steps),
    PercentilePruner: lambda c, epochs: optuna.pruners.PercentilePruner(
        c.percentile, c.n_startup_trials, c.n_warmup_steps
    ),
    SuccessiveHalvingPruner: lambda c, epochs: (
        RungHalvingPruner(c.reduction_factor, len(c.rungs))
        if c.rungs
        else optuna.pruners.SuccessiveHalvingPruner(min_resource=c.min_resource, reduction_factor=c.reduction_factor)
    ),
    HyperbandPruner: lambda c, epochs: optuna.pruners.HyperbandPruner(
        min_resource=c.min_resource, max_resource=epochs, reduction_factor=c.reduction_factor
    ),
    NoPruner: lambda c, epochs: optuna.pruners.NopPruner(),
}


def _check_tables() -> None:
    """Every name the schema allows has its entry, and no entry is unreachable: checked on
    import, so that a name added to the schema alone fails at once, never as a silent fallback."""
    sampler_names = set(typing.get_args(typing.get_type_hints(SamplerConfig)["name"]))
    if set(SAMPLERS) != sampler_names:
        raise RuntimeError(f"SAMPLERS has {sorted(SAMPLERS)}, the schema allows {sorted(sampler_names)}")
    if set(PRUNERS) != set(typing.get_args(PrunerConfig)):
        raise RuntimeError(f"PRUNERS has {sorted(c.__name__ for c in PRUNERS)}, not the schema's PrunerConfig")


_check_tables()


def make_sampler(config: SamplerConfig, seed: int | None) -> optuna.samplers.BaseSampler:
    """The Optuna sampler a spec names (:data:`SAMPLERS`)."""
    return SAMPLERS[config.name].make(config, seed)


def study_sampler(spec: Spec, seed: int | None) -> optuna.samplers.BaseSampler:
    """The spec's sampler, drawing near the designs of ``study.prior`` where it has one
    (:class:`~search.engine.prior.PriorSampler`).

    Raises:
        SpecError: a prior design is not a fixed config of this space.
    """
    sampler = make_sampler(spec.study.sampler, seed)
    prior = spec.study.prior
    if prior is None:
        return sampler
    return PriorSampler(sampler, design_params(spec, prior.designs, "study.prior.designs"), prior, seed)


def sampler_kind(sampler: optuna.samplers.BaseSampler) -> SamplerKind | None:
    """The table's entry of ``sampler``'s class (through a prior, that of the sampler it wraps);
    ``None`` for a sampler no spec can name."""
    if isinstance(sampler, PriorSampler):
        sampler = sampler.base
    return next((kind for kind in SAMPLERS.values() if isinstance(sampler, kind.cls)), None)


def learns_from_rejections(sampler: optuna.samplers.BaseSampler) -> bool:
    kind = sampler_kind(sampler)
    return kind is not None and kind.learns_from_rejections


def uses_constraints(sampler: optuna.samplers.BaseSampler) -> bool:
    kind = sampler_kind(sampler)
    return kind is not None and kind.uses_constraints


def make_pruner(config: PrunerConfig, max_epochs: int) -> optuna.pruners.BasePruner:
    """The Optuna pruner a spec names (:data:`PRUNERS`); the step is the epoch, or the rung's
    index where ``rungs`` are set (:mod:`search.engine.rungs`)."""
    return PRUNERS[type(config)](config, max_epochs)


def create_study(
    spec: Spec, storage: str | optuna.storages.BaseStorage, max_resource: int | None = None
) -> optuna.Study:
    """Create or load the spec's study; a new study gets the spec's warm-start configs enqueued.

    Args:
        spec: The parsed spec.
        storage: An Optuna storage URL, or a storage (in memory, for rehearsals).
        max_resource: The most epochs a config trains (Hyperband's), from the run's survey;
            None: from 20 samples of the space.
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
        sampler=study_sampler(spec, seed),
        pruner=make_pruner(spec.study.pruner, max_resource or max_epochs(spec)),
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


def check_designs(spec: Spec) -> None:
    """Before anything loads or starts: every ``study.enqueue`` file and ``study.prior`` design
    is a fixed config of the space (the study maps them again when it is made).

    Raises:
        SpecError: naming the file's key.
    """
    warm_start_params(spec)
    if spec.study.prior is not None:
        design_params(spec, spec.study.prior.designs, "study.prior.designs")


def warm_start_params(spec: Spec) -> list[dict]:
    """The Optuna parameters of each ``study.enqueue`` file, mapped into the spec's space.

    Raises:
        SpecError: an enqueued file is not a fixed config of this space.
    """
    return design_params(spec, spec.study.enqueue, "study.enqueue")


def design_params(spec: Spec, files: tuple[str, ...], key: str) -> list[dict]:
    """The Optuna parameters of each fixed spec file of ``files`` (relative to the spec), mapped
    into the spec's space: ``study.enqueue``'s warm starts and ``study.prior``'s designs.

    Raises:
        SpecError: a file is not a fixed config of this space (``key[i]`` names it).
    """
    base = Path(spec.source).parent
    out = []
    for index, name in enumerate(files):
        config = load_spec(base / name).fixed()
        try:
            out.append(spec.space.params_of(config))
        except ValueError as error:
            raise SpecError(spec.source, f"{key}[{index}]", f"{name} is not in this space: {error}") from None
    return out
