"""``benchmarks/search_efficiency.py --quick`` end to end: every strategy (ours, Ray Tune's ASHA,
BOHB, DEHB, SMAC3) on real CIFAR-10 at an equal epoch budget, then the winners retrained and
the report, the tables and the anytime figure written."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.search_quality.settings import STRATEGIES

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "search_efficiency.py"
REAL_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
KEYS = [s.key for s in STRATEGIES]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quick mode's output folder (one run for every test of this module).

    Module-scoped, so it runs before the per-test cache isolation of conftest: a caller's
    ``RESNET_SEARCH_CACHE`` (a warm tensor cache) is used, else a fresh one, never ``~/.cache``.
    """
    if not REAL_ARCHIVE.exists():
        pytest.skip(f"needs the real CIFAR-10 at {REAL_ARCHIVE} (../shared/data beside the repository)")
    for package in ("dehb", "smac", "hpbandster"):
        pytest.importorskip(package, reason=f"the peers need {package}: pip install -e '.[bench]'")
    out = tmp_path_factory.mktemp("search_efficiency")
    cache = os.environ.get("RESNET_SEARCH_CACHE") or str(tmp_path_factory.mktemp("cache"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RESNET_SEARCH_CACHE": cache}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (out / "stdout.txt").write_text(done.stdout)
    return out


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_every_strategy_has_a_row_and_a_curve(quick_run: Path) -> None:
    document = results(quick_run)
    assert [row["strategy"] for row in document["strategies"]] == KEYS
    with (quick_run / "summary.csv").open() as handle:
        assert [row["strategy"] for row in csv.DictReader(handle)] == KEYS
    table_rows = [line for line in (quick_run / "report.md").read_text().splitlines() if line.startswith("| (")]
    assert len(table_rows) == len(KEYS)
    assert sorted(run["strategy"] for run in document["runs"]) == sorted(KEYS)
    for run in document["runs"]:
        assert run["completions"], f"({run['strategy']}) completed no trial"
        assert run["outcomes"] and all(end >= start for start, end, _ in run["outcomes"])


def test_budgets_are_equal_and_never_exceeded(quick_run: Path) -> None:
    document = results(quick_run)
    (budget,) = document["budgets"]
    for run in document["runs"]:
        assert run["budget_epochs"] == budget
        assert run["epochs_spent"] == budget, f"({run['strategy']}) spent {run['epochs_spent']} of {budget}"
        spent = [epochs for epochs, _, _ in run["completions"]]
        assert spent == sorted(spent) and spent[-1] <= budget
    with (quick_run / "curves.csv").open() as handle:
        last = {}
        for row in csv.DictReader(handle):
            last[row["strategy"]] = int(row["epochs"])
    assert set(last.values()) == {budget}  # every curve ends at the same compute


def test_figure_target_paired_comparison_and_retraining(quick_run: Path) -> None:
    document = results(quick_run)
    (budget,) = document["budgets"]
    html = (quick_run / f"anytime_{budget}.html").read_text()
    assert "plotly" in html.lower() and "training epochs spent" in html
    assert (quick_run / f"anytime_{budget}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (quick_run / "report.md").read_text()
    assert "Paired comparison" in report and "(c) minus" in report
    assert document["verdict"]["tuning"][0].startswith(f"{budget} epochs: rank 1")
    for row in document["strategies"]:
        assert 0 < row["target"] <= 1
        assert row["seed_epochs_to_target"] and len(row["test_acc"]) == len(document["retrain_seeds"])
        assert all(0 <= acc <= 1 for acc in row["test_acc"])
        assert (quick_run / "winners" / f"{row['strategy']}_b{budget}_tuning.db").exists()
    baseline = document["strategies"][0]
    assert baseline["epochs_to_target"] is not None  # (a) reaches its own final best
