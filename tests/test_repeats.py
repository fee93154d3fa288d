"""A config the study trained already is answered from its record, never trained twice: the
matching (same config and training seed, same data), the bridge answering repeats (complete,
pruned, of earlier runs; not failed or running ones), and a real CLI run of a space with two
configs."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from searching import load, run_cli, sqlite_url

from search.config import parse_spec
from search.engine.bridge import StudyBridge, TrialSetup
from search.engine.samplers import create_study
from search.study.keys import CONFIG_KEY, RAY_TRIAL_ID, REJECTED, REPEAT_OF, TRAIN_TIME_S, is_finished
from search.study.repeats import TrainedConfigs, answers_repeats, config_key
from search.study.trials import ranked_trials

# Two configs fit the budget (width 8 or 16); width 96 is over it.
SPACE = """
study:
  name: repeats
  n_trials: {n_trials}
  sampler: {{name: random}}
  pruner: {{name: none}}
  seed: 0
data: {{dataset: imagefolder, image_size: 16, val_fraction: 0.25}}
model:
  num_classes: 3
  stem: {{width: 8}}
  stages: [{{blocks: 1, width: {{choice: [8, 16, 96]}}}}]
train: {{epochs: {epochs}, batch_size: 8, seed: {seed}, optimizer: {{name: sgd, lr: 0.05}}}}
budget: {{max_params: 20000}}
resources: {{cpu: 1, max_concurrent: 1}}
"""


def space(n_trials: int = 8, epochs: int = 2, seed: int = 0) -> str:
    return SPACE.format(n_trials=n_trials, epochs=epochs, seed=seed)


def bridge_for(storage: str, text: str) -> StudyBridge:
    spec = parse_spec(text, "repeats.yaml")
    return StudyBridge(create_study(spec, storage), spec, TrialSetup(image_size=16))


@pytest.fixture
def storage(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'repeats.db'}"


def test_same_config_and_seed_match_another_seed_or_data_do_not() -> None:
    spec = parse_spec(space(), "repeats.yaml")
    config = spec.space.sample(optuna.trial.FixedTrial({"model.stages.0.width": 8}))
    again = spec.space.sample(optuna.trial.FixedTrial({"model.stages.0.width": 8}))
    other_seed = replace(config, train=replace(config.train, seed=1))
    other_width = spec.space.sample(optuna.trial.FixedTrial({"model.stages.0.width": 16}))
    assert config_key(config, "data") == config_key(again, "data")
    assert config_key(config, "data") != config_key(other_seed, "data")
    assert config_key(config, "data") != config_key(other_width, "data")
    assert config_key(config, "data") != config_key(config, "other data")
    # What the space fixes counts too: the same parameters under more epochs train another model.
    longer_spec = parse_spec(space(epochs=3), "repeats.yaml")
    longer = longer_spec.space.sample(optuna.trial.FixedTrial({"model.stages.0.width": 8}))
    assert config_key(config, "data") != config_key(longer, "data")


def _stored(state: TrialState, **attrs: object) -> optuna.trial.FrozenTrial:
    study = optuna.create_study()
    trial = study.ask()
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    if state == TrialState.COMPLETE:
        study.tell(trial, 0.5)
    else:
        study.tell(trial, state=state)
    return study.trials[0]


def test_only_trained_complete_or_pruned_trials_answer_repeats() -> None:
    assert answers_repeats(_stored(TrialState.COMPLETE, **{CONFIG_KEY: "k"}))
    assert answers_repeats(_stored(TrialState.PRUNED, **{CONFIG_KEY: "k"}))
    assert not answers_repeats(_stored(TrialState.FAIL, **{CONFIG_KEY: "k"}))  # its failure may not recur
    assert not answers_repeats(_stored(TrialState.PRUNED, **{CONFIG_KEY: "k", REJECTED: "over"}))
    assert not answers_repeats(_stored(TrialState.COMPLETE, **{CONFIG_KEY: "k", REPEAT_OF: 0}))
    assert not answers_repeats(_stored(TrialState.COMPLETE))  # an earlier version's trial: no key
    failed, complete = _stored(TrialState.FAIL, **{CONFIG_KEY: "k"}), _stored(TrialState.COMPLETE, **{CONFIG_KEY: "k"})
    failed.number, complete.number = 0, 1
    index = TrainedConfigs([failed, complete])
    assert index.original("k") == 1 and index.original("other") is None


def _run(bridge: StudyBridge, values: dict[int, float]) -> list[int]:
    """Train (pretend) every job the bridge hands out, one at a time; returns their numbers."""
    trained = []
    while (job := bridge.next_job()) is not None:
        width = job.trial.model.stages[0].width
        bridge.finish(job.number, {"val_acc": values[width], "epoch": 2, "epochs_run": 2}, error=False)
        trained.append(job.number)
    return trained


def test_the_bridge_answers_repeats_from_the_record_and_so_does_a_resumed_study(storage: str) -> None:
    bridge = bridge_for(storage, space(n_trials=6))
    trained = _run(bridge, {8: 0.6, 16: 0.7})
    trials = bridge.study.get_trials()
    finished = [t for t in trials if is_finished(t)]
    repeats = [t for t in finished if REPEAT_OF in t.user_attrs]
    assert len(finished) == 6 and len(trained) == 2, "two distinct configs: each trained once"
    assert bridge.tally.repeats == len(repeats) == 4
    for repeat in repeats:
        original = trials[repeat.user_attrs[REPEAT_OF]]
        assert original.number in trained and repeat.params == original.params
        assert repeat.state == TrialState.COMPLETE and repeat.values == original.values  # the sampler is told
        assert repeat.user_attrs[TRAIN_TIME_S] == 0.0 and not repeat.intermediate_values
    assert [t.number for t in ranked_trials(bridge.study, 10)] == sorted(trained, key=lambda n: -trials[n].value)

    # A rerun continues the study: it trains nothing, its every sample is one the earlier run trained.
    resumed = bridge_for(storage, space(n_trials=9))
    assert _run(resumed, {8: 0.0, 16: 0.0}) == [] and resumed.tally.repeats == 3
    # Another training seed is another config: trained again.
    reseeded = bridge_for(storage, space(n_trials=10, seed=1))
    assert len(_run(reseeded, {8: 0.1, 16: 0.1})) == 1


def test_a_repeat_of_a_pruned_trial_is_pruned_with_its_reports(storage: str) -> None:
    bridge = bridge_for(storage, space(n_trials=4))
    first = bridge.next_job()
    assert first is not None
    bridge.report(first.number, {"epoch": 1, "val_acc": 0.2})
    bridge.mark_pruned(first.number)
    bridge.finish(first.number, {"epoch": 1, "val_acc": 0.2}, error=False)
    width = first.trial.model.stages[0].width
    while (job := bridge.next_job()) is not None:
        bridge.finish(job.number, {"val_acc": 0.9, "epoch": 2}, error=False)
    trials = bridge.study.trials
    same = [t for t in trials if t.params == trials[first.number].params and t.number != first.number]
    assert same and all(t.user_attrs[REPEAT_OF] == first.number for t in same), width
    for repeat in same:
        assert repeat.state == TrialState.PRUNED and repeat.intermediate_values == {1: 0.2}
        assert is_finished(repeat)


def test_a_repeat_of_a_running_or_failed_trial_trains(storage: str) -> None:
    bridge = bridge_for(storage, space(n_trials=4))
    jobs = [bridge.next_job() for _ in range(4)]  # four at once: the repeats' originals are still running
    assert all(job is not None for job in jobs)
    widths = Counter(job.trial.model.stages[0].width for job in jobs)
    assert max(widths.values()) > 1 and bridge.tally.repeats == 0
    for job in jobs:
        bridge.finish(job.number, None, error=True)  # a failure answers nothing: the next run trains it
    retry = bridge_for(storage, space(n_trials=5))
    assert retry.next_job() is not None and retry.tally.repeats == 0


@pytest.mark.slow
def test_a_run_trains_each_distinct_config_once(tmp_path: Path, tiny_imagefolder: Path) -> None:
    """Through the CLI, real Ray and SQLite: 4 trials of a space of two configs train each once."""
    (tmp_path / "repeats.yaml").write_text(space(n_trials=4, epochs=1))
    process = run_cli(["run", "repeats.yaml", "--data-dir", str(tiny_imagefolder)], cwd=tmp_path)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    trials = load(sqlite_url(tmp_path, "repeats"), "repeats").trials
    finished = [t for t in trials if is_finished(t)]
    trained = [t for t in finished if REPEAT_OF not in t.user_attrs]
    answered = [t for t in finished if REPEAT_OF in t.user_attrs]
    assert len(finished) == 4 and len(answered) >= 2, "two configs, four trials: at least two repeats"
    assert len(trained) == len({tuple(sorted(t.params.items())) for t in finished})  # each distinct config once
    tune_dirs = {p.name for p in (tmp_path / "studies" / "repeats" / "ray" / "tune").glob("trial_*")}
    assert tune_dirs == {f"trial_{t.number}" for t in trained}  # no repeat reached Ray
    for repeat in answered:
        original = trials[repeat.user_attrs[REPEAT_OF]]
        assert repeat.values == original.values and RAY_TRIAL_ID not in repeat.user_attrs
    assert f"{len(answered)} repeats of trained configs answered from the record" in output
