"""Faults during a real run, through the real CLI as a subprocess (a local Ray, a real
SQLite or PostgreSQL study): SIGTERM to ``run`` and ``train``, to the driver alone, to its
whole process group and to every process, the data cache deleted while trials run, the
storage file deleted under the driver, and a password given in the storage URL's query
string, looked for in everything printed or written.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psutil
import pytest
import torch
from optuna.trial import TrialState
from searching import files_containing, load, run_cli, sqlite_url, study_exists, wait_for_finished, write_spec
from services import POSTGRES_PASSWORD

from search.config.files import signals_held
from search.study.keys import INTERRUPTED, RETRY_OF, is_finished

pytestmark = pytest.mark.slow

EXIT_TERMINATED = 143
RAY_LOG_LINE = re.compile(r"^\[?\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d")  # a line of Ray's own (C++ or Python) logs


def test_sigterm_ends_the_run_like_ctrl_c_and_the_same_command_finishes_the_study(
    tmp_path: Path, tiny_imagefolder: Path
) -> None:
    """SIGTERM to the driver alone, as ``timeout`` and Kubernetes send it, after two trials:
    the summary is printed, nothing is left RUNNING, exit status 143; the rerun finishes the
    study with no trial lost or run twice."""
    spec = write_spec(tmp_path, "termed", n_trials=5, epochs=40)
    args = ["run", str(spec), "--data-dir", str(tiny_imagefolder)]
    storage = sqlite_url(tmp_path, "termed")
    process = run_cli(args, cwd=tmp_path)
    before = wait_for_finished(process, storage, "termed", 2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=180)
    assert process.returncode == EXIT_TERMINATED, output
    assert "Traceback" not in output and "study termed:" in output  # the summary
    assert "run the same command to continue" in output
    trials = load(storage, "termed").trials
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert all(INTERRUPTED in t.user_attrs for t in trials if t.state == TrialState.FAIL)

    rerun = run_cli(args, cwd=tmp_path)
    rerun_output, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, rerun_output
    trials = load(storage, "termed").trials
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert sum(is_finished(t) for t in trials) == 5
    for number, (state, values, params) in before.items():
        assert (trials[number].state, trials[number].values, trials[number].params) == (state, values, params)
    retried = [t.user_attrs[RETRY_OF] for t in trials if RETRY_OF in t.user_attrs]
    assert not set(retried) & set(before), "a finished trial was run again"
    assert len(retried) == len(set(retried)), "an interrupted trial was run twice"


def wait_for_training(process: subprocess.Popen, storage: str, name: str) -> None:
    """Poll the study until a trial is running and has reported an epoch (a worker trains it)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.5)
        if study_exists(storage, name) and [
            t for t in load(storage, name).trials if t.state == TrialState.RUNNING and t.intermediate_values
        ]:
            return
    raise AssertionError(f"no trial trained: {process.stdout.read() if process.poll() is not None else ''}")


@pytest.mark.parametrize("how", ["timeout -s TERM", "kill -TERM -PGID", "every process"])
def test_sigterm_to_the_whole_group_ends_the_run_like_sigterm_to_the_driver(
    tmp_path: Path, tiny_imagefolder: Path, how: str
) -> None:
    """What ``timeout`` and ``kill -TERM -PGID`` send (the driver's whole process group), and
    what Slurm sends (every process of the job, Ray's own included): the running trial is
    recorded as interrupted, one line, exit status 143 within seconds; not a minute's wait on
    a Ray killed under the driver and its ``Failed to connect to GCS`` line, exit status 1."""
    spec = write_spec(tmp_path, "grouped", n_trials=3, epochs=100_000)  # the first trial trains until stopped
    storage = sqlite_url(tmp_path, "grouped")
    command = [sys.executable, "-m", "search.cli", "run", str(spec), "--data-dir", str(tiny_imagefolder)]
    if how == "timeout -s TERM":  # timeout runs the CLI in a process group of its own
        command = ["timeout", "--preserve-status", "-s", "TERM", "3600", *command]
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    wait_for_training(process, storage, "grouped")
    signalled = time.monotonic()
    if how == "timeout -s TERM":
        process.send_signal(signal.SIGALRM)  # timeout's own timer: TERM to the CLI, then to its whole group
    elif how == "kill -TERM -PGID":
        os.killpg(process.pid, signal.SIGTERM)
    else:
        for each in [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                each.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=180)
    took = time.monotonic() - signalled
    assert process.returncode == EXIT_TERMINATED, output
    assert took < 40, f"{took:.0f} s after the signal: {output}"
    assert "run the same command to continue" in output.strip().splitlines()[-1], output
    if how != "every process":  # Ray outlived the signal, in a session of its own: the clean stop, with its summary
        assert "study grouped:" in output, output
    ours = [line for line in output.splitlines() if RAY_LOG_LINE.match(line) or "GCS" in line or "Traceback" in line]
    assert ours == [], output
    trials = load(storage, "grouped").trials
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    stopped = [t for t in trials if t.state == TrialState.FAIL]
    assert stopped and all(INTERRUPTED in t.user_attrs for t in stopped), [(t.state, t.user_attrs) for t in trials]


def test_sigterm_ends_train_with_its_checkpoint_and_resume_continues(tmp_path: Path, tiny_imagefolder: Path) -> None:
    spec = tmp_path / "fixed.yaml"
    spec.write_text(
        "study: {name: termed_train}\n"
        "data: {dataset: imagefolder, val_fraction: 0.25}\n"
        "model: {num_classes: 3, stem: {width: 8}, stages: [{blocks: 1, width: 8}]}\n"
        "train: {epochs: 150, batch_size: 8}\n"
    )
    args = ["train", str(spec), "--data-dir", str(tiny_imagefolder), "--out", "out", "--device", "cpu"]
    # One thread: two OpenMP threads beside other work spin at every barrier (5x slower measured).
    one_thread = {"OMP_NUM_THREADS": "1"}
    process = run_cli(args, cwd=tmp_path, env=one_thread)
    checkpoint = tmp_path / "out" / "checkpoint.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == EXIT_TERMINATED, output
    assert "with --resume to continue" in output and "Traceback" not in output
    epoch = torch.load(checkpoint, weights_only=True)["epoch"]
    assert 1 <= epoch < 150

    resumed = run_cli([*args, "--resume", "--epochs", "150"], cwd=tmp_path, env=one_thread)
    resumed_output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, resumed_output
    assert f"epoch {epoch + 1:>3}/150" in resumed_output and "epoch   1/150" not in resumed_output  # resumed


class _SignalledFile(io.BytesIO):
    """A file whose first write brings SIGTERM: a ``kill`` landing in the middle of a checkpoint."""

    sent = False

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)
        return super().write(data)


def test_a_sigterm_mid_write_lets_the_file_finish_then_stops_the_command() -> None:
    """Unheld, the KeyboardInterrupt (what the CLI makes of SIGTERM) is swallowed inside
    torch.save's writer and the file comes out damaged: the command ended as a write error."""

    def as_ctrl_c(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    weights = torch.arange(1000)
    file, finished = _SignalledFile(), False
    previous = signal.signal(signal.SIGTERM, as_ctrl_c)
    try:
        with pytest.raises(KeyboardInterrupt), signals_held():
            torch.save({"w": weights}, file)
            finished = True
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert finished and file.sent
    file.seek(0)
    assert torch.equal(torch.load(file)["w"], weights)


def test_the_cache_deleted_while_trials_run_is_rebuilt_and_the_search_finishes(
    tmp_path: Path, tiny_imagefolder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("RESNET_SEARCH_CACHE", str(cache))
    spec = write_spec(tmp_path, "uncached", n_trials=4, epochs=20)
    storage = sqlite_url(tmp_path, "uncached")
    process = run_cli(["run", str(spec), "--data-dir", str(tiny_imagefolder)], cwd=tmp_path)
    wait_for_finished(process, storage, "uncached", 1)
    shutil.rmtree(cache / "tensors")
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    assert sum(is_finished(t) for t in load(storage, "uncached").trials) == 4
    assert not [t for t in load(storage, "uncached").trials if t.state == TrialState.FAIL]
    # The workers keep the data they loaded (once per worker): no trial needed the deleted cache.


def test_the_storage_file_deleted_under_the_driver_is_one_line_not_a_hang(
    tmp_path: Path, tiny_imagefolder: Path
) -> None:
    """A deleted SQLite file makes every write "readonly database", which the retrying
    storage would wait out for five minutes: the driver stops at once with one line."""
    spec = write_spec(tmp_path, "gone", n_trials=5, epochs=60)
    storage = sqlite_url(tmp_path, "gone")
    process = run_cli(["run", str(spec), "--data-dir", str(tiny_imagefolder)], cwd=tmp_path)
    wait_for_finished(process, storage, "gone", 1)
    os.unlink(tmp_path / "studies" / "gone.db")
    deleted = time.monotonic()
    output, _ = process.communicate(timeout=240)
    assert time.monotonic() - deleted < 120
    errors = [line for line in output.splitlines() if line.startswith("resnet-search: error:")]
    assert process.returncode == 2 and "Traceback" not in output, output
    assert len(errors) == 1 and "studies/gone.db was deleted while the run was going" in errors[0], output


def test_a_query_string_password_is_masked_everywhere(tmp_path: Path, tiny_imagefolder: Path, postgres) -> None:
    """``?password=`` instead of ``user:password@``: masked in what run, studies, export and
    report print and write, in ray.log, Tune's files (tuner.pkl) and Ray's session logs, and
    never stored on the study."""
    url = postgres.url.replace(f":{POSTGRES_PASSWORD}@", "@") + f"?password={POSTGRES_PASSWORD}"
    spec = write_spec(tmp_path, "query_pw", n_trials=2, epochs=1)
    printed = ""
    for command in (
        ["run", str(spec), "--data-dir", str(tiny_imagefolder), "--storage", url],
        ["studies", "--storage", url],
        ["export", "--storage", url, "--study", "query_pw", "--out", "exported"],
        ["report", "--storage", url, "--study", "query_pw", "--out", "report.html"],
    ):
        process = run_cli(command, cwd=tmp_path)
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output
        printed += output
    assert "password=***" in printed and POSTGRES_PASSWORD not in printed
    assert (tmp_path / "report.html").exists() and list((tmp_path / "studies" / "query_pw" / "ray").rglob("tuner.pkl"))
    assert files_containing(tmp_path, POSTGRES_PASSWORD) == []  # report, exports, ray.log, tuner.pkl, results
    ray_logs = [p for p in Path("/tmp/ray").glob("session_*/logs") if p.stat().st_mtime > time.time() - 3600]
    assert not [f for logs in ray_logs for f in files_containing(logs, POSTGRES_PASSWORD)]
    study = optuna.load_study(study_name="query_pw", storage=postgres.url)
    stored = repr(study.user_attrs) + repr([t.user_attrs for t in study.trials])
    assert POSTGRES_PASSWORD not in stored
