"""Reliability on the real engines: a `ray start` cluster, PostgreSQL, injected faults,
stopped and duplicated drivers, full disks, and the same search twice.

The services come from ``conftest.py`` (``ray_cluster``, ``postgres``); the faults from
``faults.py``; every search runs the real trainer on ``tiny_imagefolder``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import faults
import pytest
from optuna.trial import TrialState
from searching import files_containing, kill, load, run_cli, sqlite_url, study_exists, wait_for_finished, write_spec
from services import POSTGRES_PASSWORD
from test_search_cli import stop_and_rerun

from search.study.keys import ERROR, INTERRUPTED, is_finished

pytestmark = pytest.mark.slow


# --------------------------------------------------------------------------- faults on a cluster


def test_failing_trials_are_recorded_and_the_search_goes_on_on_a_ray_cluster(
    tmp_path: Path, tiny_imagefolder: Path, ray_cluster
) -> None:
    injected = {0: "raise", 1: "oom", 2: "nan", 3: "kill_once", 4: "kill"}
    spec = write_spec(tmp_path, "faults", n_trials=7, epochs=2, max_failures=1, max_params=10**6)
    driver = [
        sys.executable,
        str(Path(faults.__file__)),
        str(spec),
        str(tiny_imagefolder),
        ray_cluster.address,
        json.dumps(injected),
        str(tmp_path),
    ]
    result = subprocess.run(
        driver, cwd=tmp_path, env={**os.environ, **ray_cluster.env}, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "finished 7, interrupted False" in result.stdout
    assert "trial 1 failed: out of memory" in result.stdout

    trials = load(sqlite_url(tmp_path, "faults"), "faults").trials
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    errors = {t.number: t.user_attrs.get(ERROR, "") for t in trials if t.state == TrialState.FAIL}
    assert set(errors) == {0, 1, 2, 4}, errors
    assert "Error" in errors[0]  # the exception's type and message
    assert errors[1].startswith("out of memory")
    assert errors[2].startswith("non-finite loss")
    assert "worker died" in errors[4]
    assert (tmp_path / "trial_3").exists() and trials[3].state != TrialState.FAIL  # killed once, retried
    assert all(is_finished(t) for t in trials[5:7])  # the search went on after every fault
    total, available = ray_cluster.resources()
    assert available.get("CPU") == total["CPU"] == 3  # no trial holds a CPU any more


# --------------------------------------------------------------------------- PostgreSQL


def test_a_driver_killed_on_postgresql_loses_nothing_and_leaks_no_password(
    tmp_path: Path, tiny_imagefolder: Path, postgres
) -> None:
    output = stop_and_rerun(tmp_path, tiny_imagefolder, "killed_pg", postgres.url, "sigkill")
    assert "***@127.0.0.1" in output and POSTGRES_PASSWORD not in output
    for command in (["export", "--top", "2", "--out", "exported"], ["report", "--out", "report.html"]):
        process = run_cli([*command, "--storage", postgres.url, "--study", "killed_pg"], cwd=tmp_path)
        printed, _ = process.communicate(timeout=300)
        assert process.returncode == 0, printed
        assert POSTGRES_PASSWORD not in printed
    assert (tmp_path / "report.html").exists() and list((tmp_path / "exported").glob("*.yaml"))
    # Nothing we or Ray wrote (logs, results, exports, the report) holds the password.
    assert files_containing(tmp_path, POSTGRES_PASSWORD) == []
    ray_logs = [p for p in Path("/tmp/ray").glob("session_*/logs") if p.stat().st_mtime > time.time() - 3600]
    assert not [f for logs in ray_logs for f in files_containing(logs, POSTGRES_PASSWORD)]


def test_postgresql_restarted_mid_search_the_driver_retries_and_finishes(
    tmp_path: Path, tiny_imagefolder: Path, postgres
) -> None:
    spec = write_spec(tmp_path, "restarted_pg", n_trials=4, epochs=10)
    process = run_cli(["run", str(spec), "--data-dir", str(tiny_imagefolder), "--storage", postgres.url], cwd=tmp_path)
    before = wait_for_finished(process, postgres.url, "restarted_pg", 1)
    postgres.stop()
    time.sleep(4)  # trials keep training and reporting while the database is away
    postgres.start()
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    assert "storage unreachable" in output and "retrying in" in output
    trials = load(postgres.url, "restarted_pg").trials
    assert sum(is_finished(t) for t in trials) == 4
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert not [t for t in trials if INTERRUPTED in t.user_attrs]  # nothing was lost or rerun
    for number, (state, values, params) in before.items():
        assert (trials[number].state, trials[number].values, trials[number].params) == (state, values, params)


# --------------------------------------------------------------------------- drivers and disks


def test_a_second_driver_on_the_same_study_refuses(tmp_path: Path, tiny_imagefolder: Path) -> None:
    spec = write_spec(tmp_path, "twice", n_trials=2, epochs=2000)  # the first driver outlives the second
    args = ["run", str(spec), "--data-dir", str(tiny_imagefolder)]
    storage = sqlite_url(tmp_path, "twice")
    first = run_cli(args, cwd=tmp_path)
    deadline = time.monotonic() + 300
    while not (study_exists(storage, "twice") and load(storage, "twice").trials) and time.monotonic() < deadline:
        time.sleep(0.5)
    second = run_cli(args, cwd=tmp_path)
    refused, _ = second.communicate(timeout=300)
    assert second.returncode == 2, refused
    lines = refused.strip().splitlines()
    assert "is being run by another driver (pid" in lines[-1] and "Traceback" not in refused
    assert first.poll() is None, "the first driver must still be running"

    output = kill(first, signal.SIGINT)
    assert first.returncode == 130, output
    trials = load(storage, "twice").trials
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    # The only interrupted trial is the one the first driver's Ctrl-C ended: the second
    # driver marked none of the first one's running trials as left by a killed driver.
    reasons = [t.user_attrs[INTERRUPTED] for t in trials if INTERRUPTED in t.user_attrs]
    assert reasons == ["the run was stopped before the trial finished"], reasons


@pytest.mark.parametrize("fault", ["not a folder", "disk full"])
def test_an_unwritable_study_folder_fails_before_training(tmp_path: Path, tiny_imagefolder: Path, fault: str) -> None:
    spec = write_spec(tmp_path, "nowhere", n_trials=2, epochs=1)
    (tmp_path / "studies").mkdir()
    if fault == "not a folder":
        (tmp_path / "studies" / "nowhere").write_text("a file where the study's folder goes")
        expected = "cannot write the study's folder"
    else:  # the write probe lands on /dev/full, which answers every write with ENOSPC
        (tmp_path / "studies" / "nowhere").mkdir()
        (tmp_path / "studies" / "nowhere" / ".write-test").symlink_to("/dev/full")
        expected = "No space left on device"
    process = run_cli(["run", str(spec), "--data-dir", str(tiny_imagefolder)], cwd=tmp_path)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 2 and expected in output and len(output.strip().splitlines()) == 1, output
    assert not study_exists(sqlite_url(tmp_path, "nowhere"), "nowhere")


# --------------------------------------------------------------------------- determinism


def test_the_same_spec_and_seed_give_the_same_search_twice(tmp_path: Path, tiny_imagefolder: Path) -> None:
    runs = []
    for folder in ("first", "second"):
        cwd = tmp_path / folder
        cwd.mkdir()
        spec = write_spec(cwd, "same", n_trials=6, epochs=3)
        process = run_cli(["run", str(spec), "--data-dir", str(tiny_imagefolder)], cwd=cwd)
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output
        study = load(sqlite_url(cwd, "same"), "same")
        runs.append(
            (
                [(t.number, t.state, t.params, t.intermediate_values) for t in study.trials],
                study.best_value,
            )
        )
    first, second = runs
    assert any(state == TrialState.PRUNED for _, state, _, _ in first[0])  # pruning decisions are compared too
    assert first == second
