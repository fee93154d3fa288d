"""``benchmarks/search_efficiency.py --quick`` end to end: round 3's strategies (ours with rungs,
a prior and GP, round 2's default, Ray Tune's ASHA, BOHB, DEHB, SMAC3, with the cheaper-fidelity
rows) on real CIFAR-10 at an equal compute budget in full-epoch equivalents, then the winners
retrained and the records, the report, the tables and the anytime figure written; run again,
every run is read back from its record."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REAL_CIFAR10, RealCifar10

from benchmarks.search_quality.plan import ROUND3_KEYS

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "search_efficiency.py"
KEYS = list(ROUND3_KEYS)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """The quick mode's output folder (one run for every test of this module).

    Module-scoped, so it runs before the per-test cache isolation of conftest: a caller's
    ``RESNET_SEARCH_CACHE`` (a warm tensor cache) is used, else the session's decoded CIFAR-10,
    never ``~/.cache``.
    """
    for package in ("dehb", "smac", "hpbandster"):
        pytest.importorskip(package, reason=f"the peers need {package}: pip install -e '.[bench]'")
    real: RealCifar10 = request.getfixturevalue("real_cifar10")  # skips where the data is absent
    out = tmp_path_factory.mktemp("search_efficiency")
    cache = os.environ.get("RESNET_SEARCH_CACHE") or str(real.cache)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RESNET_SEARCH_CACHE": cache}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--data-dir", str(REAL_CIFAR10)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (out / "stdout.txt").write_text(done.stdout)
    (out / "cache.txt").write_text(cache)
    return out


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_every_strategy_has_a_row_and_a_curve(quick_run: Path) -> None:
    document = results(quick_run)
    assert sorted(row["strategy"] for row in document["strategies"]) == sorted(KEYS)
    with (quick_run / "records" / "summary.csv").open() as handle:
        assert sorted(row["strategy"] for row in csv.DictReader(handle)) == sorted(KEYS)
    report = (quick_run / "records" / "report.md").read_text()
    table_rows = [line for line in report.splitlines() if line.startswith("| (")]
    assert len(table_rows) == len(KEYS)
    assert "full-epoch equivalents to (a)'s final best" in report and "/ repeats |" in report
    assert sorted(run["strategy"] for run in document["runs"]) == sorted(KEYS)
    for run in document["runs"]:
        assert run["completions"], f"({run['strategy']}) completed no trial"
        assert run["outcomes"] and all(end >= start for start, end, _ in run["outcomes"])


def test_budgets_are_equal_and_spent_in_full_epoch_equivalents(quick_run: Path) -> None:
    document = results(quick_run)
    (budget,) = document["budgets"]
    for run in document["runs"]:
        assert run["budget"] == budget
        # The step that spends past the budget is the last: less than one full-size epoch over.
        assert budget <= run["spent"] < budget + 1, f"({run['strategy']}) spent {run['spent']} of {budget}"
        spent = [cost for cost, _, _ in run["completions"]]
        assert spent == sorted(spent) and spent[0] <= budget
    cheap = [run for run in document["runs"] if run["strategy"] == "c"]
    starts = [start for start, _, _ in cheap[0]["outcomes"]]
    assert any(0 < b - a < 0.2 for a, b in zip(starts, starts[1:]))  # a look at 8 px costs a small share
    with (quick_run / "curves.csv").open() as handle:
        last = {}
        for row in csv.DictReader(handle):
            last[row["strategy"]] = int(row["full_epochs"])
    assert set(last.values()) == {budget}  # every curve ends at the same compute


def test_every_run_is_recorded_and_read_back(quick_run: Path) -> None:
    records = sorted((quick_run / "records" / "runs").glob("*.json"))
    assert len(records) == len(KEYS) and all(path.stat().st_size < 50_000 for path in records)
    document = json.loads(records[0].read_text())
    assert set(document) == {"fingerprint", "repeats", "run"} and "wall_s" in document["run"]
    written = {path: path.stat().st_mtime_ns for path in records}
    again = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(quick_run), "--data-dir", str(REAL_CIFAR10)],
        cwd=REPO,
        env={**os.environ, "RESNET_SEARCH_CACHE": (quick_run / "cache.txt").read_text()},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert {path: path.stat().st_mtime_ns for path in records} == written  # read back: none ran again


def test_figure_target_paired_comparison_and_retraining(quick_run: Path) -> None:
    document = results(quick_run)
    (budget,) = document["budgets"]
    html = (quick_run / f"anytime_{budget}.html").read_text()
    assert "plotly" in html.lower() and "full-epoch equivalents" in html
    assert (quick_run / "records" / f"anytime_{budget}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (quick_run / "records" / "report.md").read_text()
    assert "Paired comparison" in report and "(c) minus (c-old)" in report and "(c-gp) minus (c-old)" in report
    assert document["verdict"]["tuning"][0].startswith(f"{budget} full-epoch equivalents: rank 1")
    for row in document["strategies"]:
        assert 0 < row["target"] <= 1
        assert row["seed_compute_to_target"] and len(row["test_acc"]) == len(document["retrain_seeds"])
        assert all(0 <= acc <= 1 for acc in row["test_acc"])
        assert (quick_run / "winners" / f"{row['strategy']}_b{budget}_tuning.db").exists()
    (baseline,) = [row for row in document["strategies"] if row["strategy"] == "a"]
    assert baseline["compute_to_target"] is not None  # (a) reaches its own final best
