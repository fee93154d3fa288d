"""Your own images, the pieces together, through the real CLI (no Ray): a folder of JPEGs and
PNGs of mixed sizes and shapes, 10:1 between its classes, trained with ``train`` on images
letterboxed (``data.resize.mode: pad``), cropped at random (``random_resized_crop``), streamed
from the cache (``data.on_device: false``), with balanced loss weights and ``balanced_acc`` as
the objective; then ``evaluate --json`` with each class's scores, and ``predict`` on one file.
And the ``imagefolder_224`` preset uses those keys and stays mostly within its budget."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_model import cli

from search.budget import count_spec
from search.config import load_spec, random_samples

COUNTS = {"train": {"ok": 40, "defect": 4}, "test": {"ok": 10, "defect": 1}}  # 10:1
COLOURS = {"ok": (200, 60, 60), "defect": (60, 60, 200)}
SHAPES = ((30, 20), (18, 40), (24, 24), (64, 48))  # width, height: wide, tall, square, larger

SPEC = """\
study:
  name: own
  objectives: [{metric: balanced_acc, direction: maximize}]
data:
  dataset: imagefolder
  resize: {size: 24, mode: pad}
  on_device: false
  val_fraction: 0.25
model: {num_classes: 2, stem: {width: 8}, stages: [{blocks: 1, width: 8}, {blocks: 1, width: 16}]}
train:
  epochs: 1
  batch_size: 8
  optimizer: {name: sgd, lr: 0.05}
  augment: {random_resized_crop: {scale: [0.35, 1.0]}, crop_padding: 0}
  class_weights: balanced
"""

ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def photo_folder(root: Path) -> Path:
    """``train/<class>/*`` and ``test/<class>/*``: noisy solid colours, JPEG and PNG, of ``SHAPES``."""
    rng = np.random.default_rng(0)
    for split, classes in COUNTS.items():
        for name, count in classes.items():
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                width, height = SHAPES[i % len(SHAPES)]
                noise = rng.normal(0, 25, (height, width, 3))
                pixels = np.clip(np.asarray(COLOURS[name]) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i:03d}{('.jpg', '.png')[i % 2]}")
    return root


def test_mixed_sizes_imbalanced_streamed_then_evaluated_per_class_and_predicted(tmp_path: Path) -> None:
    photos = photo_folder(tmp_path / "photos")
    (tmp_path / "own.yaml").write_text(SPEC)

    trained = cli(
        ["train", "own.yaml", "--data-dir", str(photos), "--out", "model", "--device", "cpu"], tmp_path, ONE_THREAD
    )
    assert trained.returncode == 0, trained.stderr
    assert "training set: streamed (" in trained.stderr and "data.on_device: false" in trained.stderr
    model = tmp_path / "model"
    card = json.loads((model / "model.json").read_text())
    assert card["classes"] == ["defect", "ok"]
    assert card["input"]["resize"].startswith("longer side to the input size") and card["input"]["pixels"] == "RGB"
    metrics = json.loads((model / "metrics.json").read_text())
    (last,) = list(csv.DictReader((model / "history.csv").open()))  # one epoch
    for name in ("balanced_acc", "macro_f1"):  # the objective's value, as the history has it
        assert 0.0 <= metrics[name] <= 1.0 and metrics[name] == pytest.approx(float(last[name]))

    evaluated = cli(["evaluate", str(model), "--device", "cpu", "--json"], tmp_path, ONE_THREAD)
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout)
    assert result["split"] == "test" and result["images"] == sum(COUNTS["test"].values())
    scores = result["scores"]
    assert {name: scores[name]["support"] for name in scores} == COUNTS["test"]  # each test image, counted once
    recalls = [scores[name]["recall"] for name in ("defect", "ok")]
    assert result["balanced_accuracy"] == pytest.approx(sum(recalls) / 2)
    assert result["per_class"] == dict(zip(("defect", "ok"), recalls))
    assert [sum(row) for row in result["confusion"]] == [1, 10]
    assert (model / "evaluation_test.json").is_file()

    tall = next((photos / "test" / "ok").glob("001.png"))  # 18 x 40: predict letterboxes it too
    predicted = cli(
        ["predict", str(model), str(tall), "--top-k", "2", "--device", "cpu", "--json"], tmp_path, ONE_THREAD
    )
    assert predicted.returncode == 0, predicted.stderr
    (prediction,) = json.loads(predicted.stdout)["predictions"]
    assert prediction["label"] in ("defect", "ok") and prediction["file"] == str(tall)
    assert sum(p["probability"] for p in prediction["top"]) == pytest.approx(1.0, abs=1e-4)


def test_the_224_preset_fits_photos_as_torchvision_evaluates_and_crops_them_at_random() -> None:
    spec = load_spec("imagefolder_224")
    assert spec.data.image_size == 224 and spec.data.resize_mode == "shorter_side"
    assert spec.data.on_device == "auto" and spec.study.objectives[0].metric == "balanced_acc"
    sampled = list(random_samples(spec.space, 60, seed=0))
    crops = {c.train.augment.random_resized_crop.scale for c in sampled if c.train.augment.random_resized_crop}
    assert crops == {(0.08, 1.0), (0.35, 1.0)} and all(c.train.augment.crop_padding == 0 for c in sampled)
    balancing = {(c.train.class_weights, c.train.sampler) for c in sampled}
    assert balancing >= {("balanced", "uniform"), ("none", "balanced")}
    assert count_spec(spec, samples=300).fit_share > 0.5  # most samples train rather than being rejected
