"""How well each cheap look at a config ranks it: round 3's rung ladder, measured without pruning.

Run: ``python benchmarks/rung_agreement.py [--ladder c] [--configs 30] [--seed 0] [--data-dir D]``.
On the search benchmark's task (``spaces/cifar_cpu.yaml`` as ``search_efficiency.py`` runs
it: 2,000 training and 5,000 validation images at 16 px, 5-epoch trials), it samples configs
at random (the budget check as in a search), trains every one to its end with a candidate's
rungs (``--ladder c``: a quarter epoch at 8 px, 1 epoch, 3 epochs; ``c-8px``: 1 epoch at
8 px, 3 epochs) and records the validation accuracy at every look: each rung and each epoch's
end. It prints, for each look, its cost in full-epoch equivalents and how well its values
rank the configs as their final accuracy does:

- Spearman's rank correlation with the final accuracy, with a bootstrap 95% interval over
  the configs;
- the same for a learning-curve extrapolation of the final accuracy from the looks so far
  (:func:`extrapolate`), the pruning signal that extrapolating pruners use;
- the share of the final top third that halving at that look (keeping its top third, as
  reduction factor 3 does) would keep.

Every config's values are written to ``--csv`` (default
``benchmarks/results/search_quality/rung_agreement[_<ladder>]_seed<N>.csv``), and the table
is printed again from that file with ``--report-only``.
"""

from __future__ import annotations

import argparse
import csv
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

from .settings import (
    BY_KEY,
    DEFAULT_ARCHIVE,
    DEFAULT_OUT,
    DEFAULT_RECORDS,
    DEFAULT_SPEC,
    FULL,
    NO_WARM_START,
    Settings,
    Strategy,
    strategy_spec,
)

BOOTSTRAP = 2000
LADDERS = ("c", "c-8px")  # the strategies whose rung ladders are measured


def every_look(ladder: str) -> Strategy:
    """Random sampling (every config independent of the others' results) with the rungs of the
    strategy ``ladder``, which the trials report at; nothing is pruned here: every config trains
    to its end."""
    study = {"pruner": BY_KEY[ladder].study["pruner"], "sampler": {"name": "random"}, **NO_WARM_START}
    return Strategy(f"{ladder}-unpruned", f"random configs, every look of ({ladder})'s rungs", study)


@dataclass(frozen=True)
class Look:
    """One report of a trial: where it was taken and what it said."""

    name: str  # "rung 0 (epoch 0, 8 px)", "epoch 2", ...
    full_epochs: float
    val_acc: float


def train_configs(settings: Settings, seed: int, count: int) -> list[list[Look]]:
    """Sample ``count`` configs that fit the budget and train each to its end at the rungs of
    the settings' one strategy, every look recorded."""
    import optuna

    from search.data import load_dataset
    from search.engine.bridge import StudyBridge, TrialSetup
    from search.engine.samplers import create_study

    from .sessions import EpochSession

    spec = strategy_spec(settings, settings.strategies[0], seed, budget=count)
    data = load_dataset(spec.data, data_dir=settings.data_dir, download=False)
    study = create_study(spec, optuna.storages.InMemoryStorage())
    bridge = StudyBridge(study, spec, TrialSetup(data.image_size, settings.data_dir))
    configs = []
    while len(configs) < count and (job := bridge.next_job()) is not None:
        session = EpochSession(job.trial, data, job.rungs)
        rung_sides = [rung.image_size for rung in job.rungs]
        looks = []
        while (metrics := session.advance()) is not None:
            looks.append(Look(_name(metrics.rung, metrics.epoch, rung_sides), metrics.full_epochs, metrics.val_acc))
        session.close(stop=False)
        said = ", ".join(f"{look.name} {look.val_acc:.3f}" for look in looks)
        print(f"config {len(configs) + 1}/{count}: {said}", flush=True)
        configs.append(looks)
    return configs


def _name(rung: int | None, epoch: int, sides: list[int | None]) -> str:
    if rung is None:
        return f"epoch {epoch}"
    side = f", {sides[rung]} px" if sides[rung] else ""
    return f"rung {rung} (epoch {epoch}{side})"


def write_csv(path: Path, configs: list[list[Look]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["config", "look", "full_epochs", "val_acc"])
        for index, looks in enumerate(configs):
            writer.writerows([index, look.name, f"{look.full_epochs:.6f}", f"{look.val_acc:.4f}"] for look in looks)


def read_csv(path: Path) -> list[list[Look]]:
    configs: dict[int, list[Look]] = {}
    with path.open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            look = Look(row["look"], float(row["full_epochs"]), float(row["val_acc"]))
            configs.setdefault(int(row["config"]), []).append(look)
    return list(configs.values())


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (ties get their mean rank)."""
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def kept_share(look: np.ndarray, final: np.ndarray, keep: float = 1 / 3) -> float:
    """Of the configs in the final top ``keep``, the share also in ``look``'s top ``keep``."""
    top = max(1, round(len(final) * keep))
    best_final = set(np.argsort(-final, kind="stable")[:top])
    best_look = set(np.argsort(-look, kind="stable")[:top])
    return len(best_final & best_look) / top


def _pow3(cost: np.ndarray, ceiling: float, scale: float, rate: float) -> np.ndarray:
    return ceiling - scale * np.power(cost, -rate)


def extrapolate(costs: np.ndarray, values: np.ndarray, target: float) -> float:
    """The accuracy at ``target`` that a power law fitted to the looks so far predicts (the
    "pow3" curve ``c - a * cost**-b`` of Domhan et al., IJCAI 2015, bounded to accuracies):
    the signal a learning-curve-extrapolating pruner ranks by. With fewer than three looks (or
    no fit) there is nothing to extrapolate from: the last look's value."""
    if len(values) < 3:
        return float(values[-1])
    start = [min(1.0, values[-1] + 0.05), 0.1, 1.0]
    try:
        with warnings.catch_warnings():  # three looks fit three parameters exactly: no covariance
            warnings.simplefilter("ignore", OptimizeWarning)
            params, _ = curve_fit(_pow3, costs, values, p0=start, bounds=([0, 0, 0.01], [1, 1, 5]), maxfev=5000)
    except RuntimeError:  # no convergence
        return float(values[-1])
    return float(_pow3(np.asarray(target), *params))


def _rho(look: np.ndarray, final: np.ndarray, samples: list[np.ndarray]) -> str:
    """Spearman's rho of a look with the final accuracy and its bootstrap 95% interval."""
    low, high = np.nanpercentile([spearman(look[s], final[s]) for s in samples], [2.5, 97.5])
    return f"{spearman(look, final):+.2f} [{low:+.2f}, {high:+.2f}]"


def agreement_table(configs: list[list[Look]], seed: int = 0) -> str:
    """One row per look: its mean cost, Spearman's rho with the final accuracy [95% bootstrap
    interval], the same for the final accuracy extrapolated from the looks so far, and the
    share of the final top third it keeps. Configs that stopped early (a non-finite loss) are
    left out: they have no final accuracy."""
    whole = max(len(looks) for looks in configs)
    complete = [looks for looks in configs if len(looks) == whole]
    values = np.array([[look.val_acc for look in looks] for looks in complete])
    costs = np.array([[look.full_epochs for look in looks] for looks in complete])
    final = values[:, -1]
    rng = np.random.default_rng(seed)
    samples = [rng.integers(0, len(final), len(final)) for _ in range(BOOTSTRAP)]
    lines = [
        f"{len(complete)} configs trained to the end ({len(configs) - len(complete)} stopped early, left out)",
        "",
        "| look | cost, full-epoch equivalents | Spearman's rho with the final accuracy [95%] "
        "| the same, extrapolated (pow3) | final top third kept |",
        "| --- | --- | --- | --- | --- |",
    ]
    for column, look in enumerate(complete[0][:-1]):
        so_far = slice(0, column + 1)
        predicted = np.array([extrapolate(c[so_far], v[so_far], c[-1]) for c, v in zip(costs, values, strict=True)])
        extrapolated = _rho(predicted, final, samples) if column >= 2 else "-"
        lines.append(
            f"| {look.name} | {costs[:, column].mean():.3f} | {_rho(values[:, column], final, samples)} "
            f"| {extrapolated} | {kept_share(values[:, column], final):.0%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ladder", choices=LADDERS, default="c", help="whose rungs the trials report at")
    parser.add_argument("--configs", type=int, default=30, help="configs to train (the recorded runs: 30)")
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    parser.add_argument("--data-dir", default=str(DEFAULT_ARCHIVE), help="CIFAR-10 folder or archive")
    parser.add_argument("--csv", type=Path, help="every config's looks (default: beside the search records)")
    parser.add_argument("--report-only", action="store_true", help="print the table from --csv")
    args = parser.parse_args(argv)
    name = "rung_agreement" if args.ladder == "c" else f"rung_agreement_{args.ladder}"
    path = args.csv or DEFAULT_RECORDS / f"{name}_seed{args.seed}.csv"
    if not args.report_only:
        settings = Settings(
            spec_path=DEFAULT_SPEC,
            data_dir=str(Path(args.data_dir).resolve()),
            strategies=(every_look(args.ladder),),
            workers=1,
            out=DEFAULT_OUT,
            records=DEFAULT_RECORDS,
            **FULL,
        )
        write_csv(path, train_configs(settings, args.seed, args.configs))
    print(agreement_table(read_csv(path), args.seed))


if __name__ == "__main__":
    main()
