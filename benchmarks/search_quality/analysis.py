"""From runs to figures: best validation accuracy at each budget with a 95% confidence interval
(bootstrap over search seeds), the anytime curve (at every whole full-epoch equivalent of
compute), the compute to reach random search's final best, the paired comparison of the
default with each peer, and the verdict."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from .records import OUTCOMES, UNIT, SearchRun
from .retraining import Retrained
from .settings import BASELINE, OURS, Settings, Strategy

RESAMPLES = 10_000
# The goal, per budget: the default's compute to reach (a)'s final best, as a share of (a)'s.
GOAL_SHARE = {60: 1 / 3, 180: 1 / 5}
PEER_KEYS = ("e", "e-rungs", "f", "g", "h", "i", "i-rungs")  # the other tools a user would pick instead


def mean_ci(values: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    """Mean and 95% percentile-bootstrap interval over seeds (no interval from one value)."""
    if not values:
        return None, None, None
    mean = statistics.fmean(values)
    if len(values) < 2 or max(values) == min(values):
        return mean, mean if len(values) > 1 else None, mean if len(values) > 1 else None
    result = stats.bootstrap((np.asarray(values),), np.mean, n_resamples=RESAMPLES, method="percentile", random_state=0)
    return mean, float(result.confidence_interval.low), float(result.confidence_interval.high)


def curve_band(runs: Sequence[SearchRun], budget: int) -> tuple[list, list, list]:
    """Mean and 95% bootstrap band over seeds of the best-so-far at 0..budget full-epoch
    equivalents (None until every seed has completed a trial)."""
    matrix = np.array(
        [[np.nan if (v := r.best_at(e)) is None else v for e in range(budget + 1)] for r in runs], dtype=float
    )
    mean: list = [None] * (budget + 1)
    low: list = [None] * (budget + 1)
    high: list = [None] * (budget + 1)
    full = ~np.isnan(matrix).any(axis=0) if len(runs) else np.zeros(budget + 1, dtype=bool)
    if not full.any():
        return mean, low, high
    columns = matrix[:, full]
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(runs), size=(RESAMPLES // 10, len(runs)))
    means = columns[picks].mean(axis=1)  # resamples x epochs
    lows, highs = np.percentile(means, [2.5, 97.5], axis=0)
    for index, epoch in enumerate(np.flatnonzero(full)):
        mean[epoch] = float(columns[:, index].mean())
        low[epoch], high[epoch] = float(lows[index]), float(highs[index])
    return mean, low, high


def first_reaching(curve: Sequence[float | None], target: float) -> int | None:
    """The first index at which ``curve`` is at least ``target`` (None: never)."""
    return next((i for i, v in enumerate(curve) if v is not None and v >= target - 1e-12), None)


@dataclass(frozen=True)
class Cell:
    """One strategy at one budget over one group of seeds."""

    strategy: Strategy
    group: str
    budget: int
    runs: tuple[SearchRun, ...]
    curve: tuple
    low: tuple
    high: tuple
    target: float | None
    retrained: Retrained | None = None

    @property
    def finals(self) -> list[float]:
        return [v for r in self.runs if (v := r.best_at(self.budget)) is not None]

    @property
    def best(self) -> tuple[float | None, float | None, float | None]:
        return mean_ci(self.finals)

    @property
    def epochs_to_target(self) -> int | None:
        return None if self.target is None else first_reaching(self.curve, self.target)

    @property
    def seed_epochs(self) -> list[int | None]:
        if self.target is None:
            return [None for _ in self.runs]
        return [first_reaching([r.best_at(e) for e in range(self.budget + 1)], self.target) for r in self.runs]

    @property
    def counts(self) -> dict[str, int]:
        totals = dict.fromkeys(OUTCOMES, 0)
        for run in self.runs:
            for key, n in run.counts_at(self.budget).items():
                totals[key] += n
        return totals

    @property
    def repeats(self) -> int:
        return self.counts["repeat"]

    @property
    def complete(self) -> bool:
        """Every seed of the group ran."""
        return all(run is not None for run in self.runs)


def cells(
    settings: Settings, runs: Sequence[SearchRun], retrained: dict[str, Retrained], budget_runs: dict
) -> list[Cell]:
    """A cell per strategy, group and budget; ``budget_runs`` maps (strategy, budget) to the
    budget whose run holds its result (its own, or the longest one's prefix)."""
    out = []
    for group, seeds in settings.seed_groups.items():
        for budget in settings.budgets:
            target = _target(runs, seeds, budget_runs.get((BASELINE, budget)), budget)
            for strategy in settings.strategies:
                run_budget = budget_runs[(strategy.key, budget)]
                own = tuple(
                    sorted(
                        (r for r in runs if r.strategy == strategy.key and r.seed in seeds and r.budget == run_budget),
                        key=lambda r: r.seed,
                    )
                )
                mean, low, high = curve_band(own, budget)
                name = f"{strategy.key}_b{budget}_{group}"
                out.append(
                    Cell(
                        strategy, group, budget, own, tuple(mean), tuple(low), tuple(high), target, retrained.get(name)
                    )
                )
    return out


def pooled(all_cells: Sequence[Cell]) -> list[Cell]:
    """Each strategy at each budget over every group's seeds together (group ``all``), for the
    paired comparisons over all seeds; no curve, target or winner (those are per group)."""
    by_key: dict[tuple[str, int], list[SearchRun]] = {}
    first: dict[tuple[str, int], Cell] = {}
    for cell in all_cells:
        key = (cell.strategy.key, cell.budget)
        by_key.setdefault(key, []).extend(cell.runs)
        first.setdefault(key, cell)
    return [
        Cell(cell.strategy, "all", cell.budget, tuple(sorted(by_key[key], key=lambda r: r.seed)), (), (), (), None)
        for key, cell in first.items()
    ]


def _target(runs: Sequence[SearchRun], seeds: Sequence[int], run_budget: int | None, budget: int) -> float | None:
    """(a)'s final best validation accuracy at ``budget``, the mean over the group's seeds."""
    finals = [
        v
        for r in runs
        if r.strategy == BASELINE and r.seed in seeds and r.budget == run_budget
        if (v := r.best_at(budget)) is not None
    ]
    return statistics.fmean(finals) if finals else None


@dataclass(frozen=True)
class Paired:
    """The default against one other strategy, seed by seed: ``ours - theirs`` in best validation accuracy."""

    other: str
    diffs: tuple[float, ...]
    mean: float | None
    low: float | None
    high: float | None
    wins: int
    losses: int
    p_value: float | None


def paired(ours: Cell, other: Cell) -> Paired:
    """Seed-by-seed differences, their mean with a bootstrap 95% interval, and Wilcoxon's signed-rank p."""
    theirs = {r.seed: r.best_at(other.budget) for r in other.runs}
    diffs = tuple(
        v - w for r in ours.runs if (v := r.best_at(ours.budget)) is not None and (w := theirs.get(r.seed)) is not None
    )
    mean, low, high = mean_ci(diffs)
    p_value = None
    if len(diffs) >= 2 and any(diffs):
        p_value = float(stats.wilcoxon(diffs).pvalue)
    wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    return Paired(other.strategy.key, diffs, mean, low, high, wins, losses, p_value)


def verdict(group_cells: Sequence[Cell], test_noise: float | None) -> list[str]:
    """The goal, budget by budget, for one group of seeds: met or missed, and by how much."""
    lines = []
    for budget in sorted({c.budget for c in group_cells}):
        at = {c.strategy.key: c for c in group_cells if c.budget == budget}
        if OURS not in at or BASELINE not in at or not at[OURS].runs or not at[BASELINE].runs:
            lines.append(f"{budget} {UNIT}: not assessed (needs finished runs of {BASELINE} and {OURS})")
            continue
        lines.append(f"{budget} {UNIT}: " + "; ".join(_goals(at, budget, test_noise)))
    return lines


def _beyond_noise(at: dict[str, Cell]) -> str:
    """Whether the candidate default is ahead of the best peer (by mean best validation accuracy)
    beyond the noise: the paired 95% interval of its difference from that peer lies above zero."""
    peers = {k: m for k in PEER_KEYS if k in at and (m := at[k].best[0]) is not None}
    if not peers:
        return "ahead of the best peer beyond the noise: not assessed (no peer ran)"
    best = max(peers, key=lambda key: peers[key])
    p = paired(at[OURS], at[best])
    if p.low is None or p.mean is None:
        return f"ahead of the best peer ({best}) beyond the noise: not assessed (too few paired seeds)"
    ok = p.low > 0
    return (
        f"ahead of the best peer ({best}) beyond the noise: {p.mean:+.2%} [{p.low:+.2%}, {p.high:+.2%}] "
        f"({'met' if ok else 'missed'})"
    )


def _goals(at: dict[str, Cell], budget: int, test_noise: float | None) -> list[str]:
    ours, baseline = at[OURS], at[BASELINE]
    means = {key: c.best[0] for key, c in at.items() if c.best[0] is not None}
    first = max(means, key=lambda key: means[key]) if means else None
    parts = [f"rank 1 in mean best val: {'met' if first == OURS else f'missed ({first} is first)'}"]
    parts.append(_beyond_noise(at))
    needed, own = baseline.epochs_to_target, ours.epochs_to_target
    share = GOAL_SHARE.get(budget)
    if needed and own is not None:
        ratio = own / needed
        ok = share is not None and ratio <= share + 1e-9
        parts.append(f"compute to (a)'s final best {own} vs {needed} = {ratio:.2f}x ({'met' if ok else 'missed'})")
    else:
        parts.append("compute to (a)'s final best: never reached (missed)")
    tests = {k: rt.test_mean for k in PEER_KEYS if k in at and (rt := at[k].retrained) is not None}
    if ours.retrained is not None and tests and test_noise is not None:
        best_peer = max(tests, key=lambda key: tests[key])
        gap = ours.retrained.test_mean - tests[best_peer]
        ok = gap > test_noise
        parts.append(
            f"retrained test vs best peer ({best_peer}) {gap:+.2%}, noise {test_noise:.2%} "
            f"({'met' if ok else 'missed'})"
        )
    else:
        parts.append("retrained test vs peers: not assessed")
    return parts
