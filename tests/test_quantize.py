"""int8 through the real CLI: a small model trained on generated images, exported and statically
quantized (calibrated on its training images), evaluated against fp32 on the test split and
timed; ``evaluate`` and ``predict`` take the ``.onnx`` files; bad requests are one line."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CLASSES, write_class_images
from tiny_model import cli

from search.outputs.model import load_model

pytest.importorskip("onnxruntime")

SPEC = """
study: {name: small}
data: {dataset: imagefolder, val_fraction: 0.2}
model:
  num_classes: 3
  stem: {width: 8}
  stages: [{blocks: 1, width: 8}, {blocks: 1, width: 16}]
train: {epochs: 3, batch_size: 16, optimizer: {name: sgd, lr: 0.05}, tta: {flip: true}}
"""
TRAIN, TEST = 40, 40  # per class: 120 test images, so that 2 points are 2.4 images


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, _session_data_cache: Path) -> Path:
    """A model folder trained by ``resnet-search train`` on generated colour images."""
    root = tmp_path_factory.mktemp("quantize")
    rng = np.random.default_rng(1)
    for name, colour in TINY_CLASSES.items():
        write_class_images(root / "data" / "train" / name, colour, TRAIN, rng, size=16)
        write_class_images(root / "data" / "test" / name, colour, TEST, rng, size=16)
    (root / "small.yaml").write_text(SPEC)
    env = {"RESNET_SEARCH_CACHE": str(_session_data_cache)}
    result = cli(["train", "small.yaml", "--data-dir", "data", "--out", "model", "--device", "cpu"], root, env)
    assert result.returncode == 0, result.stderr
    return root / "model"


@pytest.fixture(scope="module")
def quantized(trained: Path, _session_data_cache: Path) -> subprocess.CompletedProcess:
    env = {"RESNET_SEARCH_CACHE": str(_session_data_cache)}
    args = ["export-model", str(trained), "--format", "onnx", "--quantize", "int8", "--calibration", "64"]
    result = cli(args, trained.parent, env)
    assert result.returncode == 0, result.stderr
    return result


def test_int8_export_runs_end_to_end_within_2_points_of_fp32(
    trained: Path, quantized: subprocess.CompletedProcess
) -> None:
    assert (trained / "model.onnx").is_file() and (trained / "model.int8.onnx").is_file()
    assert (trained / "model.int8.onnx").stat().st_size < (trained / "model.onnx").stat().st_size
    record = json.loads((trained / "model.json").read_text())["deployment"]
    fp32, int8 = record["fp32"], record["int8"]
    assert int8["calibration_images"] == 64 and fp32["test_images"] == int8["test_images"] == TEST * 3
    assert abs(int8["test_acc"] - fp32["test_acc"]) <= 0.02, (fp32["test_acc"], int8["test_acc"])
    # The fp32 export is evaluated as the folder's own model is: the same accuracy as training measured.
    assert fp32["test_acc"] == json.loads((trained / "model.json").read_text())["test_acc"]
    for entry, precision in ((fp32, "fp32"), (int8, "int8")):
        latency = entry["latency"]
        assert latency["median_ms"] > 0 and latency["settings"]["precision"] == precision
        assert latency["settings"]["threads"] == 1 and latency["settings"]["batch_size"] == 1
        assert latency["machine"]["cpu"] and latency["machine"]["runtime_version"] and "load" in latency
    lines = quantized.stdout.splitlines()
    assert lines[1].startswith(f"{trained / 'model.int8.onnx'}: int8, calibrated on 64 training images")
    assert f"int8 {int8['test_acc']:.2%}, fp32 {fp32['test_acc']:.2%}" in lines[2]
    card = (trained / "README.md").read_text()
    assert "- int8 export `model.int8.onnx`: test" in card and "- fp32 export `model.onnx`: test" in card


def test_evaluate_and_predict_take_the_onnx_files(trained: Path, quantized: subprocess.CompletedProcess) -> None:
    record = json.loads((trained / "model.json").read_text())["deployment"]
    image = trained.parent / "data" / "test" / "red" / "0000.png"
    for name, precision in (("model.onnx", "fp32"), ("model.int8.onnx", "int8")):
        evaluated = cli(["evaluate", str(trained / name)], trained.parent)
        assert evaluated.returncode == 0, evaluated.stderr
        assert f"accuracy {record[precision]['test_acc']:.2%}" in evaluated.stdout
        assert (trained / name.replace(".onnx", ".evaluation_test.json")).is_file()
        predicted = cli(["predict", str(trained / name), str(image), "--json"], trained.parent)
        assert predicted.returncode == 0, predicted.stderr
        (prediction,) = json.loads(predicted.stdout)["predictions"]
        assert prediction["label"] == "red"
    onnx = load_model(trained / "model.onnx")
    eager = load_model(trained, "cpu")
    assert onnx.classes == eager.classes and onnx.input_size == eager.input_size == 16


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "torchscript", "--quantize", "int8"], "--quantize int8: needs --format onnx"),
        (["--format", "onnx", "--quantize", "int4"], "argument --quantize: invalid choice: 'int4'"),
        (["--format", "onnx", "--quantize", "int8", "--calibration", "0"], "argument --calibration: must be a whole"),
    ],
)
def test_bad_quantization_requests_are_one_line_and_exit_2(trained: Path, args: list[str], message: str) -> None:
    result = cli(["export-model", str(trained), *args], trained.parent)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr


def test_an_onnx_file_without_our_metadata_is_one_line_and_exit_2(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    bare = tmp_path / "bare.onnx"
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    onnx.save(onnx.helper.make_model(graph), str(bare))
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    for name, message in (
        ("bare.onnx", "no model.json or config.yaml in its metadata"),
        ("junk.onnx", "not an ONNX model"),
    ):
        result = cli(["evaluate", str(tmp_path / name)], tmp_path)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert f"{tmp_path / name}: {message}" in result.stderr
