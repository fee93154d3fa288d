"""Winners, retrained: each strategy's best config at a budget (over a group of seeds) is stored
as a one-trial study, as ``resnet-search run`` would, and retrained from scratch on train+val
by :func:`search.outputs.retrain.retrain` (what ``resnet-search retrain`` runs), once per
training seed, and tested on the whole CIFAR-10 test set."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace
from pathlib import Path

from search.engine.samplers import create_study
from search.outputs.retrain import retrain
from search.train.options import SeedOptions

from .records import SearchRun
from .settings import BY_KEY, Settings, strategy_spec


@dataclass(frozen=True)
class Winner:
    """The best completed trial of one strategy at one budget over one group of seeds."""

    strategy: str
    group: str
    budget: int
    search_seed: int
    val_acc: float
    params: dict

    @property
    def name(self) -> str:
        return f"{self.strategy}_b{self.budget}_{self.group}"


@dataclass(frozen=True)
class Retrained:
    """A winner retrained on train+val and tested, once per training seed."""

    winner: Winner
    model_params: int | None
    test_acc: tuple[float, ...]

    @property
    def test_mean(self) -> float:
        return statistics.fmean(self.test_acc)

    @property
    def test_std(self) -> float:
        return statistics.stdev(self.test_acc) if len(self.test_acc) > 1 else 0.0


def winner(runs: list[SearchRun], group: str, budget: int) -> Winner | None:
    """The best trial completed within ``budget`` over ``runs`` (None: nothing completed)."""
    best: Winner | None = None
    for run in sorted(runs, key=lambda r: r.seed):
        found = run.best_params_at(budget)
        if found is not None and (best is None or found[0] > best.val_acc):
            best = Winner(run.strategy, group, budget, run.seed, found[0], found[1])
    return best


def retrain_winner(settings: Settings, won: Winner) -> Retrained:
    """Store the winner as a one-trial study and retrain it with :func:`search.outputs.retrain.retrain`."""
    strategy = BY_KEY[won.strategy]
    spec = strategy_spec(settings, strategy, won.search_seed, won.budget)
    spec = replace(spec, study=replace(spec.study, name=f"winner_{won.name}", enqueue=()))
    path = settings.out / "winners" / f"{won.name}.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # a rerun replaces it
    study = create_study(spec, f"sqlite:///{path}")
    study.enqueue_trial(won.params)
    trial = study.ask()
    spec.space.sample(trial)
    study.tell(trial, won.val_acc)
    options = SeedOptions(
        seeds=settings.retrain_seeds,
        data_dir=settings.data_dir,
        download=False,
        out_dir=Path(settings.out / "retrain" / won.name),
        device="cpu",
        log=lambda line: None,
    )
    board = retrain(study, options, top=1)
    row = board.rows[0]
    return Retrained(won, row.params, tuple(float(acc) for acc in row.test_acc if acc is not None))
