"""What the benchmark runs: the strategies, the budgets, the seeds and the task's spec."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from search.config import Spec, parse_spec, random_samples

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SPEC = REPO / "spaces" / "cifar_cpu.yaml"
DEFAULT_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
DEFAULT_OUT = REPO / "benchmarks" / "out" / "search_quality"


@dataclass(frozen=True)
class Strategy:
    """A way to search.

    Attributes:
        key: Its short name in tables and file names.
        label: What it is, for people.
        study: Merged into the spec's ``study`` section (our machinery's strategies).
        engine: ``bridge`` (our StudyBridge), ``tune`` (Ray Tune's ASHA + OptunaSearch) or a
            peer package: ``bohb``, ``dehb``, ``smac``.
        concurrency: Trials running at once (our machinery only), in lockstep.
        budget_dependent: The method's behaviour depends on the total budget (SMAC sizes its
            initial design from ``n_trials``), so each budget gets its own run; for every
            other strategy the shorter budget's result is the longer run's prefix.
    """

    key: str
    label: str
    study: dict = field(default_factory=dict)
    engine: str = "bridge"
    concurrency: int = 1
    budget_dependent: bool = False

    @property
    def is_peer(self) -> bool:
        return self.engine in PEER_ENGINES


PEER_ENGINES = ("bohb", "dehb", "smac")
NO_WARM_START: dict = {"enqueue": []}
# A peer's configs reach our StudyBridge enqueued: the study neither samples nor prunes.
PEER_STUDY: dict = {"sampler": {"name": "random"}, "pruner": {"name": "none"}, **NO_WARM_START}


def halving(reduction_factor: int) -> dict:
    """A study section pruning by successive halving from 1 epoch, written out so that a
    strategy keeps its meaning and its saved runs whatever the spec file's pruner is."""
    return {"pruner": {"name": "successive_halving", "min_resource": 1, "reduction_factor": reduction_factor}}


STRATEGIES = (
    Strategy("a", "random, no pruning", {"sampler": {"name": "random"}, "pruner": {"name": "none"}, **NO_WARM_START}),
    Strategy("b", "random + successive halving", {"sampler": {"name": "random"}, **NO_WARM_START}),
    Strategy("c", "TPE + successive halving (default)", {**halving(3), **NO_WARM_START}),
    Strategy("d", "(c) + seed 003 enqueued", {}),
    Strategy("e", "Ray Tune ASHA + OptunaSearch", {**halving(3), **NO_WARM_START}, engine="tune"),
    Strategy(
        "f",
        "Optuna TPE + Hyperband",
        {"pruner": {"name": "hyperband", "min_resource": 1, "reduction_factor": 3}, **NO_WARM_START},
    ),
    Strategy("g", "BOHB (hpbandster)", PEER_STUDY, engine="bohb"),
    Strategy("h", "DEHB (dehb)", PEER_STUDY, engine="dehb"),
    Strategy("i", "SMAC3 multi-fidelity (Hyperband + random forest)", PEER_STUDY, engine="smac", budget_dependent=True),
    Strategy("c4", "(c) with 4 concurrent trials", NO_WARM_START, concurrency=4),
    # The candidate default: successive halving keeping the top quarter at each rung (Optuna's
    # and Ray's ASHA's own reduction factor) instead of the top third.
    Strategy("j", "(c) with reduction factor 4", {**halving(4), **NO_WARM_START}),
)
BASELINE, OURS = "a", "c"
BY_KEY = {s.key: s for s in STRATEGIES}


@dataclass(frozen=True)
class Settings:
    """One benchmark run.

    ``data`` and ``train`` are merged into the spec's sections (the validation split's
    size, the quick mode's smaller subsets and shorter trials); they are written into the
    stored spec, so retraining uses them too. ``budgets`` are epochs per strategy and
    seed; ``seed_groups`` name the seeds that are looked at while tuning and those held out.
    """

    spec_path: Path
    data_dir: str | None
    strategies: tuple[Strategy, ...]
    seed_groups: dict[str, tuple[int, ...]]
    budgets: tuple[int, ...]
    retrain_seeds: tuple[int, ...]
    workers: int
    out: Path
    data: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(seed for group in self.seed_groups.values() for seed in group)

    @property
    def max_budget(self) -> int:
        return max(self.budgets)


# 5,000 validation images (the whole held-out tenth of CIFAR-10's training set) instead of
# 1,000: docs/search-quality.md, "Noise", measures why.
VAL_IMAGES = 5000
FULL = dict(
    seed_groups={"tuning": (0, 1, 2, 3, 4), "held-out": (5, 6, 7, 8, 9)},
    budgets=(60, 180),
    retrain_seeds=(0, 1, 2),
    data={"val_subset": VAL_IMAGES},
)
QUICK = dict(
    seed_groups={"tuning": (0,)},
    budgets=(12,),  # a Hyperband bracket of 2-epoch trials fits: 9 + 1 epochs
    retrain_seeds=(0,),
    data={"train_subset": 300, "val_subset": 200},
    train={"epochs": 2},
)


def strategy_spec(settings: Settings, strategy: Strategy, seed: int, budget: int) -> Spec:
    """The benchmark's spec with the strategy's study section, the search seed and the overrides.

    ``n_trials`` becomes the epoch budget: every trial trains at least one epoch, so the
    budget, not the trial count, ends a search.
    """
    raw = yaml.safe_load(settings.spec_path.read_text(encoding="utf-8"))
    study = {**raw.get("study", {}), **strategy.study, "seed": seed, "n_trials": budget}
    raw.update(
        study=study, data={**raw.get("data", {}), **settings.data}, train={**raw.get("train", {}), **settings.train}
    )
    raw["resources"] = {**raw.get("resources", {}), "max_concurrent": strategy.concurrency}
    # The source stays the file's, so that enqueued files resolve beside it.
    return parse_spec(yaml.safe_dump(raw, sort_keys=False), source=str(settings.spec_path))


def run_budget(settings: Settings, strategy: Strategy, budget: int) -> int:
    """The epochs a strategy's run for ``budget`` spends: its own, or the longest budget's
    (whose prefix is the shorter budget's result)."""
    return budget if strategy.budget_dependent else settings.max_budget


def full_trial_epochs(spec: Spec) -> int:
    """The epochs of a trial that is not stopped early (the space fixes them)."""
    return next(random_samples(spec.space, 1)).train.epochs
