"""The search benchmark's peer adapters (BOHB, DEHB, SMAC3): each searches through its own
package on tiny generated images and lands in the same records as our strategies: an Optuna
study written by our StudyBridge, and the benchmark's ``SearchRun``."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import optuna
import pytest

from benchmarks.search_quality.peers import PEERS, Ladder, PeerEvaluator, Stop, config_space
from benchmarks.search_quality.settings import BY_KEY, Settings, strategy_spec
from search.study.keys import FULL_EPOCHS, PARAMS, REJECTED, trial_status

PACKAGES = {"bohb": ("hpbandster", "ConfigSpace"), "dehb": ("dehb", "ConfigSpace"), "smac": ("smac", "ConfigSpace")}
PEER_KEYS = {strategy.engine: key for key, strategy in BY_KEY.items() if strategy.is_peer and not strategy.rungs}

SPEC = """
study: {{name: peers, objectives: [{{metric: val_acc, direction: maximize}}], seed: 0}}
data: {{dataset: imagefolder, root: {root}, val_fraction: 0.25}}
model:
  num_classes: 3
  stem: {{width: {{choice: [4, 96]}}}}
  stages: [{{blocks: {{range: [1, 2]}}, width: 8}}, {{blocks: 1, width: 16}}]
train:
  epochs: {epochs}
  batch_size: 8
  optimizer:
    choice:
      - {{name: sgd, lr: {{range: [0.01, 0.2], log: true}}, nesterov: {{choice: [false, true]}}}}
      - {{name: adamw, lr: {{range: [0.0003, 0.003], log: true}}}}
budget: {{max_params: 10000}}
"""


def settings_for(tmp_path: Path, root: Path, epochs: int) -> Settings:
    spec = tmp_path / "peers.yaml"
    spec.write_text(SPEC.format(root=root, epochs=epochs))
    return Settings(
        spec_path=spec,
        data_dir=None,
        strategies=tuple(BY_KEY[k] for k in PEER_KEYS.values()),
        seed_groups={"tuning": (0,)},
        budgets=(2,),
        retrain_seeds=(),
        workers=1,
        out=tmp_path / "out",
        records=tmp_path / "records",
    )


def needs(engine: str) -> None:
    missing = [name for name in PACKAGES[engine] if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"the {engine} peer needs {', '.join(missing)}: pip install -e '.[bench]'")


@pytest.mark.parametrize("engine", sorted(PEERS))
def test_each_peer_runs_two_trials_into_our_records(engine: str, tmp_path: Path, tiny_imagefolder: Path) -> None:
    needs(engine)
    settings = settings_for(tmp_path, tiny_imagefolder, epochs=1)
    evaluator = PeerEvaluator(settings, BY_KEY[PEER_KEYS[engine]], seed=0, budget=2)
    PEERS[engine](evaluator, 0, tmp_path)
    run = evaluator.close(0.0)
    trained = [t for t in evaluator.study.get_trials() if trial_status(t) != "rejected"]
    assert run.spent == 2 and len(trained) == 2  # one-epoch trials: two trials fill the budget
    assert [status for _, _, status in run.outcomes if status not in ("rejected", "repeat")] == ["complete", "complete"]
    for trial, (_, value, params) in zip(trained, run.completions):
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert trial.values == [value] and trial.intermediate_values == {1: value}
        assert params in ({}, trial.params) and 0 < trial.user_attrs[PARAMS] <= 10_000  # a new best keeps them
        # The conditional parameters of the optimizer not chosen are absent, as when we sample.
        chosen = trial.params["train.optimizer.name"]
        assert {k for k in trial.params if k.startswith("train.optimizer.")} == {
            "train.optimizer.name",
            *(k for k in trial.params if k.startswith(f"train.optimizer.{chosen}.")),
        }
    assert run.completions[0][2] == trained[0].params  # the first completion is a new best
    assert [spent for spent, _, _ in run.completions] == [1, 2]


def test_over_budget_is_free_and_a_promotion_pays_only_its_extra_epochs(tmp_path: Path, tiny_imagefolder: Path) -> None:
    needs("dehb")
    settings = settings_for(tmp_path, tiny_imagefolder, epochs=2)
    evaluator = PeerEvaluator(settings, BY_KEY[PEER_KEYS["dehb"]], seed=0, budget=10)
    config = dict(evaluator.space.sample_configuration())
    config["model.stem.width"] = "96"  # 96 channels in the stem: over the 10,000-parameter budget
    assert evaluator.evaluate(config, 2) == (0.0, 0)
    config["model.stem.width"] = "4"
    low, low_cost = evaluator.evaluate(config, 1)
    high, high_cost = evaluator.evaluate(config, 2)  # continues the paused one-epoch run
    run = evaluator.close(0.0)
    assert (low_cost, high_cost) == (1, 1) and run.spent == 2
    rejected, rung, full = evaluator.study.get_trials()
    assert REJECTED in rejected.user_attrs and trial_status(rejected) == "rejected"
    assert trial_status(rung) == "pruned" and rung.intermediate_values == {1: low}
    assert trial_status(full) == "complete" and full.intermediate_values == {1: low, 2: high}
    assert [status for _, _, status in run.outcomes] == ["rejected", "pruned", "complete"]


def test_the_config_space_holds_our_space(tmp_path: Path, tiny_imagefolder: Path) -> None:
    pytest.importorskip("ConfigSpace")
    settings = settings_for(tmp_path, tiny_imagefolder, epochs=1)
    spec = strategy_spec(settings, BY_KEY["g"], 0, 2)
    space, codec = config_space(spec, seed=0)
    assert {str(c.child.name) for c in space.conditions} == {
        "train.optimizer.sgd.lr",
        "train.optimizer.sgd.nesterov",
        "train.optimizer.adamw.lr",
    }
    for config in space.sample_configuration(20):
        trial = spec.space.sample(optuna.trial.FixedTrial(codec.decode(config)))  # every draw is ours
        assert trial.model.stem.width in (4, 96) and isinstance(trial.train.optimizer.lr, float)


def test_the_rung_ladder_maps_a_peers_budgets_onto_our_rungs() -> None:
    ladder = Ladder(5, BY_KEY["i-rungs"].fidelity_rungs)  # a quarter epoch at 8 px, 1 and 3 epochs, then 5
    assert ladder.min_fidelity == pytest.approx(5 / 27)
    stops = [ladder.stop(5 / 3**k) for k in (3, 2, 1, 0)]
    assert stops == [Stop(rung=0), Stop(rung=1), Stop(rung=2), Stop(epoch=5)] and ladder.is_full(stops[-1])
    plain = Ladder(5, ())  # round 2's: epochs 1, 2 and 5
    assert [plain.stop(5 / 3**k) for k in (2, 1, 0)] == [Stop(epoch=1), Stop(epoch=2), Stop(epoch=5)]


def test_a_peer_on_the_rung_ladder_pays_the_cheap_look_then_the_rest(tmp_path: Path, tiny_imagefolder: Path) -> None:
    needs("smac")
    settings = settings_for(tmp_path, tiny_imagefolder, epochs=2)
    rungs = ({"fraction": 0.5, "image_size": 16}, {"epochs": 1})
    strategy = replace(BY_KEY["i-rungs"], rungs=rungs)
    evaluator = PeerEvaluator(settings, strategy, seed=0, budget=10)
    config = dict(evaluator.space.sample_configuration())
    config["model.stem.width"] = "4"
    cheap, cheap_cost = evaluator.evaluate(config, evaluator.min_fidelity)
    full, full_cost = evaluator.evaluate(config, 2)  # promoted: trains on from the rung
    again, again_cost = evaluator.evaluate(config, evaluator.min_fidelity)  # reached before: a repeat
    run = evaluator.close(0.0)
    assert 0 < cheap_cost < 0.2 and again == cheap and again_cost == 0  # half an epoch at half the side
    assert cheap_cost + full_cost == pytest.approx(run.spent) and run.spent < 2
    paused, completed = evaluator.study.get_trials()
    assert trial_status(paused) == "pruned" and trial_status(completed) == "complete" and completed.values == [full]
    assert paused.user_attrs[FULL_EPOCHS] == pytest.approx(cheap_cost)
    assert completed.user_attrs[FULL_EPOCHS] == pytest.approx(run.spent)
    assert [status for _, _, status in run.outcomes] == ["pruned", "complete", "repeat"] and run.repeats == 1
