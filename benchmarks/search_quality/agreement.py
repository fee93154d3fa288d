"""How well each cheap look at a config ranks it: round 3's rung ladder, measured without pruning.

Run: ``python benchmarks/rung_agreement.py [--configs 30] [--seed 0] [--data-dir D]``. On the
search benchmark's task (``spaces/cifar_cpu.yaml`` as ``search_efficiency.py`` runs it:
2,000 training and 5,000 validation images at 16 px, 5-epoch trials), it samples configs at
random (the budget check as in a search), trains every one to its end with candidate (c)'s
rungs (a quarter epoch at 8 px, 1 epoch, 3 epochs) and records the validation accuracy at
every look: each rung and each epoch's end. It prints, for each look, its cost in full-epoch
equivalents and how well its values rank the configs as their final accuracy does:

- Spearman's rank correlation with the final accuracy, with a bootstrap 95% interval over
  the configs;
- the share of the final top third that halving at that look (keeping its top third, as
  reduction factor 3 does) would keep.

Every config's values are written to ``--csv`` (default
``benchmarks/results/search_quality/rung_agreement_seed<N>.csv``), and the table is printed
again from that file with ``--report-only``.
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .settings import (
    DEFAULT_ARCHIVE,
    DEFAULT_OUT,
    DEFAULT_RECORDS,
    DEFAULT_SPEC,
    FULL,
    NO_WARM_START,
    RUNG_HALVING,
    Settings,
    Strategy,
    strategy_spec,
)

# Random sampling (every config independent of the others' results) with (c)'s rungs, which
# the trials report at; nothing is pruned here: every config trains to its end.
EVERY_LOOK = Strategy(
    "rungs-unpruned", "random configs, every look", {**RUNG_HALVING, "sampler": {"name": "random"}, **NO_WARM_START}
)
BOOTSTRAP = 2000


@dataclass(frozen=True)
class Look:
    """One report of a trial: where it was taken and what it said."""

    name: str  # "rung 0 (epoch 0, 8 px)", "epoch 2", ...
    full_epochs: float
    val_acc: float


def train_configs(settings: Settings, seed: int, count: int) -> list[list[Look]]:
    """Sample ``count`` configs that fit the budget and train each to its end, every look recorded."""
    import optuna

    from search.data import load_dataset
    from search.engine.bridge import StudyBridge, TrialSetup
    from search.engine.samplers import create_study

    from .sessions import EpochSession

    spec = strategy_spec(settings, EVERY_LOOK, seed, budget=count)
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


def agreement_table(configs: list[list[Look]], seed: int = 0) -> str:
    """One row per look: its mean cost, Spearman's rho with the final accuracy [95% bootstrap
    interval] and the share of the final top third it keeps. Configs that stopped early (a
    non-finite loss) are left out: they have no final accuracy."""
    whole = max(len(looks) for looks in configs)
    complete = [looks for looks in configs if len(looks) == whole]
    values = np.array([[look.val_acc for look in looks] for looks in complete])
    costs = np.array([[look.full_epochs for look in looks] for looks in complete]).mean(axis=0)
    final = values[:, -1]
    rng = np.random.default_rng(seed)
    samples = [rng.integers(0, len(final), len(final)) for _ in range(BOOTSTRAP)]
    lines = [
        f"{len(complete)} configs trained to the end ({len(configs) - len(complete)} stopped early, left out)",
        "",
        "| look | cost, full-epoch equivalents | Spearman's rho with the final accuracy [95%] | final top third kept |",
        "| --- | --- | --- | --- |",
    ]
    for column, look in enumerate(complete[0][:-1]):
        rho = spearman(values[:, column], final)
        interval = np.nanpercentile([spearman(values[s, column], final[s]) for s in samples], [2.5, 97.5])
        kept = kept_share(values[:, column], final)
        low, high = interval
        lines.append(f"| {look.name} | {costs[column]:.3f} | {rho:+.2f} [{low:+.2f}, {high:+.2f}] | {kept:.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=30, help="configs to train (the recorded run: 30)")
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    parser.add_argument("--data-dir", default=str(DEFAULT_ARCHIVE), help="CIFAR-10 folder or archive")
    parser.add_argument("--csv", type=Path, help="every config's looks (default: beside the search records)")
    parser.add_argument("--report-only", action="store_true", help="print the table from --csv")
    args = parser.parse_args(argv)
    path = args.csv or DEFAULT_RECORDS / f"rung_agreement_seed{args.seed}.csv"
    if not args.report_only:
        settings = Settings(
            spec_path=DEFAULT_SPEC,
            data_dir=str(Path(args.data_dir).resolve()),
            strategies=(EVERY_LOOK,),
            workers=1,
            out=DEFAULT_OUT,
            records=DEFAULT_RECORDS,
            **FULL,
        )
        write_csv(path, train_configs(settings, args.seed, args.configs))
    print(agreement_table(read_csv(path), args.seed))


if __name__ == "__main__":
    main()
