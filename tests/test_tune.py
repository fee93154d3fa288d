"""The search bridge without a cluster: budget rejection, pruning, outcomes, recovery, and
the Tune adapters' signatures against Ray's own ``Searcher`` and ``TrialScheduler``."""

from __future__ import annotations

import inspect
from dataclasses import replace
from types import SimpleNamespace

import optuna
import optuna_dashboard
import pytest
from optuna.trial import TrialState

from search.config import parse_spec
from search.engine.adapters import OptunaPruningScheduler, OptunaSearcher
from search.engine.bridge import StudyBridge, TrialSetup
from search.engine.samplers import PRUNERS, SAMPLERS, create_study, make_pruner
from search.study.keys import ERROR, INTERRUPTED, REJECTED, is_finished
from search.study.trials import recover_interrupted

SPACE = """
study: {name: bridge, n_trials: 3, pruner: {name: median, n_startup_trials: 1, n_warmup_steps: 0}, max_rejections: 50}
data: {dataset: imagefolder, image_size: 16}
model:
  num_classes: 3
  stem: {width: 8}
  stages: [{blocks: 1, width: {choice: [8, 64]}}, {blocks: 1, width: 16}]
train: {epochs: 3, optimizer: {name: sgd, lr: {range: [0.01, 0.1], log: true}}}
budget: {max_params: 20000}
"""


@pytest.fixture
def storage(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}"


def make_bridge(storage: str, text: str = SPACE) -> StudyBridge:
    spec = parse_spec(text, "bridge.yaml")
    study = create_study(spec, storage)
    return StudyBridge(study, spec, TrialSetup(16))


def epoch(n: int, val_acc: float) -> dict:
    return {"epoch": n, "val_acc": val_acc, "val_loss": 1.0 - val_acc}


def test_over_budget_samples_are_rejected_before_training_and_do_not_count(storage: str) -> None:
    bridge = make_bridge(storage)
    jobs = [bridge.next_job() for _ in range(3)]
    assert all(job is not None for job in jobs)
    assert bridge.next_job() is None  # n_trials reached
    for job in jobs:
        assert job.counts.params <= 20_000
        assert job.trial.model.stages[0].width == 8
    rejected = [t for t in bridge.study.trials if REJECTED in t.user_attrs]
    assert rejected, "width 64 is over the budget and must have been sampled at least once"
    for trial in rejected:
        assert trial.state == TrialState.PRUNED
        assert trial.user_attrs["params"] > 20_000
        assert trial.constraints and max(trial.constraints.values()) > 0
        assert not trial.intermediate_values
        assert not is_finished(trial)
        note = optuna_dashboard.get_note(optuna.Trial(bridge.study, trial._trial_id))
        assert note.startswith("**rejected**") and "never trained" in note  # told apart from pruning


def test_reports_are_intermediate_values_and_the_pruner_stops_bad_trials(storage: str) -> None:
    bridge = make_bridge(storage)
    good, bad, _ = (bridge.next_job() for _ in range(3))
    for step in (1, 2, 3):
        assert bridge.report(good.number, epoch(step, 0.9)) is False
    bridge.finish(good.number, {"val_acc": 0.9, "train_time_s": 1.0}, error=False)
    assert bridge.report(bad.number, epoch(1, 0.1)) is True
    bridge.finish(bad.number, epoch(1, 0.1), error=False)
    states = {t.number: t for t in bridge.study.trials}
    assert states[good.number].state == TrialState.COMPLETE
    assert states[good.number].intermediate_values == {1: 0.9, 2: 0.9, 3: 0.9}
    assert states[bad.number].state == TrialState.PRUNED
    assert states[bad.number].intermediate_values == {1: 0.1}
    assert is_finished(states[bad.number])


def test_failures_are_recorded_with_their_reason(storage: str) -> None:
    bridge = make_bridge(storage)
    raised, died, _ = (bridge.next_job() for _ in range(3))
    bridge.finish(raised.number, {"final": True, ERROR: "out of memory: CUDA"}, error=False)
    bridge.finish(died.number, None, error=True)
    trials = {t.number: t for t in bridge.study.trials}
    assert trials[raised.number].state == TrialState.FAIL
    assert trials[raised.number].user_attrs[ERROR] == "out of memory: CUDA"
    assert "worker died" in trials[died.number].user_attrs[ERROR]
    assert bridge.tally.failed == 2


def test_interrupted_trials_are_failed_and_enqueued_again(storage: str) -> None:
    bridge = make_bridge(storage)
    first, second, third = (bridge.next_job() for _ in range(3))
    bridge.finish(first.number, {"val_acc": 0.5}, error=False)
    # The driver dies here: `second` stays RUNNING in the storage. A new driver recovers it.
    study = optuna.load_study(study_name="bridge", storage=storage)
    assert recover_interrupted(study) == 2
    trials = study.trials
    assert trials[second.number].state == TrialState.FAIL
    assert INTERRUPTED in trials[second.number].user_attrs
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert {t.user_attrs["retry_of"] for t in waiting} == {second.number, third.number}
    assert trials[first.number].state == TrialState.COMPLETE  # nothing finished is touched
    resumed = StudyBridge(study, parse_spec(SPACE), TrialSetup(16))
    assert resumed.finished_before == 1
    retry = resumed.next_job()
    assert retry.trial == second.trial  # the interrupted config runs again, under a new number


def test_a_space_that_never_fits_stops_with_a_message(storage: str) -> None:
    bridge = make_bridge(
        storage,
        SPACE.replace("max_params: 20000", "max_params: 100").replace("max_rejections: 50", "max_rejections: 5"),
    )
    assert bridge.next_job() is None
    assert "5 samples in a row" in bridge.stop_reason
    assert "raise budget.max_params" in bridge.stop_reason


def test_warm_start_configs_are_tried_first(tmp_path, storage: str) -> None:
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(
        "model: {num_classes: 3, stem: {width: 8}, stages: [{blocks: 1, width: 8}, {blocks: 1, width: 16}]}\n"
        "train: {optimizer: {name: sgd, lr: 0.05}}\n"
    )
    spec_file = tmp_path / "space.yaml"
    spec_file.write_text(SPACE.replace("max_rejections: 50}", "max_rejections: 50, enqueue: [fixed.yaml]}"))
    from search.config import load_spec

    spec = load_spec(spec_file)
    bridge = StudyBridge(create_study(spec, storage), spec, TrialSetup(16))
    job = bridge.next_job()
    assert job.trial.train.optimizer.lr == 0.05


def test_searcher_and_scheduler_copy_tunes_signatures() -> None:
    from ray.tune.schedulers import TrialScheduler
    from ray.tune.search import Searcher

    searcher_cls, scheduler_cls = OptunaSearcher, OptunaPruningScheduler
    for ours, theirs, names in (
        (searcher_cls, Searcher, ("suggest", "on_trial_complete")),
        (scheduler_cls, TrialScheduler, ("on_trial_result",)),
    ):
        assert issubclass(ours, theirs)
        for name in names:
            assert _contract(getattr(ours, name)) == _contract(getattr(theirs, name)), name


def _contract(method) -> list[tuple]:
    """Names, kinds, defaults and annotations (as text) of a method's parameters."""
    return [(p.name, p.kind, p.default, _text(p.annotation)) for p in inspect.signature(method).parameters.values()]


def _text(annotation) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "").strip("'\"")


def test_the_adapters_drive_the_bridge_as_tune_would(storage: str) -> None:
    from ray.tune.schedulers import TrialScheduler
    from ray.tune.search import Searcher

    searcher_cls, scheduler_cls = OptunaSearcher, OptunaPruningScheduler
    bridge = make_bridge(storage)
    searcher, scheduler = searcher_cls(bridge), scheduler_cls(bridge)
    configs = [searcher.suggest(f"ray{i}") for i in range(3)]
    assert searcher.suggest("ray3") == Searcher.FINISHED
    tune_trials = [SimpleNamespace(trial_id=f"ray{i}", config=c) for i, c in enumerate(configs)]
    assert scheduler.on_trial_result(None, tune_trials[0], epoch(1, 0.9)) == TrialScheduler.CONTINUE
    searcher.on_trial_complete("ray0", {"val_acc": 0.9})
    assert scheduler.on_trial_result(None, tune_trials[1], epoch(1, 0.1)) == TrialScheduler.STOP
    searcher.on_trial_complete("ray1", epoch(1, 0.1))
    searcher.on_trial_complete("ray2", None, error=True)
    states = [bridge.study.trials[c["job"].number].state for c in configs]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]
    assert bridge.study.trials[configs[0]["job"].number].user_attrs["ray_trial_id"] == "ray0"


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_samples_the_space(name: str, storage: str) -> None:
    bridge = make_bridge(storage, SPACE.replace("pruner:", f"sampler: {{name: {name}, n_startup_trials: 1}}, pruner:"))
    assert type(bridge.study.sampler) is SAMPLERS[name].cls
    while (job := bridge.next_job()) is not None:  # a repeat of a trained config is answered, not handed out
        bridge.finish(job.number, {"val_acc": 0.5}, error=False)
    assert sum(is_finished(t) for t in bridge.study.trials) == 3


@pytest.mark.parametrize("config_class", list(PRUNERS), ids=lambda c: c.__name__)
def test_every_pruner_config_makes_its_pruner(config_class: type) -> None:
    pruner = make_pruner(config_class(), max_epochs=9)
    expected = {"none": "NopPruner"}.get(config_class().name, config_class.__name__)
    assert type(pruner).__name__ == expected


def test_a_trials_display_state_is_one_function_of_its_state_and_reason() -> None:
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    from search.study.keys import status_counts, trial_status

    def trial(state: TrialState, **attrs: object) -> optuna.trial.FrozenTrial:
        value = 0.5 if state == TrialState.COMPLETE else None
        return create_trial(
            state=state, value=value, params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)}, user_attrs=attrs
        )

    trials = [
        trial(TrialState.COMPLETE),
        trial(TrialState.PRUNED),
        trial(TrialState.PRUNED, **{REJECTED: "over the budget"}),
        trial(TrialState.FAIL, **{ERROR: "out of memory"}),
        trial(TrialState.FAIL, **{INTERRUPTED: "the run was stopped"}),
    ]
    assert [trial_status(t) for t in trials] == ["complete", "pruned", "rejected", "failed", "interrupted"]
    assert [is_finished(t) for t in trials] == [True, True, False, True, False]
    assert status_counts(trials)["failed"] == 1 and status_counts(trials)["interrupted"] == 1


def test_a_worker_loads_the_data_once_for_the_trials_it_runs(monkeypatch: pytest.MonkeyPatch, tiny_imagefolder) -> None:
    from search.engine import trainable

    spec = parse_spec(SPACE)
    job = SimpleNamespace(data=spec.data, data_dir=str(tiny_imagefolder), output=None)
    monkeypatch.setattr(trainable, "_WORKER", {"trials": 0, "data_key": None, "data": None})
    first = trainable.worker_data(job)  # type: ignore[arg-type]
    assert trainable.worker_data(job) is first  # the next trial on this worker: no second load
    other = SimpleNamespace(data=replace(spec.data, val_fraction=0.5), data_dir=str(tiny_imagefolder), output=None)
    assert trainable.worker_data(other) is not first  # other data: loaded, and kept instead
    assert len(trainable.worker_data(other).val) > len(first.val)
