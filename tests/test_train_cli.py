"""``resnet-search train`` end to end through the real CLI on a generated class-folder dataset."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_model import FIXED

from search.config import load_spec

CONFIG = FIXED  # the tiny model of tiny_model.py


def train_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "search.cli", "train", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_train_writes_metrics_history_curves_checkpoint_and_config(tmp_path: Path, tiny_imagefolder: Path) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(CONFIG)
    result = train_cli(str(spec), "--data-dir", str(tiny_imagefolder), "--out", "out", "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "epoch 2/2" in result.stderr

    out = tmp_path / "out"
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"val_acc", "test_acc", "params", "train_time_s", "config"} <= set(metrics)
    assert 0.0 <= metrics["test_acc"] <= 1.0 and metrics["params"] > 0
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[-1]["val_acc"]) == pytest.approx(metrics["val_acc"])
    assert "plotly" in (out / "curves.html").read_text()
    assert (out / "checkpoint.pt").stat().st_size > 0
    assert load_spec(out / "config.yaml").fixed() == load_spec(spec).fixed()  # trains again as is


def test_train_with_several_seeds_reports_mean_and_std(tmp_path: Path, tiny_imagefolder: Path) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(CONFIG)
    result = train_cli(
        str(spec), "--data-dir", str(tiny_imagefolder), "--out", "out", "--seeds", "0,1", "--epochs", "1", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    accs = [json.loads((tmp_path / "out" / f"seed{s}" / "metrics.json").read_text())["test_acc"] for s in (0, 1)]
    mean = sum(accs) / 2
    assert f"test_acc: mean {mean:.2%}" in result.stdout


def test_a_search_space_is_refused_with_its_open_keys(tmp_path: Path) -> None:
    spec = tmp_path / "space.yaml"
    spec.write_text(CONFIG.replace("lr: 0.05", "lr: {range: [0.01, 0.1], log: true}"))
    result = train_cli(str(spec), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"resnet-search: error: {spec}: train.optimizer.lr: is a search space, not a fixed config; "
        "open keys: train.optimizer.lr"
    ]


def test_no_data_and_no_download_is_one_line_and_exit_2(tmp_path: Path) -> None:
    spec = tmp_path / "cifar.yaml"
    spec.write_text(CONFIG.replace("dataset: imagefolder", "dataset: cifar10"))
    result = train_cli(str(spec), "--no-download", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--data-dir" in lines[0] and "Traceback" not in result.stderr


def test_a_channel_that_never_varies_trains_finite_not_nan(tmp_path: Path) -> None:
    """Every image's blue channel is 0: its std is 0, and dividing by it would make every input NaN."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("test", 4)):
        for name, red in (("dark", 40), ("light", 200)):
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.zeros((32, 32, 3), dtype=np.uint8)
                pixels[..., :2] = np.clip(red + rng.normal(0, 20, size=(32, 32, 2)), 0, 255)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    spec = tmp_path / "tiny.yaml"
    spec.write_text(CONFIG.replace("num_classes: 3", "num_classes: 2"))
    result = train_cli(str(spec), "--data-dir", "data", "--out", "out", "--epochs", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert math.isfinite(metrics["val_loss"]) and math.isfinite(metrics["test_acc"]), metrics
    std = json.loads((tmp_path / "out" / "model.json").read_text())["normalization"]["std"]
    assert std[2] > 0 and all(s > 0.01 for s in std[:2]), std


def test_a_training_that_diverges_exits_1_with_its_reason_and_no_model(tmp_path: Path, tiny_imagefolder: Path) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(CONFIG.replace("lr: 0.05", "lr: 100000000.0"))
    result = train_cli(str(spec), "--data-dir", str(tiny_imagefolder), "--out", "out", "--epochs", "2", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("resnet-search: error:")]
    assert len(errors) == 1 and "non-finite loss" in errors[0] and "lower the learning rate" in errors[0], errors
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "model.safetensors").exists()
