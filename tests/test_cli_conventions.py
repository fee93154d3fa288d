"""One meaning per flag: every command's parser, walked through argparse, keeps the conventions
(``--json`` where a result is printed, ``--out`` a folder, ``--top`` 1, ``--device`` one flag,
help on every flag); the README's "Commands" table lists exactly the flags the parsers take; and
the real CLI prints JSON, writes ``--out`` folders with fixed file names, and still takes the
old file spelling of ``--out`` with a note."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_results import made_up_fit, run_study, spec_text

from search.cli import build_parser, in_flags

README = Path(__file__).resolve().parent.parent / "README.md"
# Commands whose output is for people while they work; their results are files that other
# commands print (a model folder: evaluate; a study: studies, export, report).
WORK_COMMANDS = {"train", "run", "dashboard"}
DEVICE_COMMANDS = {"train", "run", "retrain", "predict", "evaluate"}


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.option_strings[-1]: a for a in parser._actions if a.option_strings and a.dest != "help"}


def cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "search.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


# --------------------------------------------------------------------------- the parsers


def test_every_command_keeps_the_flag_conventions() -> None:
    commands = subparsers()
    meanings: dict[str, set[str]] = {}
    for name, parser in commands.items():
        flags = options(parser)
        for flag, action in flags.items():
            assert action.help and len(action.help) > 10, f"{name} {flag}: no help text"
            meanings.setdefault(flag, set()).add(action.help.split(" (default")[0].split("; writes")[0])
        printed = name not in WORK_COMMANDS
        assert ("--json" in flags) == printed, f"{name}: --json wherever a result is printed, only there"
        if "--out" in flags:
            out = flags["--out"]
            assert out.metavar == "DIR" and out.help.startswith("output folder"), f"{name}: --out is a folder"
            assert "writes " in out.help or name in WORK_COMMANDS, f"{name}: --out's file names in its help"
        if "--top" in flags:
            assert flags["--top"].default == 1 and not flags["--top"].required, f"{name}: --top defaults to 1"
        assert ("--device" in flags) == (name in DEVICE_COMMANDS), name
    for flag, helps in meanings.items():
        assert len(helps) == 1, f"{flag} means different things on different commands: {helps}"
    devices = {options(commands[n])["--device"] for n in DEVICE_COMMANDS}
    assert {(tuple(d.choices), d.default, d.help) for d in devices} == {
        (("cpu", "cuda"), None, next(iter(devices)).help)
    }, "--device: one flag, the same everywhere"


def readme_flags() -> dict[str, set[str]]:
    """The README's "Commands" table: each row's command and the flags it lists."""
    section = README.read_text().split("## Commands", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    table = {}
    for row in rows:
        usage = row.split("`")[1]
        table[usage.split()[0]] = set(re.findall(r"--[a-z][a-z-]*", usage))
    return table


def test_the_readme_lists_exactly_the_flags_of_every_command() -> None:
    documented = readme_flags()
    parsers = subparsers()
    assert sorted(documented) == sorted(parsers), "a row per command"
    for name, parser in parsers.items():
        assert documented[name] == set(options(parser)), f"README's {name} row vs `resnet-search {name} --help`"


USE = re.compile(r"resnet-search ([a-z][a-z-]*)([^`#|;\n]*)")  # a command line, to its end or a comment


def test_every_command_line_in_the_docs_uses_flags_its_command_takes() -> None:
    commands = {name: set(options(parser)) | {"--help"} for name, parser in subparsers().items()}
    docs = [README, *sorted((README.parent / "docs").glob("*.md")), *sorted((README.parent / "spaces").glob("*.yaml"))]
    used = 0
    for doc in docs:
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            for match in USE.finditer(line):
                if match[1] not in commands:  # prose: "resnet-search never downloads them"
                    continue
                for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]*", match[2]):
                    assert flag in commands[match[1]], f"{doc.name}:{number}: {match[1]} takes no {flag}"
                    used += 1
    assert used > 20  # the test reads the docs at all


# --------------------------------------------------------------------------- through the CLI


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a real study (made-up training results, no Ray) in its default place."""
    root = tmp_path_factory.mktemp("conventions")
    (root / "studies").mkdir()
    run_study(f"sqlite:///{root / 'studies' / 'quick.db'}", spec_text("quick", n_trials=6), made_up_fit)
    return root


def test_study_commands_print_json_and_write_out_folders(study_dir: Path, tmp_path: Path) -> None:
    listed = cli(["studies", "--json"], study_dir)
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)["studies"]
    assert row["name"] == "quick" and row["counts"]["complete"] >= 1

    exported = cli(["export", "--json", "--out", str(tmp_path / "export")], study_dir)
    assert exported.returncode == 0, exported.stderr
    (file,) = json.loads(exported.stdout)["files"]  # --top: 1 by default
    assert Path(file).parent == tmp_path / "export" and Path(file).name.startswith("quick_trial")

    reported = cli(["report", "--out", str(tmp_path / "report"), "--json"], study_dir)
    assert reported.returncode == 0, reported.stderr
    files = json.loads(reported.stdout)
    assert (files["html"], files["csv"]) == (
        str(tmp_path / "report" / "report.html"),
        str(tmp_path / "report" / "trials.csv"),
    )
    assert {p.name for p in (tmp_path / "report").iterdir()} == {"report.html", "trials.csv", "plotly.min.js"}

    # The old spelling, a file, still works for one release, with a one-line note on stderr.
    old = cli(["report", "--out", str(tmp_path / "old" / "report.html")], study_dir)
    assert old.returncode == 0, old.stderr
    assert (tmp_path / "old" / "report.html").is_file() and (tmp_path / "old" / "trials.csv").is_file()
    (note,) = old.stderr.strip().splitlines()
    assert note.startswith("resnet-search report: note: --out takes a folder now") and str(tmp_path / "old") in note


def test_retrain_takes_top_1_by_default_and_prints_json(
    study_dir: Path, tiny_imagefolder: Path, tmp_path: Path
) -> None:
    args = ["retrain", "--data-dir", str(tiny_imagefolder), "--epochs", "1", "--device", "cpu"]
    retrained = cli([*args, "--out", str(tmp_path / "retrain"), "--json"], study_dir)
    assert retrained.returncode == 0, retrained.stderr
    board = json.loads(retrained.stdout)
    (row,) = board["rows"]  # --top 1
    assert board["csv"] == str(tmp_path / "retrain" / "leaderboard.csv")
    assert row["seeds"] == [0] and (tmp_path / "retrain" / f"trial{row['trial']}" / "seed0" / "model.json").is_file()


def test_model_commands_print_json_and_write_out_folders(
    model_dir: Path, tiny_imagefolder: Path, tmp_path: Path
) -> None:
    evaluated = cli(["evaluate", str(model_dir), "--out", str(tmp_path / "eval"), "--json"], tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout)
    written = tmp_path / "eval" / "evaluation_test.json"
    assert result["file"] == str(written) and json.loads(written.read_text())["accuracy"] == result["accuracy"]

    old = cli(["evaluate", str(model_dir), "--out", str(tmp_path / "old.json"), "--split", "val"], tmp_path)
    assert old.returncode == 0, old.stderr
    assert "evaluate: note: --out takes a folder now" in old.stderr and (tmp_path / "evaluation_val.json").is_file()

    exported = cli(["export-model", str(model_dir), "--format", "torchscript", "--out", "ts", "--json"], tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)["files"] == ["ts/model.pt"] and (tmp_path / "ts" / "model.pt").is_file()

    image = tiny_imagefolder / "test" / "red" / "0000.png"
    predicted = cli(["predict", str(model_dir), str(image), "--json", "--top-k", "2"], tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    (prediction,) = json.loads(predicted.stdout)["predictions"]
    assert prediction["file"] == str(image) and len(prediction["top"]) == 2


def test_run_takes_device_and_cuda_means_a_gpu(tmp_path: Path, tiny_imagefolder: Path) -> None:
    spec = tmp_path / "gpu.yaml"
    spec.write_text(spec_text("gpu") + "resources: {gpu: 1}\n")
    asked = cli(["run", str(spec), "--dry-run", "--data-dir", str(tiny_imagefolder)], tmp_path)
    forced = cli(["run", str(spec), "--dry-run", "--data-dir", str(tiny_imagefolder), "--device", "cpu"], tmp_path)
    assert forced.returncode == 0, forced.stderr
    if not torch.cuda.is_available():  # the spec's GPU, on a machine without one: said; --device cpu: asked for
        assert "asks for 1 GPU per trial" in asked.stdout + asked.stderr
        assert "GPU per trial" not in forced.stdout + forced.stderr
        required = cli(["run", str(spec), "--device", "cuda"], tmp_path)
        assert required.returncode == 2 and required.stderr.startswith("resnet-search: error: --device cuda:")
        assert required.stderr.count("\n") == 1 and not (tmp_path / "studies").exists()


def test_the_python_api_names_its_parameter_and_the_cli_its_flag(tmp_path: Path) -> None:
    from search.config import DataConfig, UserError
    from search.data import load_dataset

    with pytest.raises(UserError, match=f"data_dir={tmp_path / 'missing'} does not exist"):
        load_dataset(DataConfig(dataset="imagefolder"), data_dir=tmp_path / "missing")
    trained = cli(["train", "quickstart", "--data-dir", str(tmp_path / "missing")], tmp_path)
    assert trained.returncode == 2
    assert f"--data-dir {tmp_path / 'missing'} does not exist" in trained.stderr and "data_dir" not in trained.stderr


@pytest.mark.parametrize(
    ("library", "cli_line"),
    [
        ("data_dir=/x does not exist", "--data-dir /x does not exist"),
        ("point at local data with data_dir=PATH, data.root", "point at local data with --data-dir PATH, data.root"),
        ("device='cuda' asks for a GPU", "--device cuda asks for a GPU"),
        ("seeds= needs at least one seed", "--seeds needs at least one seed"),
        ("memory_format=channels_last", "memory_format=channels_last"),  # no flag's parameter
    ],
)
def test_the_cli_says_the_flag_where_the_library_says_its_parameter(library: str, cli_line: str) -> None:
    assert in_flags(library) == cli_line


def test_retrain_that_diverges_everywhere_exits_1_not_0(tiny_imagefolder: Path, tmp_path: Path) -> None:
    (tmp_path / "studies").mkdir()
    text = spec_text("wild", n_trials=3).replace("range: [0.001, 0.3]", "range: [1.0e+8, 1.0e+9]")
    run_study(f"sqlite:///{tmp_path / 'studies' / 'wild.db'}", text, made_up_fit)
    retrained = cli(["retrain", "--data-dir", str(tiny_imagefolder), "--epochs", "1", "--out", "out"], tmp_path)
    assert retrained.returncode == 1, retrained.stdout + retrained.stderr
    assert retrained.stderr.strip().splitlines()[-1].startswith("resnet-search: error: every retraining diverged")
    assert "Traceback" not in retrained.stderr and (tmp_path / "out" / "leaderboard.csv").is_file()
