"""The search benchmark's bookkeeping: a shorter budget read from a longer run's prefix, and
the intervals and paired comparison over seeds."""

from __future__ import annotations

from benchmarks.search_quality.analysis import Cell, curve_band, mean_ci, paired
from benchmarks.search_quality.records import SearchRun
from benchmarks.search_quality.settings import BY_KEY


def a_run(strategy: str, seed: int, values: list[float]) -> SearchRun:
    """A 12-epoch run: a rejection, then 3-epoch trials completing with ``values``, each followed
    by a trial pruned after two epochs, until the budget cuts the one running."""
    run = SearchRun(strategy, seed, budget_epochs=12)
    run.ended(0, "rejected")
    trials = [(3, value) for value in values]
    plan = [step for trial in trials for step in (trial, (2, None))]
    for epochs, value in plan:
        started = run.epochs_spent
        for _ in range(epochs):
            run.spend_epoch()
            if run.exhausted:
                break
        if run.epochs_spent - started < epochs:
            run.ended(started, "cut")
            break
        if value is None:
            run.ended(started, "pruned")
        else:
            run.complete(value, {"x": len(run.completions)})
            run.ended(started, "complete")
        if run.exhausted:
            break
    return run


def test_a_shorter_budget_is_the_prefix_of_a_longer_run() -> None:
    run = a_run("c", 0, [0.3, 0.5, 0.6])  # completes at 3 and 8, prunes at 5 and 10; the 3rd is cut at 12
    assert run.epochs_spent == 12
    assert run.counts_at(12) == {"complete": 2, "pruned": 2, "rejected": 1, "cut": 1, "failed": 0, "repeat": 0}
    # At 6 epochs: the trial that ran from 5 to 8 is cut there; the later ones never started.
    assert run.counts_at(6) == {"complete": 1, "pruned": 1, "rejected": 1, "cut": 1, "failed": 0, "repeat": 0}
    assert [run.best_at(e) for e in (2, 3, 7, 8, 12)] == [None, 0.3, 0.3, 0.5, 0.5]
    assert run.best_params_at(8) == (0.5, {"x": 1})


def test_intervals_and_the_paired_comparison_over_seeds() -> None:
    ours = [a_run("c", seed, [0.30 + 0.01 * seed, 0.40 + 0.01 * seed]) for seed in range(5)]  # done at 3, 8
    theirs = [a_run("g", seed, [0.30, 0.35 + 0.02 * seed]) for seed in range(5)]
    mean, low, high = mean_ci([r.best_at(12) for r in ours])
    assert mean is not None and low is not None and high is not None and low < mean < high
    curve, lows, highs = curve_band(ours, 12)
    assert curve[:3] == [None] * 3 and curve[12] == mean  # none until every seed has completed a trial
    assert all(lo <= m <= hi for m, lo, hi in zip(curve[3:], lows[3:], highs[3:]))
    cells = [Cell(BY_KEY[k], "tuning", 12, tuple(runs), (), (), (), None) for k, runs in (("c", ours), ("g", theirs))]
    comparison = paired(*cells)
    expected = [o.best_at(12) - t.best_at(12) for o, t in zip(ours, theirs)]
    assert list(comparison.diffs) == expected
    assert comparison.wins == sum(d > 0 for d in expected) and comparison.losses == sum(d < 0 for d in expected)
    assert comparison.p_value is not None and 0 < comparison.p_value <= 1
