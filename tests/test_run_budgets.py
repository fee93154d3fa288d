"""Budgets of a run through the real CLI, Ray and SQLite: ``--timeout`` ends a 200-trial study
long before its trials would, leaving nothing RUNNING or WAITING; ``--n-trials`` continues it
and trains the stopped trials again. Also: the spec's ``study.timeout`` and bad budgets."""

from __future__ import annotations

import re
import time
from dataclasses import replace
from pathlib import Path

import pytest
from optuna.trial import TrialState
from searching import load, run_cli, sqlite_url, write_spec

from search.cli import main
from search.config import parse_spec
from search.study.keys import INTERRUPTED, RETRY_OF, is_finished

FINISHED_LINE = re.compile(r"^trial \d+ (complete|pruned|failed)")


@pytest.mark.slow
def test_timeout_ends_a_long_study_cleanly_and_n_trials_continues_it(tmp_path: Path, tiny_imagefolder: Path) -> None:
    spec = write_spec(tmp_path, "budget", n_trials=200, epochs=3)
    storage = sqlite_url(tmp_path, "budget")
    began = time.monotonic()
    # 40 s: Ray's start and a worker's fit in it even on a loaded machine (the tests run two
    # files at a time), with the first trial's three short epochs.
    process = run_cli(["run", str(spec), "--data-dir", str(tiny_imagefolder), "--timeout", "40s"], cwd=tmp_path)
    output, _ = process.communicate(timeout=300)
    took = time.monotonic() - began
    assert process.returncode == 0, output
    assert "Traceback" not in output
    # 200 trials take minutes here; the budget, one short epoch and the teardown take far less.
    assert took < 90, took
    assert "the time budget of 0m40s ended the run" in output and "a rerun with a larger --timeout" in output

    trials = load(storage, "budget").trials
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    finished = [t for t in trials if is_finished(t)]
    assert 1 <= len(finished) <= 199
    stopped = [t for t in trials if INTERRUPTED in t.user_attrs]
    assert all(t.state == TrialState.FAIL and "time budget" in t.user_attrs[INTERRUPTED] for t in stopped)
    # Not a terminal: one line per finished trial, and progress lines at most one per 30 s.
    lines = output.splitlines()
    assert sum(bool(FINISHED_LINE.match(line)) for line in lines) == len(finished)
    assert sum(line.startswith("[") for line in lines) <= took / 30 + 1
    assert any(line.startswith("devices: ") for line in lines)  # the pre-run block
    assert any(line.startswith("time budget: 0m40s") for line in lines)

    more = len(finished) + 2  # --n-trials 2: two more finished trials in this run
    rerun = run_cli(["run", str(spec), "--data-dir", str(tiny_imagefolder), "--n-trials", "2"], cwd=tmp_path)
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output
    assert f"{len(finished)}/{more} trials finished before this run" in output
    trials = load(storage, "budget").trials
    assert sum(is_finished(t) for t in trials) == more
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    retried = {t.user_attrs[RETRY_OF]: t for t in trials if RETRY_OF in t.user_attrs}
    assert set(retried) == {t.number for t in stopped}  # every stopped trial trained again, once
    for trial in stopped:
        assert retried[trial.number].params == trial.params
        assert is_finished(retried[trial.number])


def test_the_spec_takes_a_time_budget_in_the_forms_the_flag_takes() -> None:
    base = "model: {stages: [{blocks: {range: [1, 2]}, width: 16}]}\n"
    for text, seconds in (("90s", 90), ("30m", 1800), ("2h", 7200), ("1d", 86400), ("45", 45)):
        assert parse_spec(f"study: {{timeout: {text}}}\n{base}").study.timeout_s == seconds
    assert parse_spec(base).study.timeout_s is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--timeout", "2x"], "argument --timeout: must be a duration like 90s, 30m, 2h or 1d"),
        (["--timeout", "0s"], "argument --timeout: must be above 0"),
        (["--n-trials", "0"], "argument --n-trials: must be a whole number >= 1"),
    ],
)
def test_bad_budgets_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], message: str
) -> None:
    spec = write_spec(tmp_path, "bad", n_trials=2, epochs=1)
    with pytest.raises(SystemExit) as stopped:
        main(["run", str(spec), *args])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_a_bad_timeout_in_the_spec_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = write_spec(tmp_path, "badspec", n_trials=2, epochs=1)
    spec.write_text(spec.read_text().replace("  seed: 0\n", "  seed: 0\n  timeout: soon\n"))
    assert main(["run", str(spec), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"resnet-search: error: {spec}: study.timeout: must be a duration like 90s, 30m, 2h or 1d, got 'soon'"
    )


@pytest.mark.slow  # the probe trains a few steps of a 5M-parameter config on the CPU
def test_the_pre_run_block_says_plainly_that_a_cpu_search_would_take_days() -> None:
    from search.config import load_spec
    from search.engine.cost import probe_cost, trial_concurrency
    from search.engine.preflight import RunPlan, preflight_lines

    spec = load_spec(Path(__file__).parent.parent / "spaces" / "cifar_5m.yaml")
    cluster = {"CPU": 2.0}
    concurrency = trial_concurrency(spec, cluster, use_gpu=False)
    cost = probe_cost(spec, 32, 45_000, slots=concurrency.slots)
    assert cost.epoch_s and cost.flops and cost.mean_flops  # the probe's measures
    plan = RunPlan(spec, "sqlite:///studies/x.db", 0, 60, 60, cluster, False, concurrency, 45_000, cost)
    lines = preflight_lines(plan)
    text = "\n".join(lines)
    at_once = min(spec.resources.max_concurrent, int(2 // spec.resources.cpu))
    assert "devices: CPU only" in text and f"{at_once} trial(s) at a time" in text
    assert f"resources.max_concurrent {spec.resources.max_concurrent} capped to {at_once}" in text
    assert f"trials: {spec.study.n_trials} to run" in text and "time budget: none" in text
    warning = next(line for line in lines if line.startswith("warning: "))
    assert "no GPU" in warning and "--timeout" in warning and "spaces/smoke.yaml" in warning
    budgeted = replace(spec, study=replace(spec.study, timeout=7200.0))
    bounded = preflight_lines(replace(plan, spec=budgeted))
    assert not any(line.startswith("warning: ") for line in bounded)  # a time budget bounds it already
    assert any(line.startswith("time budget: 2h00m") for line in bounded)
