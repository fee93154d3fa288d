"""``train.augment.random_resized_crop``: boxes drawn for a whole batch on its device as
torchvision's ``RandomResizedCrop.get_params`` draws one, resampled in one call, composed with
flip and cutout, and searchable like every other key."""

from __future__ import annotations

import optuna
import pytest
import torch
from torchvision.transforms import RandomResizedCrop as TorchvisionCrop

from search.config import Augment, RandomResizedCrop, UserError, parse_spec
from search.data import augment_batch
from search.data.resized_crop import random_resized_crop, sample_boxes

DRAWS = 10_000
QUANTILES = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)


def box_statistics(boxes: torch.Tensor, height: int, width: int) -> dict[str, torch.Tensor]:
    """Area share, log aspect ratio and relative position of ``(top, left, h, w)`` rows."""
    top, left, h, w = boxes.double().unbind(1)
    return {
        "share": h * w / (height * width),
        "log_ratio": (w / h).log(),
        "top": top / (height - h + 1),
        "left": left / (width - w + 1),
    }


def torchvision_boxes(n: int, height: int, width: int, config: RandomResizedCrop) -> torch.Tensor:
    torch.manual_seed(1)
    image = torch.zeros(1, height, width)
    return torch.tensor([TorchvisionCrop.get_params(image, list(config.scale), list(config.ratio)) for _ in range(n)])


@pytest.mark.parametrize(
    ("height", "width", "scale", "ratio"),
    [
        (48, 80, (0.08, 1.0), (3 / 4, 4 / 3)),  # torchvision's defaults, a wide image
        (64, 64, (0.35, 1.0), (0.75, 1.33)),  # this tool's defaults
        (40, 120, (0.5, 1.0), (0.5, 2.0)),  # many tries fail: the centre-crop fallback matters
    ],
)
def test_boxes_follow_torchvision_distribution(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> None:
    config = RandomResizedCrop(scale=scale, ratio=ratio)
    ours = box_statistics(sample_boxes(DRAWS, height, width, config, torch.Generator().manual_seed(0)), height, width)
    theirs = box_statistics(torchvision_boxes(DRAWS, height, width, config), height, width)
    for key in ours:  # positions take few values: their means are compared, not their quantiles
        assert abs(ours[key].mean() - theirs[key].mean()) < 0.015, key
    for key in ("share", "log_ratio"):
        assert torch.allclose(ours[key].quantile(QUANTILES), theirs[key].quantile(QUANTILES), atol=0.03), key
    share = ours["share"]
    assert share.max() <= 1.0 and share.min() > 0


def test_boxes_lie_inside_the_image_and_the_fallback_is_torchvision_centre_crop() -> None:
    # No try can fit a 1:10 box into a 100x10 image with ratio in [4, 5]: every box is the fallback.
    config = RandomResizedCrop(scale=(0.9, 1.0), ratio=(4.0, 5.0))
    boxes = sample_boxes(50, 100, 10, config, torch.Generator().manual_seed(0))
    expected = torch.tensor(list(TorchvisionCrop.get_params(torch.zeros(1, 100, 10), [0.9, 1.0], [4.0, 5.0])))
    assert (boxes == expected).all()
    wide = sample_boxes(5000, 30, 50, RandomResizedCrop(), torch.Generator().manual_seed(1))
    top, left, h, w = wide.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 30).all() and (left + w <= 50).all()


def test_a_whole_image_box_is_the_image_and_a_crop_magnifies() -> None:
    images = torch.randint(0, 256, (8, 3, 24, 24), dtype=torch.uint8)
    whole = random_resized_crop(images, RandomResizedCrop(scale=(1.0, 1.0), ratio=(1.0, 1.0)))
    assert whole.dtype == torch.uint8 and torch.equal(whole, images)
    # A left-to-right ramp: a crop covering part of it spans a narrower range of values.
    ramp = torch.linspace(0, 255, 64).round().to(torch.uint8).expand(16, 1, 64, 64).contiguous()
    cropped = random_resized_crop(ramp, RandomResizedCrop(scale=(0.2, 0.3)), torch.Generator().manual_seed(0))
    assert cropped.shape == ramp.shape
    spans = cropped[:, 0, 32].float().amax(1) - cropped[:, 0, 32].float().amin(1)
    assert (spans < 200).all()


def test_same_generator_same_batch_and_it_composes_with_flip_and_cutout() -> None:
    images = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)
    augment = Augment(crop_padding=0, flip=True, cutout=4, random_resized_crop=RandomResizedCrop())
    first = augment_batch(images, augment, torch.Generator().manual_seed(3))
    again = augment_batch(images, augment, torch.Generator().manual_seed(3))
    assert torch.equal(first, again) and first.shape == images.shape and first.dtype == torch.uint8
    assert ((first == 0).all(1).flatten(1).sum(1) >= 4).all()  # each image holds its cutout square
    without = augment_batch(images, Augment(crop_padding=0, flip=False), torch.Generator().manual_seed(3))
    assert torch.equal(without, images)


def test_the_pair_is_searchable_and_bad_bounds_are_one_line() -> None:
    spec = parse_spec(
        "train:\n  augment:\n    crop_padding: 0\n    random_resized_crop:\n"
        "      scale: [{range: [0.08, 0.5]}, 1.0]\n      ratio: [{choice: [0.5, 0.75]}, 1.33]\n"
    )
    assert set(spec.space.open_keys()) >= {"train.augment.random_resized_crop.scale[0]"}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(8):
        crop = spec.space.sample(study.ask()).train.augment.random_resized_crop
        assert crop is not None and 0.08 <= crop.scale[0] <= 0.5 and crop.ratio[0] in (0.5, 0.75)
        seen.add(crop.scale[0])
    assert len(seen) == 8
    for bad, key in [
        ("{scale: [0.9, 0.2]}", "random_resized_crop.scale"),
        ("{scale: [0.0, 1.0]}", "random_resized_crop.scale[0]"),
        ("{ratio: [2.0, 1.0]}", "random_resized_crop.ratio"),
    ]:
        with pytest.raises(UserError, match=key.replace("[", r"\[")) as error:
            parse_spec(f"train: {{augment: {{random_resized_crop: {bad}}}}}")
        assert "\n" not in str(error.value)
