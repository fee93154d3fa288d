"""``study.prior``: the sampler draws near the user's designs at first and less as evidence
accumulates, a bad prior fades and the search still reaches good configs; and GP sampling on a
conditional, categorical space end to end through the bridge. No training: in-memory studies
told values from a known function."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import optuna
import pytest

from search.config import PriorConfig, SpecError, load_spec, parse_spec
from search.engine.bridge import StudyBridge, TrialSetup
from search.engine.prior import PriorSampler, prior_weight
from search.engine.samplers import create_study, learns_from_rejections
from search.study.keys import PRIOR_DESIGN, is_finished

SPACE = """
study: {name: prior, n_trials: 12, sampler: {name: random}, seed: 0}
data: {dataset: imagefolder, image_size: 16}
model:
  num_classes: 3
  stem: {width: 8}
  stages: [{blocks: {range: [1, 6]}, width: {choice: [8, 16, 32, 64]}}]
train: {epochs: 2, optimizer: {name: sgd, lr: {range: [0.0001, 1.0], log: true}}}
"""
DESIGN = {"model.stages.0.blocks": 2, "model.stages.0.width": 16, "train.optimizer.lr": 0.01}
FAR = {"model.stages.0.blocks": 6, "model.stages.0.width": 64, "train.optimizer.lr": 0.3}


def score(params: dict) -> float:
    """Higher nearer ``FAR``: a known landscape whose best config is far from ``DESIGN``."""
    return -(
        abs(math.log10(params["train.optimizer.lr"] / FAR["train.optimizer.lr"]))
        + abs(params["model.stages.0.blocks"] - FAR["model.stages.0.blocks"]) / 5
        + (params["model.stages.0.width"] != FAR["model.stages.0.width"])
    )


def closeness(params: dict) -> float:
    """Higher nearer ``DESIGN``: a landscape where the prior is right."""
    return -abs(math.log10(params["train.optimizer.lr"] / DESIGN["train.optimizer.lr"])) - (
        params["model.stages.0.width"] != DESIGN["model.stages.0.width"]
    )


def search(base: optuna.samplers.BaseSampler, config: PriorConfig, n: int, objective=closeness) -> optuna.Study:
    """``n`` trials of SPACE sampled by ``base`` behind the prior, each told ``objective``."""
    spec = parse_spec(SPACE, "prior.yaml")
    study = optuna.create_study(direction="maximize", sampler=PriorSampler(base, [DESIGN], config, seed=0))
    for _ in range(n):
        trial = study.ask()
        spec.space.sample(trial)
        study.tell(trial, objective(trial.params))
    return study


def near_design(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if PRIOR_DESIGN in t.user_attrs]


def test_trials_drawn_near_the_prior_are_near_its_design() -> None:
    study = search(optuna.samplers.RandomSampler(seed=0), PriorConfig(("d.yaml",), weight=1.0, half_life=1e6), 200)
    drawn = near_design(study)
    others = [t for t in study.trials if t not in drawn]
    assert len(drawn) >= 190  # weight 1, no decay yet: nearly every trial
    kept = sum(t.params["model.stages.0.width"] == 16 for t in drawn) / len(drawn)
    assert 0.75 <= kept <= 0.95  # a choice keeps the design's option with probability 1 - spread
    decades = [abs(math.log10(t.params["train.optimizer.lr"]) + 2) for t in drawn]  # design lr 1e-2
    assert sum(d < 1.0 for d in decades) / len(decades) >= 0.85  # sd: 0.15 of 4 decades, on the log scale
    assert all(1 <= t.params["model.stages.0.blocks"] <= 6 for t in drawn)
    blocks_off = [abs(t.params["model.stages.0.blocks"] - 2) for t in drawn]
    assert sum(b <= 1 for b in blocks_off) / len(blocks_off) >= 0.8
    assert not others or len(others) < 10


def test_the_prior_draws_often_at_first_and_less_later() -> None:
    study = search(optuna.samplers.RandomSampler(seed=1), PriorConfig(("d.yaml",), weight=0.8, half_life=10), 160)
    trials = study.trials
    early = sum(PRIOR_DESIGN in t.user_attrs for t in trials[:20]) / 20
    late = sum(PRIOR_DESIGN in t.user_attrs for t in trials[100:]) / 60
    assert early >= 0.3 and late <= 0.15 and late < early / 3, (early, late)
    weights = [prior_weight(trials[:n], study.sampler.config, maximize=True) for n in (0, 10, 40, 160)]
    assert weights[0] == 0.8 and weights == sorted(weights, reverse=True)


def test_a_bad_prior_fades_and_the_search_still_finds_good_configs() -> None:
    config = PriorConfig(("d.yaml",), weight=1.0, half_life=10)
    bad = search(optuna.samplers.TPESampler(seed=0, n_startup_trials=10), config, 80, objective=score)
    good = search(optuna.samplers.TPESampler(seed=0, n_startup_trials=10), config, 80, objective=closeness)
    bad_weight = prior_weight(bad.trials, config, maximize=True)
    good_weight = prior_weight(good.trials, config, maximize=True)
    assert bad_weight < good_weight / 2, (bad_weight, good_weight)  # the region does badly: it fades faster
    assert bad_weight < 0.35 * config.weight * config.half_life / (config.half_life + 80)  # not the trial count alone
    assert sum(PRIOR_DESIGN in t.user_attrs for t in bad.trials[-30:]) <= 3
    best = bad.best_trial.params
    assert best["model.stages.0.width"] == 64 and abs(math.log10(best["train.optimizer.lr"] / 0.3)) < 0.5, best


def test_enqueued_trials_are_never_drawn_near_the_prior() -> None:
    spec = parse_spec(SPACE, "prior.yaml")
    sampler = PriorSampler(optuna.samplers.RandomSampler(seed=0), [DESIGN], PriorConfig(("d.yaml",), weight=1.0))
    study = optuna.create_study(sampler=sampler)
    study.enqueue_trial(FAR)
    trial = study.ask()
    spec.space.sample(trial)
    assert trial.params == FAR and PRIOR_DESIGN not in study.trials[0].user_attrs


def test_prior_designs_are_spec_files_of_the_space(tmp_path: Path) -> None:
    (tmp_path / "design.yaml").write_text(
        "model: {num_classes: 3, stem: {width: 8}, stages: [{blocks: 2, width: 16}]}\n"
        "train: {epochs: 2, optimizer: {name: sgd, lr: 0.01}}\n"
    )
    text = SPACE.replace("seed: 0}", "seed: 0, prior: {designs: [design.yaml]}}")
    (tmp_path / "space.yaml").write_text(text)
    study = create_study(load_spec(tmp_path / "space.yaml"), optuna.storages.InMemoryStorage())
    assert isinstance(study.sampler, PriorSampler) and study.sampler.designs == [DESIGN]
    assert learns_from_rejections(study.sampler)  # the table reads the sampler it wraps
    (tmp_path / "design.yaml").write_text(
        "model: {num_classes: 3, stem: {width: 8}, stages: [{blocks: 9, width: 16}]}\ntrain: {epochs: 2}\n"
    )
    with pytest.raises(SpecError, match=r"study\.prior\.designs\[0\]: design\.yaml is not in this space"):
        create_study(load_spec(tmp_path / "space.yaml"), optuna.storages.InMemoryStorage())


GP_SPACE = """
study: {name: gp, n_trials: 9, sampler: {name: gp, n_startup_trials: 3}, seed: 0, max_rejections: 50}
data: {dataset: imagefolder, image_size: 16}
model:
  num_classes: 3
  stem: {width: 8}
  stages: [{blocks: {range: [1, 3]}, width: {choice: [8, 16, 96]}}]
  se: {choice: [{name: none}, {name: stem, ratio: {choice: [4, 8]}}]}
train:
  epochs: 2
  optimizer:
    choice:
      - {name: sgd, lr: {range: [0.001, 0.5], log: true}, momentum: {range: [0.8, 0.95]}}
      - {name: adamw, lr: {range: [0.0001, 0.01], log: true}}
budget: {max_params: 20000}
"""


def test_gp_searches_a_conditional_categorical_space_end_to_end(tmp_path: Path) -> None:
    """GP through the bridge: conditional branches, categorical choices, budget rejections
    (its draw after one is random), results told; no warning, every trial finished."""
    spec = parse_spec(GP_SPACE, "gp.yaml")
    study = create_study(spec, f"sqlite:///{tmp_path / 'gp.db'}")
    assert isinstance(study.sampler, optuna.samplers.GPSampler)
    bridge = StudyBridge(study, spec, TrialSetup(image_size=16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # GP's independent-sampling warnings would flood a run's log
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        while (job := bridge.next_job()) is not None:
            optimizer = job.trial.train.optimizer
            value = 0.5 + 0.1 * math.log10(optimizer.lr) * (optimizer.name == "sgd") + 0.01 * job.number
            bridge.finish(job.number, {"val_acc": value, "epoch": 2}, error=False)
    finished = [t for t in study.trials if is_finished(t)]
    assert len(finished) == 9 and all(t.state == optuna.trial.TrialState.COMPLETE for t in finished)
    for trial in finished:
        branch = trial.params["train.optimizer.name"]
        assert ("train.optimizer.sgd.momentum" in trial.params) == (branch == "sgd")
    assert {t.params["train.optimizer.name"] for t in finished} == {"sgd", "adamw"}
