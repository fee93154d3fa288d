"""Presets by name: the specs of ``spaces/`` ship inside the package, every command that takes a
spec finds one by name where no such file exists, ``resnet-search spaces`` lists them and copies
one to edit; and after a plain ``pip install`` of the wheel, ``count cifar_5m`` works from an
empty folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PRESETS = sorted(p.stem for p in (REPO / "spaces").glob("*.yaml"))


def cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "search.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_a_spec_is_found_by_name_from_any_folder(tmp_path: Path) -> None:
    for spelling in ("cifar_5m", "cifar_5m.yaml", "spaces/cifar_5m.yaml"):
        counted = cli(["count", spelling, "--json", "--samples", "10"], tmp_path)
        assert counted.returncode == 0, counted.stderr
        assert json.loads(counted.stdout)["max_params"] == 5_000_000
    # A file of that name wins over the preset.
    (tmp_path / "cifar_5m.yaml").write_text((REPO / "spaces" / "paper_se_443.yaml").read_text())
    assert json.loads(cli(["count", "cifar_5m.yaml", "--json"], tmp_path).stdout)["params"] == 4_697_742
    missing = cli(["run", "nope", "--dry-run"], tmp_path)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "nope: no such file, nor a preset's name (cifar_5m, " in missing.stderr


def test_spaces_lists_the_presets_and_copies_one_to_edit(tmp_path: Path) -> None:
    listed = cli(["spaces"], tmp_path)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert [line.split()[0] for line in lines] == PRESETS and all(len(line.split()) > 3 for line in lines)
    presets = json.loads(cli(["spaces", "--json"], tmp_path).stdout)["presets"]
    assert [p["name"] for p in presets] == PRESETS and all(p["description"] for p in presets)

    copied = cli(["spaces", "cifar_5m", "--out", "mine"], tmp_path)
    assert copied.returncode == 0, copied.stderr
    assert copied.stdout.strip() == str(Path("mine") / "cifar_5m.yaml")
    assert (tmp_path / "mine" / "cifar_5m.yaml").read_text() == (REPO / "spaces" / "cifar_5m.yaml").read_text()
    again = cli(["spaces", "cifar_5m", "--out", "mine"], tmp_path)  # never over the user's edits
    assert again.returncode == 2 and "exists" in again.stderr
    here = cli(["spaces", "smoke", "--json"], tmp_path)
    assert json.loads(here.stdout) == {"file": "smoke.yaml"} and (tmp_path / "smoke.yaml").is_file()
    for bad in (["spaces", "nope"], ["spaces", "--out", "x"], ["spaces", "smoke", "--out", "my.yaml"]):
        result = cli(bad, tmp_path)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, (bad, result.stderr)


def build_wheel(out: Path) -> Path:
    """The wheel, built from a copy of what it is made of (the checkout stays clean)."""
    source = out / "source"
    for name in ("search", "spaces"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(REPO / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = out.glob("resnet_search-*.whl")
    return wheel


@pytest.mark.slow  # builds a wheel, makes a virtualenv, starts torch in it
def test_after_a_plain_install_of_the_wheel_presets_work_from_an_empty_folder(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "dist")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {str(p.parent.relative_to(REPO)) for p in (REPO / "search").rglob("__init__.py")}
    assert packages <= {str(Path(n).parent) for n in names}, "pyproject's packages: every folder of search/"
    assert sorted(Path(n).stem for n in names if n.startswith("search/spaces/")) == PRESETS

    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)
    # Its dependencies (torch...) from this environment, after the wheel's own site-packages.
    site = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], text=True
        ).strip()
    )
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")

    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for args in (["count", "cifar_5m", "--samples", "10"], ["count", "spaces/cifar_5m.yaml", "--samples", "10"]):
        result = subprocess.run(
            [env_dir / "bin" / "resnet-search", *args], cwd=empty, capture_output=True, text=True, env=env, timeout=300
        )
        assert result.returncode == 0, result.stderr
        assert str(site / "search" / "spaces" / "cifar_5m.yaml") in result.stdout  # the wheel's copy
    assert not list(empty.iterdir())
