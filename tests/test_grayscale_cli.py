"""A folder of grayscale images of mixed sizes, end to end through the real CLI: ``train`` a
1-channel model under a resize mode, ``predict`` with the same policy read from the model
folder, and a model whose channels do not match the images refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_model import cli

from search.data.fit import RESIZE_TEXTS
from search.outputs.model import load_model

SHADES = {"dark": 50, "light": 200}
SIZES = [(40, 20), (24, 36), (30, 30)]

SPEC = """
study: {{name: gray}}
data: {{dataset: imagefolder, val_fraction: 0.25, channels: {channels}, resize: {{size: 24, mode: pad}}}}
model:
  num_classes: 2
{model}  stem: {{width: 8}}
  stages: [{{blocks: 1, width: 8}}]
train:
  epochs: 2
  batch_size: 8
  optimizer: {{name: sgd, lr: 0.05}}
  augment: {{crop_padding: 0, random_resized_crop: {{scale: [0.5, 1.0]}}}}
"""


@pytest.fixture(scope="module")
def gray_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``train/`` and ``test/`` of two classes of noisy grayscale (mode L) images of three sizes."""
    root = tmp_path_factory.mktemp("gray")
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("test", 4)):
        for name, shade in SHADES.items():
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                width, height = SIZES[i % len(SIZES)]
                pixels = np.clip(shade + rng.normal(0, 20, (height, width)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels, mode="L").save(root / split / name / f"{i}.png")
    return root


def test_grayscale_trains_a_one_channel_model_and_predicts_with_its_policy(tmp_path: Path, gray_folder: Path) -> None:
    (tmp_path / "gray.yaml").write_text(SPEC.format(channels=1, model=""))
    trained = cli(["train", "gray.yaml", "--data-dir", str(gray_folder), "--out", "model", "--device", "cpu"], tmp_path)
    assert trained.returncode == 0, trained.stderr
    info = json.loads((tmp_path / "model" / "model.json").read_text())
    assert info["input"] == {"channels": 1, "size": 24, "pixels": "L", "resize": RESIZE_TEXTS["pad"]}
    assert len(info["normalization"]["mean"]) == 1

    files = [gray_folder / "test" / name / "0.png" for name in SHADES]
    colour = tmp_path / "colour.png"
    Image.new("RGB", (50, 20), (200, 200, 200)).save(colour)  # a colour file is decoded to grayscale too
    predicted = cli(["predict", "model", *map(str, files), str(colour)], tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    assert [line.split()[0] for line in predicted.stdout.splitlines()] == [*map(str, files), str(colour)]
    model = load_model(tmp_path / "model", "cpu")
    assert model.fit.mode == "pad" and model.fit.channels == 1
    assert tuple(model.preprocess(files[0]).shape) == (1, 24, 24)


def test_channels_that_do_not_match_the_model_are_one_line(tmp_path: Path, gray_folder: Path) -> None:
    # auto finds grayscale images; the model was left at its RGB default.
    (tmp_path / "auto.yaml").write_text(SPEC.format(channels="auto", model=""))
    result = cli(["train", "auto.yaml", "--data-dir", str(gray_folder), "--out", "m", "--device", "cpu"], tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("resnet-search: decoding")]
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "model.in_channels: 3, but the images are decoded as grayscale (1 channel)" in lines[0]
    assert "set model.in_channels: 1" in lines[0]
    assert not (tmp_path / "m").exists()
