"""A study written by the version before the layered package (kept as a file in
tests/fixtures, made by `resnet-search run` and `retrain` of that version) still opens,
exports, reports, and serves its notes: the stored keys keep their values."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest
import yaml

from search.cli import main
from search.outputs.dashboard import CurvesRefresher, annotate_missing
from search.study.keys import LEADERBOARD, SPEC_TEXT, status_counts
from search.study.trials import load_study, study_spec, trial_config

FIXTURE = Path(__file__).parent / "fixtures" / "legacy_study.db"


@pytest.fixture
def legacy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "studies").mkdir()
    shutil.copy(FIXTURE, tmp_path / "studies" / "legacy.db")
    monkeypatch.chdir(tmp_path)
    return "sqlite:///studies/legacy.db"


def test_the_old_study_reads_back_with_its_spec_counts_and_leaderboard(legacy: str) -> None:
    study = load_study(legacy, "legacy")
    assert SPEC_TEXT in study.user_attrs and study.user_attrs[LEADERBOARD]["rows"][0]["trial"] == 3
    counts = status_counts(study.get_trials())
    assert counts["complete"] == 3 and counts["rejected"] == 3 and counts["pruned"] == 1
    spec = study_spec(study)
    best = study.best_trial
    assert trial_config(spec, best).model.num_classes == 3


def test_the_old_study_exports_and_reports_through_the_cli(legacy: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["export", "--study", "legacy", "--top", "2", "--out", "exported"]) == 0
    files = sorted(Path("exported").glob("*.yaml"))
    assert [f.name for f in files] == ["legacy_trial3.yaml", "legacy_trial4.yaml"]
    assert yaml.safe_load(files[0].read_text())["provenance"]["trial"] == 3
    assert main(["report", "--study", "legacy", "--out", "report.html"]) == 0
    page = Path("report.html").read_text()
    assert "Leaderboard (retrained)" in page and "legacy" in page
    assert main(["studies"]) == 0
    assert "legacy" in capsys.readouterr().out


def test_notes_and_curves_are_written_for_the_old_study(legacy: str) -> None:
    from optuna_dashboard import get_note

    study = optuna.load_study(study_name="legacy", storage=legacy)
    assert annotate_missing(study) == 0  # the old driver wrote every finished trial's note
    finished = [t for t in study.get_trials() if t.state.is_finished()]
    assert finished and all("**" in get_note(optuna.Trial(study, t._trial_id)) for t in finished)
    refresher = CurvesRefresher([study], every_s=60)
    assert refresher.refresh() == 0  # nothing new since it looked
    trial = study.ask()
    trial.report(0.5, step=1)
    assert refresher.refresh() == 1  # a new report: the plot is redrawn
