"""TensorBoard and MLflow fed by a real run through the CLI (real Ray, a real SQLite study),
read back with their own readers: TensorBoard's ``EventAccumulator`` and ``mlflow.search_runs``.
A resumed run adds the new trials and no second run of an old one."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState
from searching import load, run_cli, sqlite_url, write_spec

from search.config import UserError, parse_spec
from search.engine.tracking import TAG_STUDY, TAG_TRIAL, tracking_observers
from search.study.keys import REJECTED
from search.study.records import kept_models


def trained(storage: str, name: str) -> list:
    """The trials that trained (rejected samples never reach a tracker)."""
    trials = load(storage, name).trials
    return [t for t in trials if REJECTED not in t.user_attrs and t.state != TrialState.WAITING]


def scalars(run_dir: Path) -> tuple[dict[str, dict[int, float]], set[str]]:
    """A TensorBoard run's scalars as {tag: {step: value}}, and its hparams summaries' tags."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    values = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}
    return values, set(events.PluginTagToContent("hparams"))


def mlflow_runs(uri: str, name: str):
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[name], filter_string=f"tags.`{TAG_STUDY}` = '{name}'")


@pytest.mark.slow
def test_tensorboard_and_mlflow_get_every_trained_trial_once_across_a_resume(
    tmp_path: Path, tiny_imagefolder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # for this test's own reader
    spec = write_spec(tmp_path, "tracked", n_trials=3, epochs=3)
    storage = sqlite_url(tmp_path, "tracked")
    uri = f"file:{tmp_path / 'mlruns'}"
    args = ["run", str(spec), "--data-dir", str(tiny_imagefolder), "--tensorboard", "tb", "--mlflow", uri]
    first = run_cli(args, cwd=tmp_path)
    output, _ = first.communicate(timeout=300)
    assert first.returncode == 0, output

    for trial in trained(storage, "tracked"):
        values, hparams = scalars(tmp_path / "tb" / "tracked" / f"trial_{trial.number:04d}")
        assert values["val/loss"] == pytest.approx(trial.intermediate_values)  # the objective, epoch by epoch
        assert (
            set(values["val/acc"]) == set(values["train/loss"]) == set(values["lr"]) == set(trial.intermediate_values)
        )
        assert "images_per_s" in values and "final/epochs" in values
        assert "_hparams_/experiment" in hparams and "_hparams_/session_start_info" in hparams

    runs = mlflow_runs(uri, "tracked")
    numbers = sorted(int(n) for n in runs[f"tags.{TAG_TRIAL}"])
    assert numbers == sorted(t.number for t in trained(storage, "tracked"))
    check_mlflow_runs(uri, runs, storage)

    first_trials = {t.number for t in trained(storage, "tracked")}
    # The same MLflow store (no run twice), and a new TensorBoard folder: the earlier trials go
    # there from their stored record.
    resumed = run_cli([*args[:-4], "--tensorboard", "tb2", "--mlflow", uri, "--n-trials", "2"], cwd=tmp_path)
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    runs = mlflow_runs(uri, "tracked")
    numbers = [int(n) for n in runs[f"tags.{TAG_TRIAL}"]]
    assert len(numbers) == len(set(numbers))  # no trial twice
    assert sorted(numbers) == sorted(t.number for t in trained(storage, "tracked"))
    assert len(numbers) >= 5
    check_mlflow_runs(uri, runs, storage)
    assert len(list((tmp_path / "tb" / "tracked").iterdir())) == len(first_trials)
    assert sorted(p.name for p in (tmp_path / "tb2" / "tracked").iterdir()) == [
        f"trial_{n:04d}" for n in sorted(numbers)
    ]
    for trial in trained(storage, "tracked"):  # new trials with every scalar, earlier ones with their curve
        values, _ = scalars(tmp_path / "tb2" / "tracked" / f"trial_{trial.number:04d}")
        assert values["val/loss"] == pytest.approx(trial.intermediate_values)
        assert ("train/loss" in values) == (trial.number not in first_trials)


def check_mlflow_runs(uri: str, runs, storage: str) -> None:
    """Each run holds its trial's parameters, per-epoch metrics at their steps, and its end state."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    by_number = {t.number: t for t in trained(storage, "tracked")}
    for _, run in runs.iterrows():
        trial = by_number[int(run[f"tags.{TAG_TRIAL}"])]
        history = {m.step: m.value for m in client.get_metric_history(run["run_id"], "val_loss")}
        assert history == pytest.approx(trial.intermediate_values)
        assert trial.params and all(run[f"params.{k}"] == str(v) for k, v in trial.params.items())
        state = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}
        assert run["tags.state"] == state[trial.state]
        assert run["status"] == "FINISHED" and run["metrics.model_params"] == trial.user_attrs["params"]
        if trial.state == TrialState.COMPLETE:
            assert run["metrics.final_val_loss"] == pytest.approx(trial.values[0])
    kept = kept_models(load(storage, "tracked"))  # run --keep's default: the best 3 keep their weights
    assert kept
    for number in kept:
        run_id = runs.loc[runs[f"tags.{TAG_TRIAL}"] == str(number), "run_id"].iloc[0]
        assert "model/model.safetensors" in {a.path for a in client.list_artifacts(run_id, "model")}


@pytest.mark.parametrize(("module", "extra"), [("mlflow", "mlflow"), ("torch.utils.tensorboard", "tensorboard")])
def test_a_tracker_whose_extra_is_missing_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, module: str, extra: str
) -> None:
    for loaded in [name for name in sys.modules if name == module or name.startswith(module + ".")] or [module]:
        monkeypatch.setitem(sys.modules, loaded, None)  # as if not installed: importing it raises ImportError
    spec = parse_spec(
        f"tracking: {{{'mlflow: file:x' if extra == 'mlflow' else 'tensorboard: tb'}}}\n"
        "model: {stages: [{blocks: {range: [1, 2]}, width: 16}]}\n"
    )
    with pytest.raises(
        UserError, match=rf"needs the {extra} extra, which is not installed: pip install -e '.\[{extra}\]'"
    ):
        tracking_observers(spec)


@pytest.mark.slow
def test_mlflow_in_sqlite_logs_its_set_up_to_ray_log_not_the_terminal(tmp_path: Path, tiny_imagefolder: Path) -> None:
    spec = write_spec(tmp_path, "quiet", n_trials=1, epochs=1)
    args = ["run", str(spec), "--data-dir", str(tiny_imagefolder), "--mlflow", "sqlite:///mlflow.db", "--keep", "0"]
    process = run_cli(args, cwd=tmp_path)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    assert "MLflow database tables" not in output and "mlflow" not in output.lower(), output
    assert "Creating initial MLflow database tables" in (tmp_path / "studies" / "quiet" / "ray.log").read_text()
    runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "quiet")
    assert [int(n) for n in runs[f"tags.{TAG_TRIAL}"]] == [
        t.number for t in trained(sqlite_url(tmp_path, "quiet"), "quiet")
    ]
