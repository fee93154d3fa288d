"""The search benchmark's bookkeeping: compute counted in full-epoch equivalents exactly as the
tool counts it, a shorter budget read from a longer run's prefix, the intervals and paired
comparison over seeds, records read back instead of rerun, and round 3's queue order."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna
import pytest

from benchmarks.search_quality import store
from benchmarks.search_quality.agreement import Look, agreement_table, extrapolate, kept_share
from benchmarks.search_quality.analysis import Cell, cells, curve_band, mean_ci, paired, pooled
from benchmarks.search_quality.ours import drive
from benchmarks.search_quality.plan import ROUND3_KEYS, ROUND3_TIERS, queue
from benchmarks.search_quality.records import SearchRun
from benchmarks.search_quality.report import report_text
from benchmarks.search_quality.sessions import EpochSession
from benchmarks.search_quality.settings import BY_KEY, CANDIDATES, DEFAULT_SPEC, OURS, Settings, Strategy, strategy_spec
from search.budget.compute import flops_counter, full_epochs, rung_costs, schedule
from search.config import Rung, load_spec
from search.data import load_dataset
from search.engine.bridge import StudyBridge, TrialSetup
from search.engine.samplers import create_study
from search.study.keys import FULL_EPOCHS, REPEAT_OF


def a_run(strategy: str, seed: int, values: list[float]) -> SearchRun:
    """A 12-epoch run: a rejection, then 3-epoch trials completing with ``values``, each followed
    by a trial pruned after two epochs, until the budget cuts the one running."""
    run = SearchRun(strategy, seed, budget=12)
    run.ended(0, "rejected")
    trials = [(3, value) for value in values]
    plan = [step for trial in trials for step in (trial, (2, None))]
    for epochs, value in plan:
        started = run.spent
        for _ in range(epochs):
            run.spend(1.0)
            if run.exhausted:
                break
        if run.spent - started < epochs:
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
    assert run.spent == 12
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


def test_the_report_pairs_every_seed_of_both_groups(tmp_path: Path) -> None:
    """Over the tuning and the held-out seeds together, the candidate default and round 2's
    default (c-old) are each compared seed by seed with every other strategy."""
    values = {OURS: 0.40, "c-old": 0.42, "e": 0.38}
    runs = [a_run(key, seed, [0.30, value + 0.01 * (seed % 3)]) for key, value in values.items() for seed in range(4)]
    settings = replace(
        settings_for(tmp_path, tmp_path),
        strategies=tuple(BY_KEY[key] for key in values),
        seed_groups={"tuning": (0, 1), "held-out": (2, 3)},
        budgets=(12,),
    )
    every = pooled(cells(settings, runs, {}, {(key, 12): 12 for key in values}))
    comparison = paired(*(next(c for c in every if c.strategy.key == key) for key in ("c-old", "e")))
    assert comparison.diffs == pytest.approx([0.04] * 4) and comparison.wins == 4  # all four seeds, both groups
    report = report_text(settings, cells(settings, runs, {}, {(key, 12): 12 for key in values}), None)
    pooled_part = report.split("### All search seeds (0, 1, 2, 3)")[1]
    assert "| 12 | (c-old) minus (e) (peer) | 4 | +4.00%" in pooled_part
    assert f"| 12 | ({OURS}) minus (c-old) | 4 | -2.00%" in pooled_part


SPEC = """
study: {{name: rungs, objectives: [{{metric: val_acc, direction: maximize}}], seed: 0}}
data: {{dataset: imagefolder, root: {root}, val_fraction: 0.25}}
model:
  num_classes: 3
  stem: {{width: {{choice: [4, 8]}}}}
  stages: [{{blocks: {{range: [1, 2]}}, width: 8}}, {{blocks: 1, width: 16}}]
train:
  epochs: 2
  batch_size: 6
  optimizer: {{name: sgd, lr: {{range: [0.01, 0.2], log: true}}}}
budget: {{max_params: 10000}}
"""
RUNGS = ({"fraction": 0.5, "image_size": 16}, {"epochs": 1})  # half the first epoch at half the side


def settings_for(tmp_path: Path, root: Path, strategies: tuple[Strategy, ...] = ()) -> Settings:
    spec = tmp_path / "rungs.yaml"
    spec.write_text(SPEC.format(root=root))
    return Settings(
        spec_path=spec,
        data_dir=None,
        strategies=strategies,
        seed_groups={"tuning": (0,)},
        budgets=(3,),
        retrain_seeds=(),
        workers=1,
        out=tmp_path / "out",
        records=tmp_path / "records",
    )


def test_the_benchmark_spends_full_epoch_equivalents_as_the_tool_counts_them(tmp_path: Path, tiny_imagefolder: Path):
    rungs_study = {"pruner": {"name": "successive_halving", "reduction_factor": 2, "rungs": list(RUNGS)}}
    strategy = Strategy("c", "rungs", rungs_study)
    settings = settings_for(tmp_path, tiny_imagefolder, (strategy,))
    spec = strategy_spec(settings, strategy, 0, 3)
    data = load_dataset(spec.data, download=False)
    study = create_study(spec, optuna.storages.InMemoryStorage())
    bridge = StudyBridge(study, spec, TrialSetup(data.image_size))
    run = SearchRun("c", 0, 3)
    drive(bridge, data, run, slots=1, epochs=2)
    assert data.image_size == 32 and len(data.train) // 6 == 4 and run.exhausted
    trained = [t for t in study.get_trials() if FULL_EPOCHS in t.user_attrs]
    assert len(trained) >= 2 and run.repeats == sum(REPEAT_OF in t.user_attrs for t in study.get_trials())
    assert sorted(trained[0].intermediate_values) == [0, 1]  # reported at both rungs, by their indices
    rungs = tuple(Rung(**rung) for rung in RUNGS)
    steps = len(data.train) // 6
    stretches = schedule(2, steps, rungs)
    for trial in trained:
        # What each trial may have cost: its rungs' and its whole run's, in the tool's own numbers.
        config = spec.space.sample(optuna.trial.FixedTrial(trial.params))
        flops_at = flops_counter(config.model, data.image_size)
        allowed = [*rung_costs(stretches, steps, flops_at), full_epochs(stretches, steps, flops_at)]
        assert trial.user_attrs[FULL_EPOCHS] in allowed
    assert run.spent == pytest.approx(sum(t.user_attrs[FULL_EPOCHS] for t in trained), abs=1e-6)
    assert run.spent - 3 < 1.0  # the last step may pass the budget: the trial it ends is cut there
    # A look at the first rung costs half an epoch at half the side: about 1/8 of an epoch.
    config = spec.space.sample(optuna.trial.FixedTrial(trained[0].params))
    flops_at = flops_counter(config.model, data.image_size)
    session = EpochSession(config, data, rungs)
    first = session.advance()
    session.close(stop=True)
    assert first is not None and first.rung == 0 and first.epoch == 0
    assert session.cost == pytest.approx(0.5 * flops_at(16) / flops_at(32), rel=1e-12) and session.cost < 0.2


def test_a_recorded_run_is_read_back_not_run_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_for(tmp_path, tmp_path / "images", (BY_KEY["c"],))
    strategy = BY_KEY["c"]
    ran: list[int] = []

    def fake_search(settings: Settings, strategy: Strategy, seed: int, budget: int) -> SearchRun:
        ran.append(seed)
        run = a_run(strategy.key, seed, [0.3, 0.5, 0.6])
        run.budget = budget
        return run

    monkeypatch.setattr(store, "search", fake_search)
    first = store.saved_search(settings, strategy, 0, 12)
    path = store.run_path(settings, strategy, 0, 12)
    again = store.saved_search(settings, strategy, 0, 12)
    assert ran == [0] and again == first and path.exists() and path.stat().st_size < 2_000
    document = json.loads(path.read_text())
    assert document["repeats"] == 0 and document["run"]["spent"] == 12
    # Only the new bests keep their parameters: a record stays small.
    assert [params for _, _, params in document["run"]["completions"]] == [{"x": 0}, {"x": 1}]
    changed = replace(settings, data={"val_subset": 100})  # another task: another fingerprint, run again
    store.saved_search(changed, strategy, 0, 12)
    assert ran == [0, 0]
    path.write_text("{not json")  # a damaged record is run again, never a traceback
    store.saved_search(changed, strategy, 0, 12)
    assert ran == [0, 0, 0]


def test_round3_queue_puts_the_candidates_first_and_the_longest_budget_first(tmp_path: Path) -> None:
    settings = replace(
        settings_for(tmp_path, tmp_path / "images", tuple(BY_KEY[k] for k in ROUND3_KEYS)),
        seed_groups={"tuning": (0, 1), "held-out": (5,)},
        budgets=(60, 180),
    )
    jobs = [(s.key, seed, budget) for s, seed, budget in queue(settings, ROUND3_TIERS)]
    assert jobs[: len(CANDIDATES) + 1] == [(key, 0, 180) for key in (*CANDIDATES, "c-old")]
    assert jobs.index(("i", 0, 180)) < jobs.index(("i", 0, 60)) < jobs.index(("a", 0, 180)) < jobs.index(("c", 5, 180))
    assert ("c", 0, 60) not in jobs  # its 60 is the 180 run's prefix
    assert ("c-gp", 5, 180) not in jobs and ("i", 5, 60) in jobs  # held out: the defaults, (c) and the tied peers
    assert jobs.index(("c-8px", 5, 180)) < jobs.index(("c", 5, 180))
    assert jobs[-1][0] == "f" and len(jobs) == len(set(jobs))


def test_the_spaces_prune_as_the_benchmark_s_default_does(tmp_path: Path) -> None:
    benchmark = replace(settings_for(tmp_path, tmp_path), spec_path=DEFAULT_SPEC)
    ours = strategy_spec(benchmark, BY_KEY[OURS], seed=0, budget=60).study.pruner
    assert load_spec(DEFAULT_SPEC).study.pruner == ours
    # cifar_5m: the same ladder at its scale (30 epochs at 32 px): the first fifth at half the side.
    main = load_spec(DEFAULT_SPEC.parent / "cifar_5m.yaml").study.pruner
    assert main == replace(ours, rungs=(Rung(epochs=6, image_size=16), Rung(epochs=18)))
    assert ours.rungs == (Rung(epochs=1, image_size=8), Rung(epochs=3))


def test_the_rung_agreement_table_scores_each_look_against_the_final_accuracy() -> None:
    finals = [0.30, 0.50, 0.40, 0.20, 0.60, 0.10]
    configs = [
        [Look("rung 0", 0.06, 1 - final), Look("epoch 1", 1.0, final / 2), Look("epoch 5", 5.0, final)]
        for final in finals
    ]
    configs.append([Look("rung 0", 0.06, 0.9)])  # a non-finite loss ended it: no final accuracy
    table = agreement_table(configs).splitlines()
    assert table[0].startswith("6 configs trained to the end (1 stopped early")
    reversed_look, same_order = table[-2].split(" | "), table[-1].split(" | ")
    assert reversed_look[0] == "| rung 0" and reversed_look[2].startswith("-1.00") and reversed_look[4] == "0% |"
    assert same_order[0] == "| epoch 1" and same_order[2].startswith("+1.00") and same_order[4] == "100% |"
    assert reversed_look[3] == same_order[3] == "-"  # under three looks: nothing to extrapolate from
    assert kept_share(np.array([3.0, 2.0, 1.0]), np.array([1.0, 3.0, 2.0])) == 0.0  # the top third: one config


def test_the_extrapolation_recovers_a_power_law_curve_and_needs_three_looks() -> None:
    costs = np.array([0.8, 1.8, 2.8])
    curve = 0.6 - 0.3 * costs**-0.7
    assert extrapolate(costs, curve, 4.8) == pytest.approx(0.6 - 0.3 * 4.8**-0.7, abs=1e-3)
    assert extrapolate(costs, curve, 4.8) > curve[-1]  # still rising: the forecast is above the last look
    assert extrapolate(costs[:2], curve[:2], 4.8) == curve[1]
