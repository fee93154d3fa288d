"""A model folder is untrusted input (hardening round 3): ``model.json`` is read once through one
typed schema (:mod:`search.train.model_info`), the weights are checked against their
recorded checksum and the model's dtypes, a model that does not fit the data is refused
before anything trains, and a frozen backbone's BatchNorm statistics stay frozen.

Every key of ``model.json`` missing, of the wrong type and out of range goes through the CLI
in-process (``search.cli.main``: the four commands that open a folder, ~600 runs); a sample
of each kind, and every weights case, through the CLI as a subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from conftest import TINY_CLASSES, write_class_images
from model_folders import (
    OLD_FOLDER,
    OLD_INFO,
    change_byte,
    change_dtype,
    copy_folder,
    display,
    edited,
    float32_tensors,
    key_paths,
    record_checksum,
    set_value,
    write_info,
)
from PIL import Image
from safetensors.torch import load_file

from search.cli import main
from search.outputs.model import load_model

FIXED = """
study: {{name: {name}}}
data: {{dataset: imagefolder, val_fraction: 0.25{data}}}
model:
  num_classes: {classes}
  stem: {{width: 8}}
  stages: [{{blocks: 1, width: 8}}, {{blocks: 1, width: 16}}]
{extra}train: {{epochs: {epochs}, batch_size: 8, optimizer: {{name: sgd, lr: 0.05}}}}
"""
SEARCH = FIXED.replace("lr: 0.05", "lr: {{range: [0.01, 0.1]}}").replace("{name}}}", "{name}, n_trials: 2}}")

# Values out of each key's range (the schema's bounds, formats and cross-checks); a key not
# listed takes any value of its type (free text such as ``created``'s device or versions).
OUT_OF_RANGE: dict[str, Any] = {
    "schema_version": 0,
    "classes": ["only one"],
    "input.channels": 4,
    "input.size": 10**9,
    "input.pixels": "BGR",
    "input.resize": "stretched to the input size",
    "normalization.mean": [0.5, 0.5],
    "normalization.std": [0.0, 0.0, 0.0],
    "normalization.formula": "pixel / 255",
    "params": 0,
    "trainable_params": 10**9,
    "flops": -1,
    "val_acc": 1.5,
    "test_acc": -0.25,
    "trained_on": "test",
    "epochs": -1,
    "evaluated.precision": "fp16",
    "data.location": "relative/path",
    "data.classes": ["cyan", "magenta", "yellow"],
    "data.counts.train": -1,
    "data.counts.val": -1,
    "data.counts.test": -1,
    "data.image_size": 0,
    "data.sha256": "not a hash",
    "study": "../elsewhere",
    "trial": -1,
    "seed": 2**40,
    "weights.file": "../model.safetensors",
    "weights.sha256": "0" * 63,
    "created": "yesterday",
}
FREE_TEXT = {"evaluated.device", "versions"}  # mappings of free text: no range, and versions' keys are free
KEYS = [path for path in key_paths(OLD_INFO) if path[0] != "versions" or len(path) == 1]


def wrong_type(value: Any) -> Any:
    """A JSON value of another type than ``value``."""
    if isinstance(value, str):
        return 5
    if isinstance(value, (dict, list)):
        return "text"
    return [value]


CASES = (
    [pytest.param(path, "missing", id=f"{display(path)} missing") for path in KEYS]
    + [pytest.param(path, "wrong type", id=f"{display(path)} wrong type") for path in KEYS]
    + [pytest.param(tuple(key.split(".")), "out of range", id=f"{key} out of range") for key in OUT_OF_RANGE]
)


def test_every_key_with_a_range_has_an_out_of_range_case() -> None:
    leaves = {display(path) for path in KEYS if not isinstance(_value(OLD_INFO, path), dict)}
    assert leaves - FREE_TEXT == set(OUT_OF_RANGE)


def _value(document: dict, path: tuple) -> Any:
    for key in path:
        document = document[key]
    return document


def commands(folder: Path, tmp_path: Path) -> dict[str, list[str]]:
    """The four commands that open a model folder, as argument lists."""
    spec = tmp_path / "again.yaml"
    if not spec.exists():
        spec.write_text(FIXED.format(name="again", data="", classes=3, extra="", epochs=1))
    image = tmp_path / "image.png"
    if not image.exists():
        Image.fromarray(np.full((32, 32, 3), 200, dtype=np.uint8)).save(image)
    return {
        "predict": ["predict", str(folder), str(image)],
        "evaluate": ["evaluate", str(folder)],
        "export-model": ["export-model", str(folder), "--format", "torchscript"],
        "train --init": ["train", str(spec), "--init", str(folder), "--out", str(tmp_path / "out")],
    }


def one_line_in_process(args: list[str], capsys: pytest.CaptureFixture) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("resnet-search: error: ") and "Traceback" not in err, err
    return err.strip()


@pytest.mark.parametrize(("path", "how"), CASES)
def test_every_model_json_key_missing_wrong_typed_or_out_of_range_is_one_line(
    path: tuple, how: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = copy_folder(tmp_path / "model")
    if how == "missing":
        document = edited(OLD_INFO, path, delete=True)
    elif how == "wrong type":
        document = edited(OLD_INFO, path, wrong_type(_value(OLD_INFO, path)))
    else:
        document = edited(OLD_INFO, path, OUT_OF_RANGE[display(path)])
    write_info(folder, document)
    for command, args in commands(folder, tmp_path).items():
        line = one_line_in_process(args, capsys)
        # The file and the key path: the key itself, or one inside it (``normalization.std[0]``).
        where = "model.init_from: " if command == "train --init" else ""
        assert line.startswith(f"resnet-search: error: {where}{folder / 'model.json'}: {display(path)}"), line
    assert not (tmp_path / "out").exists()  # train --init refused before training


def test_an_old_folder_opens_and_the_writer_writes_what_the_reader_reads(tmp_path: Path) -> None:
    """A folder written before the typed reader (schema version 1) still predicts, through the CLI."""
    image = tmp_path / "blue.png"
    write_class_images(tmp_path / "images", TINY_CLASSES["blue"], 1, np.random.default_rng(2))
    (tmp_path / "images" / "0000.png").rename(image)
    result = cli(["predict", str(OLD_FOLDER), str(image), "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    (prediction,) = json.loads(result.stdout)["predictions"]
    assert prediction["label"] in TINY_CLASSES and 0 < prediction["probability"] <= 1
    model = load_model(OLD_FOLDER, "cpu")
    assert model.folder.info.as_dict() == OLD_INFO  # the typed form serialises to the file it came from


# --------------------------------------------------------------------------- through the CLI, subprocesses


def cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "search.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("resnet-search: decoding")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("command", "how", "key"),
    [
        ("predict", "missing", "classes"),
        ("evaluate", "out of range", "normalization.std"),  # a zero std: evaluate reported loss nan
        ("export-model", "wrong type", "input.size"),
        ("train --init", "out of range", "classes"),
    ],
)
def test_a_bad_model_json_through_the_cli_is_one_line_and_exit_2(
    command: str, how: str, key: str, tmp_path: Path
) -> None:
    folder = copy_folder(tmp_path / "model")
    path = tuple(key.split("."))
    value = wrong_type(_value(OLD_INFO, path)) if how == "wrong type" else OUT_OF_RANGE.get(key)
    write_info(folder, edited(OLD_INFO, path, value, delete=how == "missing"))
    line = one_error_line(cli(commands(folder, tmp_path)[command], tmp_path))
    where = "model.init_from: " if command == "train --init" else ""
    assert line.startswith(f"resnet-search: error: {where}{folder / 'model.json'}: {key}"), line


DAMAGES = {
    "a changed byte": "differs from the",
    "a changed dtype": "differs from the",
    "a changed dtype, checksum recorded": "is int32 in the file, float32 in the model",
}


def damage_weights(folder: Path, damage: str) -> Path:
    weights = folder / "model.safetensors"
    if "byte" in damage:
        change_byte(weights, -100)  # inside the last tensor's data: the file still parses
    else:
        change_dtype(weights, float32_tensors(weights)[0], "I32")  # same size: the file still loads
    if "recorded" in damage:
        record_checksum(folder)
    return weights


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_weights_are_refused_by_every_command(
    damage: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    weights = damage_weights(copy_folder(tmp_path / "model"), damage)
    for command, args in commands(weights.parent, tmp_path).items():
        line = one_line_in_process(args, capsys)
        where = "model.init_from: " if command == "train --init" else ""
        assert line.startswith(f"resnet-search: error: {where}{weights}: ") and DAMAGES[damage] in line, line


@pytest.mark.parametrize(
    ("command", "damage"),
    [
        ("predict", "a changed byte"),
        ("predict", "a changed dtype"),
        ("evaluate", "a changed dtype, checksum recorded"),
        ("export-model", "a changed byte"),
        ("train --init", "a changed dtype, checksum recorded"),
    ],
)
def test_weights_with_a_changed_dtype_or_byte_are_refused(command: str, damage: str, tmp_path: Path) -> None:
    weights = damage_weights(copy_folder(tmp_path / "model"), damage)
    line = one_error_line(cli(commands(weights.parent, tmp_path)[command], tmp_path))
    where = "model.init_from: " if command == "train --init" else ""
    assert line.startswith(f"resnet-search: error: {where}{weights}: ") and DAMAGES[damage] in line, line


def test_weights_holding_a_nan_are_refused_even_with_their_checksum_recorded(tmp_path: Path) -> None:
    folder = copy_folder(tmp_path / "model")
    weights = folder / "model.safetensors"
    set_value(weights, "stages.0.0.conv1.weight", float("nan"))
    record_checksum(folder)
    line = one_error_line(cli(commands(folder, tmp_path)["predict"], tmp_path))
    assert "holds NaN or infinite values" in line


# --------------------------------------------------------------------------- a model that does not fit the data


def test_num_classes_that_differs_from_the_data_is_refused_before_the_first_trial(
    tmp_path: Path, tiny_imagefolder: Path
) -> None:
    (tmp_path / "s.yaml").write_text(SEARCH.format(name="s", data="", classes=5, extra="", epochs=1))
    line = one_error_line(cli(["run", "s.yaml", "--data-dir", str(tiny_imagefolder)], tmp_path))
    assert line.endswith(
        "s.yaml: model.num_classes: 5, but the data has 3 classes (blue, green, red): set model.num_classes: 3"
    )
    storage = tmp_path / "studies" / "s.db"
    assert not storage.exists() or not optuna.get_all_study_names(f"sqlite:///{storage}")  # no study, no trial

    (tmp_path / "f.yaml").write_text(FIXED.format(name="f", data="", classes=5, extra="", epochs=1))
    line = one_error_line(cli(["train", "f.yaml", "--data-dir", str(tiny_imagefolder), "--out", "out"], tmp_path))
    assert "f.yaml: model.num_classes: 5, but the data has 3 classes" in line
    assert not (tmp_path / "out").exists()


def other_task(root: Path, names: tuple[str, ...]) -> Path:
    """A small class-folder dataset of other colours (classes ``names``)."""
    rng = np.random.default_rng(7)
    colours = [(40, 220, 220), (230, 220, 40), (220, 40, 220)]
    for name, colour in zip(names, colours):
        write_class_images(root / "train" / name, colour, 8, rng)
        write_class_images(root / "test" / name, colour, 4, rng)
    return root


def test_a_fine_tune_source_of_other_classes_or_input_size_is_refused_before_training(
    tmp_path: Path, tiny_imagefolder: Path
) -> None:
    # As many classes as the head: it would be kept, each output meaning another class.
    other = other_task(tmp_path / "other", ("cyan", "magenta", "yellow"))
    (tmp_path / "f.yaml").write_text(FIXED.format(name="f", data="", classes=3, extra="", epochs=1))
    args = ["train", "f.yaml", "--data-dir", str(other), "--init", str(OLD_FOLDER), "--out", "out"]
    line = one_error_line(cli(args, tmp_path))
    assert f"model.init_from {OLD_FOLDER}: its head classifies blue, green, red, the data has cyan" in line
    # Another input size.
    (tmp_path / "big.yaml").write_text(FIXED.format(name="b", data=", image_size: 48", classes=3, extra="", epochs=1))
    args = ["train", "big.yaml", "--data-dir", str(tiny_imagefolder), "--init", str(OLD_FOLDER), "--out", "out"]
    line = one_error_line(cli(args, tmp_path))
    assert "takes 32x32 images, the data's are 48x48: set data.image_size: 32" in line
    # And for a run, before its first trial.
    extra = f"  init_from: {OLD_FOLDER}\n"
    (tmp_path / "s.yaml").write_text(SEARCH.format(name="s", data="", classes=3, extra=extra, epochs=1))
    line = one_error_line(cli(["run", "s.yaml", "--data-dir", str(other)], tmp_path))
    assert line.startswith("resnet-search: error: s.yaml: model.init_from") and "its head classifies" in line
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- frozen layers stay frozen


@pytest.mark.parametrize("freeze_batchnorm", [True, False])
def test_a_frozen_backbone_keeps_its_batchnorm_statistics_unless_the_spec_says_false(
    freeze_batchnorm: bool, tmp_path: Path
) -> None:
    other = other_task(tmp_path / "two", ("cyan", "yellow"))
    extra = f"  init_from: {OLD_FOLDER}\n  freeze: all_but_head\n"
    if not freeze_batchnorm:
        extra += "  freeze_batchnorm: false\n"
    (tmp_path / "tune.yaml").write_text(FIXED.format(name="t", data="", classes=2, extra=extra, epochs=2))
    result = cli(["train", "tune.yaml", "--data-dir", str(other), "--out", "tuned", "--device", "cpu"], tmp_path)
    assert result.returncode == 0, result.stderr
    before, after = load_file(OLD_FOLDER / "model.safetensors"), load_file(tmp_path / "tuned" / "model.safetensors")
    changed = {name for name in before if not same(before[name], after[name])}
    statistics = {name for name in before if name.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    card = (tmp_path / "tuned" / "README.md").read_text()
    if freeze_batchnorm:
        assert changed == {"head.0.weight", "head.0.bias"}  # every other tensor, statistics included
        assert "6 BatchNorm layers of the frozen part keep their running statistics" in result.stderr
        assert "BatchNorm running statistics of the frozen layers kept as loaded" in card
    else:
        assert statistics <= changed and changed - statistics == {"head.0.weight", "head.0.bias"}
        assert "BatchNorm running statistics of the frozen part follow the new data" in result.stderr
        assert "updated on the new data (freeze_batchnorm: false)" in card


def same(a: Any, b: Any) -> bool:
    return bool(a.shape == b.shape and a.equal(b))


def test_freeze_batchnorm_changes_no_count(tmp_path: Path) -> None:
    spec = Path(__file__).parents[1] / "spaces" / "paper_se_443.yaml"
    result = cli(["count", str(spec)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "4,697,742" in result.stdout
