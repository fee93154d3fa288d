"""``data.resize`` and ``data.channels``: mixed-size images fitted under each mode (sizes, the
aspect kept where promised), the cache keyed by the policy, grayscale decoding, one source of
truth for the size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from search.config import DataConfig, Resize, UserError, parse_spec
from search.data import load_dataset
from search.data.cache import tensor_path
from search.data.fit import ImageFit
from search.data.images import read_image

LIMIT = 10_000_000
# Wide, tall and square images: a white rectangle of the whole image on a black border of 0 px.
SIZES = [(60, 30), (20, 50), (40, 40), (90, 45)]


def write_bar(path: Path, width: int, height: int, mode: str = "RGB") -> None:
    """A white image whose left third is red (or, in grayscale, dark grey)."""
    pixels = np.full((height, width, 3), 255, dtype=np.uint8)
    pixels[:, : width // 3] = (255, 0, 0)
    Image.fromarray(pixels).convert(mode).save(path)


@pytest.mark.parametrize("mode", ["shorter_side", "square", "pad"])
def test_every_mode_gives_squares_of_the_size(tmp_path: Path, mode: str) -> None:
    for width, height in SIZES:
        write_bar(tmp_path / f"{width}x{height}.png", width, height)
        pixels = read_image(tmp_path / f"{width}x{height}.png", ImageFit(24, mode), LIMIT)
        assert pixels.shape == (24, 24, 3) and pixels.dtype == np.uint8


def test_pad_keeps_the_aspect_square_distorts_it_shorter_side_crops(tmp_path: Path) -> None:
    image = tmp_path / "wide.png"
    write_bar(image, 90, 30)  # 3:1, the left third red
    padded = read_image(image, ImageFit(30, "pad"), LIMIT)
    content_rows = np.flatnonzero(padded.max(axis=(1, 2)) > 40)
    assert len(content_rows) == 10 and padded.shape == (30, 30, 3)  # 30 x 10: the 3:1 content, centred
    assert content_rows[0] == 10 and padded[:5].max() == 0  # black above and below
    squared = read_image(image, ImageFit(30, "square"), LIMIT)
    red = (squared[15, :, 0] > 200) & (squared[15, :, 1] < 60)
    assert 9 <= red.sum() <= 11  # the red third is still a third of the width: stretched vertically
    cropped = read_image(image, ImageFit(30, "shorter_side"), LIMIT)
    assert (cropped[15, :, 1] > 200).all()  # the centre third of the width: no red left


def test_mixed_sizes_load_under_each_mode_and_the_cache_follows_the_policy(tmp_path: Path) -> None:
    for split, count in (("train", 6), ("test", 2)):
        for name in ("a", "b"):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                width, height = SIZES[i % len(SIZES)]
                write_bar(folder / f"{i}.png", width + (name == "b"), height)
    loaded = {}
    for mode in ("shorter_side", "square", "pad"):
        config = DataConfig(dataset="imagefolder", root=str(tmp_path), val_fraction=0.5, resize=Resize(20, mode))
        data = load_dataset(config, download=False)
        assert data.train.images.shape[1:] == (3, 20, 20) and data.test.images.shape[1:] == (3, 20, 20)
        loaded[mode] = data.train.images
    assert not torch.equal(loaded["pad"], loaded["square"])  # a changed policy never reads another's cache
    assert not torch.equal(loaded["shorter_side"], loaded["square"])
    # data.image_size alone is the shorter_side policy, and finds the same cache as before the modes.
    plain = load_dataset(DataConfig(dataset="imagefolder", root=str(tmp_path), val_fraction=0.5, image_size=20))
    assert torch.equal(plain.train.images, loaded["shorter_side"])
    assert ImageFit(20).cache_key() == 20 and ImageFit(20, "pad").cache_key() != 20
    identity = [["x", 1, 2]]
    assert tensor_path(tmp_path, identity, ImageFit(20, "pad").cache_key()) != tensor_path(tmp_path, identity, 20)


def test_grayscale_decoding_by_channels(tmp_path: Path) -> None:
    gray, colour = tmp_path / "gray.png", tmp_path / "colour.png"
    write_bar(gray, 30, 20, mode="L")
    write_bar(colour, 30, 20)
    assert read_image(gray, ImageFit(16, channels=None), LIMIT).shape == (16, 16, 1)  # auto: as the file is
    assert read_image(colour, ImageFit(16, channels=None), LIMIT).shape == (16, 16, 3)
    as_gray = read_image(colour, ImageFit(16, channels=1), LIMIT)
    assert np.array_equal(as_gray, read_image(gray, ImageFit(16, channels=1), LIMIT))  # Pillow's luma either way
    rgb = read_image(gray, ImageFit(16), LIMIT)
    assert rgb.shape == (16, 16, 3) and np.array_equal(rgb[..., 0], as_gray[..., 0])


def test_auto_channels_follow_the_folder(tmp_path: Path) -> None:
    for name in ("a", "b"):
        folder = tmp_path / "train" / name
        folder.mkdir(parents=True)
        for i in range(4):
            write_bar(folder / f"{i}.png", 24 + i, 24, mode="L" if name == "a" else "RGB" if i == 0 else "L")
    config = DataConfig(dataset="imagefolder", root=str(tmp_path), val_fraction=0.5, image_size=16, channels="auto")
    assert load_dataset(config).channels == 3  # one colour image: RGB for all
    (tmp_path / "train" / "b" / "0.png").unlink()
    write_bar(tmp_path / "train" / "b" / "0.png", 24, 24, mode="L")
    data = load_dataset(config)
    assert data.channels == 1 and len(data.mean) == 1 and data.train.images.shape[1] == 1
    with pytest.raises(UserError, match="data.mean has 3 values, but the images have 1 channel"):
        load_dataset(DataConfig(**{**config.__dict__, "mean": (0.5, 0.5, 0.5)}))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{image_size: 32, resize: {size: 48}}", "data.resize.size: 48 disagrees with image_size 32"),
        ("{resize: {size: 48, mode: letterbox}}", "data.resize.mode: 'letterbox' is not one of"),
        ("{resize: {size: 4}}", "data.resize.size"),
        ("{channels: 2}", "data.channels: 2 is not one of"),
        ("{channels: 1, mean: [0.5, 0.5, 0.5]}", "data.mean: has 3 values; it needs one per channel: 1"),
    ],
)
def test_bad_resize_and_channels_are_one_line(data: str, message: str) -> None:
    with pytest.raises(UserError) as error:
        parse_spec(f"data: {data}", "spec.yaml")
    assert str(error.value).startswith(f"spec.yaml: {message}") and "\n" not in str(error.value)


def test_resize_size_is_image_size_and_one_channel_data_sets_in_channels() -> None:
    spec = parse_spec("data: {resize: {size: 48, mode: pad}, channels: 1}\nmodel: {num_classes: 10}")
    assert spec.data.image_size == 48 and spec.data.input_size == 48
    assert spec.fixed().model.in_channels == 1  # type: ignore[union-attr]
    assert parse_spec("data: {image_size: 48, resize: {size: 48}}").data.resize_mode == "shorter_side"
    with pytest.raises(UserError, match=r"model.in_channels: must be 1, the channels of the images"):
        parse_spec("data: {channels: 1}\nmodel: {in_channels: 3}")
    with pytest.raises(UserError, match=r"model.in_channels: must be 3, the channels of the images"):
        parse_spec("model: {in_channels: 1}")
