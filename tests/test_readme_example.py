"""The README's Python example runs as written: its code block is taken from README.md and run
in a fresh interpreter, in an empty folder that holds what the example names: the data archive
(``data = "cifar-10-python.tar.gz"``) and, for the fast case, a spec file named ``smoke`` (a
file wins over the preset of that name) sized for the tiny generated images. The example on the
real CIFAR-10, preset and all, and how long it takes, is ``benchmarks/readme_example.py``: a
speed claim is measured in a benchmark, not a timed test."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import optuna
import pytest
from test_results import spec_text

from search.study.keys import LEADERBOARD, is_finished

REPO = Path(__file__).resolve().parent.parent
DATA_LINE = re.compile(r'^data = "(?P<name>[^"]+)"', re.MULTILINE)

pytestmark = pytest.mark.slow  # the example starts a real (local) Ray


def readme_example() -> str:
    """The Python code block of the README's "Python API" section."""
    section = (REPO / "README.md").read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    return code


def run_example(folder: Path, cache: Path) -> subprocess.CompletedProcess:
    (folder / "example.py").write_text(readme_example())
    return subprocess.run(
        [sys.executable, "example.py"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "RESNET_SEARCH_CACHE": str(cache), "PYTHONPATH": str(REPO)},
    )


def check_finished(result: subprocess.CompletedProcess, folder: Path) -> None:
    """Two finished trials (``n_trials=2``), the winner retrained, the report written."""
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{folder / 'studies' / 'smoke.db'}")
    assert sum(is_finished(t) for t in study.trials) == 2
    assert LEADERBOARD in study.user_attrs and "leaderboard:" in result.stdout
    assert (folder / "studies" / "smoke" / "report.html").is_file()


def test_the_readme_example_runs_as_written(tmp_path: Path, tiny_imagefolder: Path) -> None:
    name = DATA_LINE.search(readme_example())["name"]  # type: ignore[index]
    with tarfile.open(tmp_path / name, "w:gz") as archive:
        archive.add(tiny_imagefolder, arcname="tiny")
    # The tiny images' own search, named as the example's preset: a file beats the preset.
    (tmp_path / "smoke").write_text(spec_text("smoke", n_trials=8))
    check_finished(run_example(tmp_path, tmp_path / "cache"), tmp_path)
