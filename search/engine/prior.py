"""Priors where the user has them: :class:`PriorSampler`, an Optuna sampler that samples near
given designs (``study.prior``) with a probability that decays as evidence accumulates, and
otherwise leaves the trial to the configured sampler, PriorBand-style (arXiv 2306.12370).

Why a wrapper: the configured sampler (TPE, GP, ...) keeps its own model and learns from every
trial, those drawn near a design included; the prior only decides, per trial, whether the trial
is drawn near a design. The probability (:func:`prior_weight`) is ``weight``, times
``half_life / (half_life + finished trials)``, times how the designs' region does: the share of
trials drawn near the designs among the best quarter of complete trials over their share of all
complete trials (at most 1, smoothed). A good prior fades as the study learns; a bad one fades
fast, as its trials stay out of the best quarter, so it cannot keep the search from good configs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from search.config import PriorConfig
from search.study.keys import PRIOR_DESIGN, REPEAT_OF, is_finished


def prior_weight(trials: Sequence[FrozenTrial], config: PriorConfig, maximize: bool) -> float:
    """The probability that the next trial is drawn near a design (see the module's docstring).

    Args:
        trials: The study's trials; finished ones are the evidence (repeats count once: their
            trained original stands for them).
        config: The spec's ``study.prior``.
        maximize: The first objective is maximised.
    """
    evidence = [t for t in trials if is_finished(t) and REPEAT_OF not in t.user_attrs]
    decay = config.half_life / (config.half_life + len(evidence))
    return config.weight * decay * region_factor([t for t in evidence if t.state == TrialState.COMPLETE], maximize)


def region_factor(complete: Sequence[FrozenTrial], maximize: bool) -> float:
    """How the trials drawn near the designs do, in [0, 1]: 1 while they are as common among the
    best quarter as among all complete trials (or there is no evidence yet), less as they stay
    out of it (Laplace-smoothed shares, so that one trial decides little)."""
    if not complete:
        return 1.0
    ranked = sorted(complete, key=lambda t: t.values[0], reverse=maximize)
    top = ranked[: math.ceil(len(ranked) / 4)]
    share_top = (sum(PRIOR_DESIGN in t.user_attrs for t in top) + 0.5) / (len(top) + 1)
    share_all = (sum(PRIOR_DESIGN in t.user_attrs for t in complete) + 0.5) / (len(complete) + 1)
    return min(1.0, share_top / share_all)


def near(value: Any, distribution: BaseDistribution, spread: float, rng: np.random.RandomState) -> Any | None:
    """A value drawn near a design's ``value``: a number from a normal around it whose standard
    deviation is ``spread`` of the range (on the log scale for a log range), kept inside the
    range and on its step; a choice kept with probability ``1 - spread``, else another one.

    Returns:
        The value, or None where ``value`` is not one of the distribution's (the caller samples
        as usual then).
    """
    if isinstance(distribution, CategoricalDistribution):
        choices = list(distribution.choices)
        if value not in choices:
            return None
        others = [c for c in choices if c != value]
        return others[rng.randint(len(others))] if others and rng.rand() < spread else value
    if not isinstance(distribution, (FloatDistribution, IntDistribution)) or isinstance(value, bool):
        return None
    low, high = distribution.low, distribution.high
    if not isinstance(value, (int, float)) or not low <= value <= high:
        return None
    scale = (math.log, math.exp) if distribution.log else (float, float)
    lo, hi, centre = scale[0](low), scale[0](high), scale[0](value)
    drawn = float(np.clip(rng.normal(centre, spread * (hi - lo)) if hi > lo else lo, lo, hi))
    number = scale[1](drawn)
    step = distribution.step
    if step is not None:
        number = low + round((number - low) / step) * step
    number = min(max(number, low), high)
    return int(round(number)) if isinstance(distribution, IntDistribution) else float(number)


class PriorSampler(optuna.samplers.BaseSampler):
    """The configured sampler, with trials drawn near the user's designs while evidence is thin.

    Args:
        base: The sampler the spec names; it samples every trial not drawn near a design, and
            every parameter a design does not set (a branch the design did not take).
        designs: Each design's Optuna parameters, mapped onto the space.
        config: The spec's ``study.prior``.
        seed: Seeds the draws of this wrapper (the base has its own seed).
    """

    def __init__(
        self,
        base: optuna.samplers.BaseSampler,
        designs: Sequence[dict[str, Any]],
        config: PriorConfig,
        seed: int | None = None,
    ) -> None:
        self.base = base
        self.designs = list(designs)
        self.config = config
        self._rng = np.random.RandomState(seed)
        self._chosen: dict[int, int | None] = {}  # trial id -> the design it is drawn near (None: not)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Decide, once per new trial, whether it is drawn near a design (an enqueued trial never
        is); the choice is stored as the trial's ``prior_design``."""
        self.base.before_trial(study, trial)
        if trial._trial_id in self._chosen or trial.state != TrialState.RUNNING or trial.params:
            return
        if PRIOR_DESIGN in trial.user_attrs or "fixed_params" in trial.system_attrs:
            return
        maximize = study.directions[0] == StudyDirection.MAXIMIZE
        chance = prior_weight(study.get_trials(deepcopy=False), self.config, maximize)
        chosen = int(self._rng.randint(len(self.designs))) if self._rng.rand() < chance else None
        self._chosen[trial._trial_id] = chosen
        if chosen is not None:
            study._storage.set_trial_user_attr(trial._trial_id, PRIOR_DESIGN, chosen)

    def _design(self, trial: FrozenTrial) -> dict[str, Any] | None:
        chosen = self._chosen.get(trial._trial_id)
        return None if chosen is None else self.designs[chosen]

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        if self._design(trial) is not None:
            return {}  # every parameter of a trial near a design is drawn by sample_independent
        return self.base.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if self._design(trial) is not None:
            return {}
        return self.base.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        design = self._design(trial)
        if design is not None and param_name in design:
            value = near(design[param_name], param_distribution, self.config.spread, self._rng)
            if value is not None:
                return value
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self._chosen.pop(trial._trial_id, None)
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._rng.seed()
        self.base.reseed_rng()
