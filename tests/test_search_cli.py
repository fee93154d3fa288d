"""``resnet-search run`` end to end through the real CLI, real Ray and a real SQLite study,
on a generated class-folder dataset: states, budget rejections, pruning, kill and resume."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState
from searching import kill, load, run_cli, sqlite_url, wait_for_finished, write_spec

from search.study.keys import REJECTED, is_finished

pytestmark = pytest.mark.slow


def test_run_records_complete_pruned_and_rejected_trials(tmp_path: Path, tiny_imagefolder: Path) -> None:
    spec = write_spec(tmp_path, "e2e", n_trials=8, epochs=3)
    process = run_cli(["run", str(spec), "--data-dir", str(tiny_imagefolder)], cwd=tmp_path)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    assert "Traceback" not in output

    trials = load(sqlite_url(tmp_path, "e2e"), "e2e").trials
    states = [t.state for t in trials]
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    finished = [t for t in trials if is_finished(t)]
    assert len(finished) == 8
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in finished if t.state == TrialState.PRUNED]
    assert complete and pruned, [(t.number, t.state, t.intermediate_values) for t in trials]
    for trial in complete:
        assert sorted(trial.intermediate_values) == [1, 2, 3]
        assert trial.user_attrs["params"] <= 40_000 and trial.user_attrs["epochs_run"] == 3
    for trial in pruned:
        assert 1 <= len(trial.intermediate_values) < 3
        assert trial.user_attrs["epochs_run"] == max(trial.intermediate_values)  # stopped at the decision
    # One trial at a time: the trial after a pruned one starts only once the pruned one has stopped.
    trained = sorted((t for t in finished), key=lambda t: t.datetime_start)
    for before, after in zip(trained, trained[1:]):
        assert after.datetime_start >= before.datetime_complete

    rejected = [t for t in trials if REJECTED in t.user_attrs]
    assert rejected, "width 96 is over the budget and must have been sampled"
    trained_dirs = {p.name for p in (tmp_path / "studies" / "e2e" / "ray" / "tune").glob("trial_*")}
    assert trained_dirs == {f"trial_{t.number}" for t in finished}  # nothing rejected ever reached Ray
    for trial in rejected:
        assert trial.user_attrs["params"] > 40_000 and "ray_trial_id" not in trial.user_attrs

    listed = subprocess.run(
        ["optuna", "trials", "--study-name", "e2e", "--storage", "sqlite:///studies/e2e.db", "-f", "json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0 and '"PRUNED"' in listed.stdout and '"COMPLETE"' in listed.stdout


@pytest.mark.parametrize("how", ["sigkill", "ctrl-c"])
def test_a_stopped_driver_loses_nothing_and_the_rerun_finishes(
    tmp_path: Path, tiny_imagefolder: Path, how: str
) -> None:
    storage = sqlite_url(tmp_path, "stopped")
    stop_and_rerun(tmp_path, tiny_imagefolder, "stopped", storage, how)


def stop_and_rerun(cwd: Path, data: Path, name: str, storage: str, how: str) -> str:
    """Stop a driver (SIGKILL or Ctrl-C) after 2 finished trials, rerun it, and check that
    the study then has its 5 trials, none lost, none run twice, none left RUNNING.

    Returns:
        What both drivers printed.
    """
    spec = write_spec(cwd, name, n_trials=5, epochs=8)
    args = ["run", str(spec), "--data-dir", str(data), "--storage", storage]
    process = run_cli(args, cwd=cwd)
    before = wait_for_finished(process, storage, name, 2)
    if how == "sigkill":
        output = kill(process, signal.SIGKILL)
    else:
        output = kill(process, signal.SIGINT)  # what Ctrl-C in a terminal sends
        assert process.returncode == 130, output
        assert "run the same command to continue" in output and "Traceback" not in output
        trials = load(storage, name).trials
        assert not [t for t in trials if t.state == TrialState.RUNNING]  # ended and recorded
        assert all(t.user_attrs.get("interrupted") for t in trials if t.state == TrialState.FAIL)

    rerun = run_cli(args, cwd=cwd)
    rerun_output, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, rerun_output

    trials = load(storage, name).trials
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert sum(is_finished(t) for t in trials) == 5
    for number, (state, values, params) in before.items():  # nothing finished was lost or changed
        assert (trials[number].state, trials[number].values, trials[number].params) == (state, values, params)
    retried = [t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs]
    assert not set(retried) & set(before), "a finished trial was run again"
    return output + rerun_output


def test_dry_run_surveys_the_budget_probes_and_rehearses(tmp_path: Path) -> None:
    spec = Path(__file__).resolve().parents[1] / "spaces" / "smoke.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "search.cli", "run", str(spec), "--dry-run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "sampled configs fit the budget" in result.stdout
    assert "per step on cpu" in result.stdout and "estimate: 8 trials x 4 epochs on 2 slot(s)" in result.stdout
    assert "budget rehearsal with the tpe sampler (no training): 8 trials" in result.stdout
    assert not (tmp_path / "studies").exists()  # a dry run writes no study


def test_missing_pretrained_weights_fail_before_any_trial(tmp_path: Path, tiny_imagefolder: Path) -> None:
    spec = tmp_path / "transfer.yaml"
    spec.write_text(
        "study: {name: transfer}\n"
        "data: {dataset: imagefolder, image_size: 32}\n"
        "model: {name: resnet18, num_classes: 3, weights: missing.pth, freeze: {choice: [none, all_but_head]}}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "search.cli", "run", str(spec), "--data-dir", str(tiny_imagefolder)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "weights 'missing.pth'" in lines[0]
    assert not (tmp_path / "studies").exists()  # nothing written, nothing trained
