"""What a user reads is true, through the real CLI, Ray and SQLite on the tiny image folder:
``--n-trials`` adds trials and a study with its trials says so in one line (and the estimate
of its first run counts each trial's start-up); an interrupted trial is ``interrupted`` in
every view; the trials that run at once are those printed, and ``--dry-run`` probes as the
run does; a rerun uses the study's recorded data; and the figures that used to mislead (one
seed's spread, a validation that is not held out, an overhead with no trial, the best so
far, an empty table) do not."""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from searching import kill, load, run_cli, sqlite_url, write_spec

from search.study.keys import FRESH_WORKER, INTERRUPTED, STARTUP_S, is_finished

pytestmark = pytest.mark.slow

MS_PER_STEP = re.compile(r"takes (\d+) ms per step")
FIGURES = re.compile(r"\d[\d.]*\s?(?:ms|s)\b|\d+m\d\ds")  # measured times: 18 ms, 0.1s, 1m05s


def cli(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """``resnet-search ARGS`` to its end: stdout and stderr apart."""
    return subprocess.run(
        [sys.executable, "-m", "search.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def finished(storage: str, name: str) -> int:
    return sum(is_finished(t) for t in load(storage, name).trials)


def assert_startup_counted(result: subprocess.CompletedProcess, took: float, storage: str, name: str) -> None:
    """The estimate of a fresh 2-trial, 1-epoch run counts each trial's start-up, and the summary
    reports the start-ups the trials stored."""
    block = result.stderr
    startup = float(re.search(r"start-up: ([\d.]+)s per trial on a new Ray worker", block).group(1))
    estimate = float(re.search(r"estimate: 2 trials x 1 epoch on \d slot\(s\) = ([\d.]+)s", block).group(1))
    assert startup > 0 and estimate >= startup  # the start-up is in the estimate: not just training steps
    assert estimate > took / 20, (estimate, took)  # not off by the factor of 40 it was

    trials = [t for t in load(storage, name).trials if is_finished(t)]
    assert all(t.user_attrs[STARTUP_S] > 0 and t.user_attrs[FRESH_WORKER] in (True, False) for t in trials)
    assert any(t.user_attrs[FRESH_WORKER] for t in trials)  # the first trial starts a worker
    assert "per trial on a new Ray worker" in result.stdout  # the summary: the run's start-ups
    rows = {line.split()[0]: line.split()[-1] for line in result.stdout.splitlines() if re.match(r"^\s+\d+\s", line)}
    for trial in trials:
        if trial.state == TrialState.COMPLETE:
            assert rows[str(trial.number)] == f"{trial.user_attrs[STARTUP_S]:.1f}s"


def test_n_trials_adds_trials_and_a_study_with_its_trials_says_so_in_one_line(
    tmp_path: Path, tiny_imagefolder: Path
) -> None:
    spec = write_spec(tmp_path, "more", n_trials=2, epochs=1)
    storage = sqlite_url(tmp_path, "more")
    began = time.monotonic()
    first = cli(["run", str(spec), "--data-dir", str(tiny_imagefolder)], tmp_path)
    assert first.returncode == 0, first.stderr
    assert finished(storage, "more") == 2
    assert_startup_counted(first, time.monotonic() - began, storage, "more")

    ray_log = tmp_path / "studies" / "more" / "ray.log"
    seen = ray_log.stat().st_mtime_ns
    again = cli(["run", str(spec), "--data-dir", str(tiny_imagefolder)], tmp_path)
    assert again.returncode == 0, again.stderr
    lines = (again.stdout + again.stderr).strip().splitlines()
    assert lines == [
        "study more has 2 finished trials and study.n_trials is 2: nothing to run (--n-trials N runs N more)"
    ]
    assert ray_log.stat().st_mtime_ns == seen  # no Ray was started
    assert finished(storage, "more") == 2

    more = cli(["run", str(spec), "--data-dir", str(tiny_imagefolder), "--n-trials", "2"], tmp_path)
    assert more.returncode == 0, more.stderr
    assert "2/4 trials finished before this run" in more.stderr and "trials: 2 to run" in more.stderr
    assert "study more: 4 finished trials" in more.stdout
    assert finished(storage, "more") == 4  # two more, whatever study.n_trials says

    usage = cli(["run", "--help"], tmp_path)
    assert "N more finished trials in this run" in " ".join(usage.stdout.split())


def test_an_interrupted_trial_is_interrupted_in_every_view(tmp_path: Path, tiny_imagefolder: Path) -> None:
    spec = write_spec(tmp_path, "stop", n_trials=1, epochs=1)
    storage = sqlite_url(tmp_path, "stop")
    assert cli(["run", str(spec), "--data-dir", str(tiny_imagefolder)], tmp_path).returncode == 0  # one complete
    spec.write_text(spec.read_text().replace("epochs: 1", "epochs: 400"))  # trials long enough to stop one
    process = run_cli(["run", str(spec), "--data-dir", str(tiny_imagefolder), "--n-trials", "2"], cwd=tmp_path)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.5)
        if any(t.state == TrialState.RUNNING and t.intermediate_values for t in load(storage, "stop").trials):
            break
    output = kill(process, signal.SIGINT)  # Ctrl-C while a trial trains
    assert process.returncode == 130, output

    stopped = [t for t in load(storage, "stop").trials if INTERRUPTED in t.user_attrs]
    assert stopped and all(t.state == TrialState.FAIL for t in stopped)
    assert f"trial {stopped[0].number} interrupted: " in output  # the progress lines
    assert f"interrupted {len(stopped)}" in output and not re.search(r"failed [1-9]|trial \d+ failed", output)

    table = cli(["studies", "--storage", storage], tmp_path)
    header, row = table.stdout.splitlines()[:2]
    counts = dict(zip(header.split(), row.split()))
    assert counts["interrupted"] == str(len(stopped)) and counts["failed"] == "0", table.stdout

    report = cli(["report", "--study", "stop"], tmp_path)
    assert report.returncode == 0, report.stderr
    with (tmp_path / "studies" / "stop" / "trials.csv").open() as handle:
        statuses = {row["number"]: row["status"] for row in csv.DictReader(handle)}
    assert {statuses[str(t.number)] for t in stopped} == {"interrupted"} and "failed" not in statuses.values()
    page = (tmp_path / "studies" / "stop" / "report.html").read_text()
    assert f"{len(stopped)} interrupted" in page and "failed" not in page.split("<section>")[0]

    from search.study.notes import trial_note

    study = optuna.load_study(study_name="stop", storage=storage)
    assert trial_note(study, stopped[0], None).startswith("**interrupted**")  # the dashboard's note


def test_the_trials_at_once_are_those_printed_and_the_dry_run_probes_as_the_run(
    tmp_path: Path, tiny_imagefolder: Path
) -> None:
    spec = write_spec(tmp_path, "wide", n_trials=4, epochs=2)
    spec.write_text(spec.read_text().replace("max_concurrent: 1", "max_concurrent: 64"))
    dry = cli(["run", str(spec), "--data-dir", str(tiny_imagefolder), "--dry-run"], tmp_path)
    assert dry.returncode == 0, dry.stderr
    result = cli(["run", str(spec), "--data-dir", str(tiny_imagefolder)], tmp_path)
    assert result.returncode == 0, result.stderr

    at_once = int(re.search(r"(\d+) trial\(s\) at a time \(resources.max_concurrent 64 capped to", result.stderr)[1])
    assert f"concurrency: {at_once} trial(s) at a time (resources.max_concurrent 64 capped to {at_once}" in dry.stdout
    running = [int(n) for n in re.findall(r"\| running (\d+) \|", result.stderr)]
    assert running and max(running) <= at_once, result.stderr
    trials = [t for t in load(sqlite_url(tmp_path, "wide"), "wide").trials if is_finished(t)]
    for trial in trials:  # never more trials between being sent to Ray and their end than run at once
        alongside = [t for t in trials if t.datetime_start <= trial.datetime_start < t.datetime_complete]
        assert len(alongside) <= at_once

    # One probe with the same settings: the same config, batch, device, threads, images and epochs.
    # Their ms per step then differ by this machine's noise only: benchmarks/probe_agreement.py
    # measures that (within 25% on a quiet machine: docs/performance.md); a shared CI box is not one.
    probe_of_run = next(line for line in result.stderr.splitlines() if line.startswith("probe: "))
    probe_of_dry = next(line for line in dry.stdout.splitlines() if line.startswith("probe: "))
    assert MS_PER_STEP.search(probe_of_run) and MS_PER_STEP.search(probe_of_dry)
    assert FIGURES.sub("#", probe_of_run) == FIGURES.sub("#", probe_of_dry), (probe_of_run, probe_of_dry)
    assert ", batch 8) takes" in probe_of_run and "on cpu with 1 thread(s)" in probe_of_run  # the trials' own


def test_a_rerun_uses_the_data_the_study_recorded_and_refuses_it_changed(
    tmp_path: Path, tiny_imagefolder: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_imagefolder, data)
    spec = write_spec(tmp_path, "remembers", n_trials=1, epochs=1)
    storage = sqlite_url(tmp_path, "remembers")
    assert cli(["run", str(spec), "--data-dir", str(data)], tmp_path).returncode == 0

    rerun = cli(["run", str(spec), "--n-trials", "1", "--no-download"], tmp_path)  # no --data-dir
    assert rerun.returncode == 0, rerun.stderr
    assert finished(storage, "remembers") == 2

    next(data.glob("train/red/*.png")).unlink()  # the data changes under the study
    changed = cli(["run", str(spec), "--n-trials", "1"], tmp_path)
    assert changed.returncode == 2
    errors = [line for line in changed.stderr.splitlines() if line.startswith("resnet-search: error: ")]
    assert len(errors) == 1 and f"the data at {data.resolve()} is not what study remembers used" in errors[0]
    assert "pass --data-dir D" in errors[0] and "Traceback" not in changed.stderr
    assert finished(storage, "remembers") == 2


def test_a_run_that_trained_no_trial_claims_no_overhead(tmp_path: Path, tiny_imagefolder: Path) -> None:
    spec = write_spec(tmp_path, "nothing", n_trials=2, epochs=1)
    result = cli(["run", str(spec), "--data-dir", str(tiny_imagefolder), "--timeout", "1s"], tmp_path)
    assert result.returncode == 0, result.stderr  # the budget ended before the first trial could start
    assert "wall time" in result.stdout and "no trial ran" in result.stdout and "overhead" not in result.stdout


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory, tiny_imagefolder: Path, _session_data_cache: Path) -> Path:
    """A finished study of 2 trials (``honest``) in a folder of its own."""
    cwd = tmp_path_factory.mktemp("honest")
    spec = write_spec(cwd, "honest", n_trials=2, epochs=1)
    with pytest.MonkeyPatch.context() as patch:  # module scope: the autouse cache fixture is not active yet
        patch.setenv("RESNET_SEARCH_CACHE", str(_session_data_cache))
        assert cli(["run", str(spec), "--data-dir", str(tiny_imagefolder)], cwd).returncode == 0
    return cwd


def test_retrain_of_one_seed_shows_no_spread_and_no_validation(honest: Path) -> None:
    retrained = cli(["retrain", "--study", "honest", "--top", "1", "--seeds", "0", "--epochs", "1"], honest)
    assert retrained.returncode == 0, retrained.stderr
    assert "(1 seed)" in retrained.stdout and "+-" not in retrained.stdout  # one value has no spread
    epochs = [line for line in retrained.stderr.splitlines() if " epoch " in line]
    assert epochs and not any("val" in line for line in epochs)  # train+val holds nothing out


def test_the_live_view_shows_the_studys_best_and_no_table_before_the_plan(honest: Path, tiny_imagefolder: Path) -> None:
    best = optuna.load_study(study_name="honest", storage=sqlite_url(honest, "honest")).best_trial
    spec = honest / "honest.yaml"
    screen = run_on_a_terminal(["run", str(spec), "--data-dir", str(tiny_imagefolder), "--n-trials", "1"], honest)
    assert "best -" not in screen  # the study's best, from before this run, from the first frame on
    assert f"best {best.value:.4f} (trial {best.number}," in screen
    plan = screen.index("study honest in ")
    assert "finished ·" not in screen[:plan]  # no table before the pre-run block
    assert "finished ·" in screen[plan:]  # the table, under it


def run_on_a_terminal(args: list[str], cwd: Path) -> str:
    """``resnet-search ARGS`` with stderr on a pseudo-terminal (the live view draws there):
    everything it drew, escape sequences removed."""
    import pty

    main, child = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "160", "LINES": "40"}
    process = subprocess.Popen(
        [sys.executable, "-m", "search.cli", *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=child
    )
    os.close(child)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # the terminal closed with the process
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    process.communicate(timeout=600)
    reader.join(timeout=10)
    os.close(main)
    assert process.returncode == 0
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", b"".join(chunks).decode("utf-8", "replace"))
