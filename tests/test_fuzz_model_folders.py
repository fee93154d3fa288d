"""A property-based fuzzer (hypothesis) over model folders, the untrusted input that ``predict``,
``evaluate``, ``export-model`` and ``train --init`` open.

Folders: a real folder (``tests/fixtures/model_v1``) whose ``model.json`` is mutated (a key
deleted, added, or given a hostile value: another type, extreme and out-of-range numbers,
NaN, class lists too short, too long or repeated, unicode, deep structures) or replaced by
random JSON, text or bytes; and whose ``model.safetensors`` is mutated (a dtype changed to
another of the same byte size, a byte changed, the file truncated, a shape or an offset
of the header changed, a weight set to an extreme value), with or without the recorded
checksum brought up to date; and ``model.json`` with in-range values only (a std as small as
allowed), which should load.

Property, in-process for speed: :func:`search.load_model` either raises ``UserError`` with
one line naming the folder's file, or loads a model whose predictions are finite
probabilities; ``train --init``'s path (:func:`check_init`, then :func:`load_init_weights`
into a fresh model) the same, its weights finite. Never another exception, never a NaN.
A few folders go through the CLI as a subprocess (``predict``): exit 0 with finite
probabilities, or exit 2 and one line.

The default suite runs ``DEFAULT_EXAMPLES`` (derandomized); ``pytest -m fuzz`` runs
``FUZZ_SLOW_EXAMPLES`` (left out of the default suite by ``addopts``).
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from model_folders import (
    DTYPE_SIZE,
    OLD_FOLDER,
    OLD_INFO,
    SAME_SIZE,
    read_header,
    record_checksum,
    set_value,
    write_header,
)
from PIL import Image
from test_fuzz_specs import _paths, fuzz_settings, hostile_values, values

from search.config import UserError
from search.models import build_model
from search.outputs.model import load_model
from search.train.model_info import MIN_STD
from search.train.warm_start import check_init, load_init_weights

DEFAULT_EXAMPLES = 150
FUZZ_SLOW_EXAMPLES = 5_000
SECONDS_PER_EXAMPLE = 30.0  # generous: the machine is shared; a hang is minutes
IMAGE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))

# Values that sit at or across the bounds of model.json's fields.
EDGE_VALUES: list[Any] = [
    0,
    -1,
    1,
    2,
    3,
    4,
    8,
    16,
    4096,
    4097,
    2**31,
    2**64,
    1e-7,
    1e-6,
    1e-300,
    5e-324,
    1.5,
    float("nan"),
    float("inf"),
    -float("inf"),
    "",
    "RGB",
    "fp32",
    "bf16",
    "train+val",
    "model.safetensors",
    "../model.safetensors",
    "0" * 64,
    "/",
    [],
    [0.5] * 3,
    [0.0] * 3,
    [1e-9] * 3,
    [0.5] * 2,
    [0.5] * 4,
    ["blue", "green", "red"],
    ["red", "green", "blue"],
    ["a", "a", "b"],
    ["blue", "green"],
    ["blue", "green", "red", "cyan"],
    [str(i) for i in range(1000)],
    None,
    True,
    {},
]
# Weights a float32 element may be edited to: finite ones that overflow on the way, and non-finite ones.
EXTREME_WEIGHTS = [3e38, -3e38, 1e30, 1e20, 1e10, float("nan"), float("inf"), -float("inf")]
json_values = st.one_of(hostile_values, st.sampled_from(EDGE_VALUES))


@st.composite
def mutated_info(draw: st.DrawFn) -> dict:
    """``model.json`` of the folder with one to three random mutations."""
    document = copy.deepcopy(OLD_INFO)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(document)[1:]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        kind = draw(st.sampled_from(["delete", "replace", "replace", "add"]))
        if kind == "delete":
            del parent[path[-1]]
        elif kind == "replace":
            parent[path[-1]] = copy.deepcopy(draw(json_values))  # sampled_from hands out shared objects
        elif isinstance(parent[path[-1]], dict):
            parent[path[-1]][draw(st.text(max_size=8))] = copy.deepcopy(draw(json_values))
    return document


@st.composite
def in_range_info(draw: st.DrawFn) -> dict:
    """``model.json`` with values inside every bound: the folder should load, and must not
    predict NaN (the smallest std makes normalised pixels a million times larger)."""
    document = copy.deepcopy(OLD_INFO)
    unit = st.floats(0.0, 1.0)
    document["normalization"]["mean"] = draw(st.lists(unit, min_size=3, max_size=3))
    std = st.one_of(st.sampled_from([MIN_STD, 1e-5, 1e-3, 1.0]), st.floats(MIN_STD, 1.0))
    document["normalization"]["std"] = draw(st.lists(std, min_size=3, max_size=3))
    document["val_acc"] = draw(st.one_of(st.none(), unit))
    document["data"] = draw(st.sampled_from([document["data"], None]))
    if document["data"] is None:
        document["input"]["size"] = draw(st.sampled_from([8, 16, 32, 64]))  # sizes the model takes
    return document


info_texts = st.one_of(
    in_range_info().map(json.dumps),
    mutated_info().map(json.dumps),
    mutated_info().map(json.dumps),
    mutated_info().map(json.dumps),
    values.map(lambda v: json.dumps(v)),
    st.text(max_size=200),
    st.just(""),
)


@st.composite
def weights_damage(draw: st.DrawFn) -> dict[str, Any]:
    """How the weights file is damaged: a kind and where."""
    header, body = read_header(OLD_FOLDER / "model.safetensors")
    names = sorted(name for name in header if name != "__metadata__")
    kind = draw(st.sampled_from(["dtype", "byte", "truncate", "shape", "offsets", "value"]))
    damage: dict[str, Any] = {"kind": kind, "record": draw(st.booleans())}
    if kind == "dtype":
        name = draw(st.sampled_from(names))
        size = DTYPE_SIZE[header[name]["dtype"]]
        damage |= {"tensor": name, "dtype": draw(st.sampled_from(SAME_SIZE[size]))}
    elif kind == "byte":
        size = (OLD_FOLDER / "model.safetensors").stat().st_size
        damage |= {"offset": draw(st.integers(0, size - 1)), "xor": draw(st.integers(1, 255))}
    elif kind == "truncate":
        damage |= {"length": draw(st.integers(0, (OLD_FOLDER / "model.safetensors").stat().st_size - 1))}
    elif kind == "value":
        floats = [name for name in names if header[name]["dtype"] == "F32"]
        damage |= {"tensor": draw(st.sampled_from(floats)), "value": draw(st.sampled_from(EXTREME_WEIGHTS))}
    else:
        damage |= {"tensor": draw(st.sampled_from(names)), "value": draw(st.lists(st.integers(-2, 2**20), max_size=4))}
    return damage


def damage_weights(path: Path, damage: dict[str, Any]) -> None:
    data = path.read_bytes()
    kind = damage["kind"]
    if kind == "byte":
        changed = bytearray(data)
        changed[damage["offset"]] ^= damage["xor"]
        path.write_bytes(bytes(changed))
    elif kind == "truncate":
        path.write_bytes(data[: damage["length"]])
    elif kind == "value":
        set_value(path, damage["tensor"], damage["value"])
    else:
        header, body = read_header(path)
        entry = header[damage["tensor"]]
        if kind == "dtype":
            entry["dtype"] = damage["dtype"]
        elif kind == "shape":
            entry["shape"] = damage["value"]
        else:
            entry["data_offsets"] = damage["value"][:2]
        write_header(path, header, body)


folder_cases = st.one_of(
    st.fixed_dictionaries({"info": info_texts}),
    st.fixed_dictionaries({"weights": weights_damage()}),
    st.fixed_dictionaries({"info": mutated_info().map(json.dumps), "weights": weights_damage()}),
)


def make_folder(folder: Path, case: dict[str, Any]) -> None:
    """The fixture folder, damaged as ``case`` says."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name in ("model.json", "config.yaml", "model.safetensors"):
        shutil.copy(OLD_FOLDER / name, folder / name)
    if "weights" in case:
        damage_weights(folder / "model.safetensors", case["weights"])
        if case["weights"]["record"]:
            record_checksum(folder)
    if "info" in case:
        (folder / "model.json").write_text(case["info"], encoding="utf-8", errors="surrogatepass")


def check_folder(folder: Path) -> str:
    """The property for one folder; returns ``loaded`` or ``refused``."""
    start = time.monotonic()
    try:
        model = load_model(folder, "cpu")
    except UserError as error:
        message = str(error)
        assert "\n" not in message and message.startswith(str(folder)), message
        with pytest.raises(UserError):  # train --init's path refuses it too
            check_init(replace(load_model_config(), init_from=str(folder)))
        outcome = "refused"
    else:
        for prediction in model.predict([IMAGE, IMAGE], top_k=len(model.classes)):
            probabilities = [p for _, p in prediction.top]
            assert all(math.isfinite(p) and 0 <= p <= 1 for p in probabilities), prediction
            assert abs(sum(probabilities) - 1) < 1e-3, prediction
        check_fine_tune(model.folder.trial.model, folder, model.classes, model.input_size)
        outcome = "loaded"
    elapsed = time.monotonic() - start
    assert elapsed < SECONDS_PER_EXAMPLE, f"{outcome} after {elapsed:.1f} s"
    return outcome


def load_model_config() -> Any:
    from search.config import load_spec

    return load_spec(OLD_FOLDER / "config.yaml").fixed().model


def check_fine_tune(config: Any, folder: Path, classes: tuple[str, ...], size: int) -> None:
    """``train --init``'s path: the folder checked, then its weights loaded into a fresh model."""
    config = replace(config, init_from=str(folder))
    check_init(config)
    model = build_model(config, size)
    load_init_weights(model, config, classes, size)
    assert all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


def folder_settings(examples: int) -> settings:
    """The spec fuzzer's settings; the default suite sees the same examples every run."""
    return settings(fuzz_settings(examples), derandomize=examples < FUZZ_SLOW_EXAMPLES)


def run_folder_fuzz(examples: int, tmp_path: Path) -> dict[str, int]:
    seen = {"loaded": 0, "refused": 0}
    folder = tmp_path / "model"

    @folder_settings(examples)
    @given(case=folder_cases)
    def one(case: dict[str, Any]) -> None:
        make_folder(folder, case)
        seen[check_folder(folder)] += 1

    one()
    return seen


def test_fuzzed_model_folders_load_or_are_one_line(tmp_path: Path) -> None:
    seen = run_folder_fuzz(DEFAULT_EXAMPLES, tmp_path)
    assert seen["loaded"] and seen["refused"]  # both sides of the property were exercised


@pytest.mark.slow
@pytest.mark.fuzz
def test_fuzzed_model_folders_many(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    start = time.monotonic()
    seen = run_folder_fuzz(FUZZ_SLOW_EXAMPLES, tmp_path)
    with capsys.disabled():
        print(f"\nmodel folder fuzz: {sum(seen.values())} cases, {seen}, failures: 0, {time.monotonic() - start:.0f} s")


def test_fuzzed_model_folders_through_the_cli(tmp_path: Path) -> None:
    """A few folders through ``predict`` as a subprocess: the same property, end to end."""
    image = tmp_path / "image.png"
    IMAGE.save(image)
    folder = tmp_path / "model"
    codes = []

    @folder_settings(4)
    @given(case=folder_cases)
    def one(case: dict[str, Any]) -> None:
        make_folder(folder, case)
        result = subprocess.run(
            [sys.executable, "-m", "search.cli", "predict", str(folder), str(image), "--top-k", "3"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert "Traceback" not in result.stderr, result.stderr
        if result.returncode == 0:
            _, *pairs = result.stdout.split()
            assert all(math.isfinite(float(p)) for p in pairs[1::2]), result.stdout
        else:
            assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
            assert result.stderr.startswith(f"resnet-search: error: {folder}"), result.stderr
        codes.append(result.returncode)

    one()
    assert len(codes) == 4
