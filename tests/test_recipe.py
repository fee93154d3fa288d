"""Tests of the fast-training recipe keys (issue 19): each one changes training as it claims.

EMA weights, test-time augmentation, alternating flips, the whitened stem, BatchNorm
options, LR scaling with the batch size, and the CUDA-graph step's CPU fallback; tiny
ResNets on 16x16 images, a few seconds on 2 cores.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from search.budget import count_model, fast_count
from search.config import (
    SGD,
    Augment,
    BatchNorm,
    Constant,
    Ema,
    LrScaling,
    ProgressiveResize,
    ResNetConfig,
    SpecError,
    Stage,
    Stem,
    TrainConfig,
    TrialConfig,
    Tta,
    UserError,
    load_spec,
    parse_spec,
)
from search.data import ImageDataset, TensorSplit, augment_batch, downscale
from search.data.placement import Decision
from search.models import build_model
from search.train import (
    BatchFormat,
    EpochPart,
    EvalSetup,
    StepOutput,
    TrainOptions,
    TrainStep,
    WeightEma,
    evaluate,
    scaled_lr,
    train,
    train_epoch,
    tta_views,
    whiten_stem,
)
from search.train.feed import TrainFeed
from search.train.loop import _flip_bits
from search.train.whiten import patch_covariance, stem_conv

CLASSES = ("red", "green", "blue", "grey")
TINY = ResNetConfig(num_classes=4, stem=Stem(8), stages=(Stage(1, 8), Stage(1, 16)))
FLAT = BatchFormat(
    device=torch.device("cpu"),
    mean=torch.zeros(3),
    std=torch.ones(3),
    channels_last=False,
    amp_dtype=None,
)


def _split(n: int, gen: torch.Generator) -> TensorSplit:
    """Colour = class on top of noise: learnable in a few steps."""
    labels = torch.arange(n) % 4
    colours = torch.tensor([[200, 30, 30], [30, 200, 30], [30, 30, 200], [120, 120, 120]], dtype=torch.float32)
    noise = torch.randint(-40, 40, (n, 3, 16, 16), generator=gen).float()
    return TensorSplit((colours[labels][:, :, None, None] + noise).clamp(0, 255).to(torch.uint8), labels)


def make_data(n_train: int = 64) -> ImageDataset:
    gen = torch.Generator().manual_seed(0)
    return ImageDataset(_split(n_train, gen), _split(32, gen), _split(32, gen), CLASSES, (0.5,) * 3, (0.25,) * 3)


def trial(model: ResNetConfig = TINY, **train_kw) -> TrialConfig:
    kw = {"epochs": 2, "batch_size": 16, "eval_batch_size": 32, "augment": Augment(crop_padding=2)} | train_kw
    return TrialConfig(model=model, train=TrainConfig(**kw))


def curve(result) -> list[tuple]:
    return [(m.epoch, m.train_loss, m.val_loss, m.val_acc, m.lr) for m in result.history]


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- EMA


def test_ema_weights_differ_from_the_raw_ones_and_are_evaluated_and_saved(tmp_path):
    data = make_data()
    ckpt = tmp_path / "ckpt.pt"
    result = train(
        trial(ema=Ema(decay=0.9, warmup_steps=2)), data, TrainOptions(checkpoint_path=ckpt, evaluate_test=True)
    )
    saved = torch.load(ckpt, weights_only=True)
    raw, averaged = saved["model"], saved["ema"]["module"]
    assert saved["ema"]["updates"] == 2 * 4  # one update per step: 64 images in batches of 16, 2 epochs
    assert not same_weights(raw, averaged)  # the average lags behind the weights
    assert same_weights(result.model.state_dict(), averaged)  # the result's model is the average
    # What was validated and tested is the average, not the raw weights.
    model = build_model(TINY, 16)
    for weights, is_evaluated in ((averaged, True), (raw, False)):
        model.load_state_dict(weights)
        val = evaluate(model, data.val, _format(data), EvalSetup(num_classes=4, batch_size=32))
        test = evaluate(model, data.test, _format(data), EvalSetup(num_classes=4, batch_size=32))
        matches = val.loss == pytest.approx(result.final_val_loss) and test.loss == pytest.approx(result.test_loss)
        assert matches is is_evaluated


def _format(data: ImageDataset) -> BatchFormat:
    return dataclasses.replace(FLAT, mean=torch.tensor(data.mean), std=torch.tensor(data.std))


def test_ema_decay_warms_up_and_the_average_follows_the_model():
    model = nn.Linear(2, 1)
    ema = WeightEma(model, Ema(decay=0.5, warmup_steps=4))
    assert [ema.decay(s) for s in (1, 2, 4, 10)] == [0.125, 0.25, 0.5, 0.5]
    with torch.no_grad():
        model.weight.fill_(1.0)
        before = ema.module.weight.clone()
        ema.update()
    assert torch.allclose(ema.module.weight, 0.125 * before + 0.875)
    assert not ema.module.weight.requires_grad


def test_resume_with_ema_equals_an_uninterrupted_run(tmp_path):
    cfg = trial(ema=Ema(decay=0.8, warmup_steps=3), optimizer=SGD(nesterov=True))
    whole = train(cfg, make_data())
    ckpt = tmp_path / "ckpt.pt"
    train(cfg, make_data(), TrainOptions(checkpoint_path=ckpt, callback=lambda m: True))
    resumed = train(cfg, make_data(), TrainOptions(checkpoint_path=ckpt, resume=True))
    assert curve(resumed) == curve(whole)
    assert same_weights(resumed.model.state_dict(), whole.model.state_dict())


# --------------------------------------------------------------------------- test-time augmentation


class _Recorder(nn.Module):
    """Logits from a fixed asymmetric linear map of the image; remembers every input."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []
        self.weight = nn.Parameter(torch.randn(4, 3 * 16 * 16, generator=torch.Generator().manual_seed(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return x.flatten(1) @ self.weight.T


def test_tta_evaluates_flipped_inputs_and_averages_their_logits():
    split = _split(8, torch.Generator().manual_seed(3))
    model = _Recorder()
    ev = evaluate(model, split, FLAT, EvalSetup(num_classes=4, batch_size=8, tta=Tta(flip=True)))
    x = FLAT.prepare(split.images)
    assert len(model.seen) == 2
    assert torch.equal(model.seen[0], x) and torch.equal(model.seen[1], x.flip(-1))
    logits = (model(x) + model(x.flip(-1))) / 2
    assert ev.loss == pytest.approx(F.cross_entropy(logits, split.labels).item(), rel=1e-5)
    plain = evaluate(model, split, FLAT, EvalSetup(num_classes=4, batch_size=8))
    assert plain.loss != pytest.approx(ev.loss)


def test_tta_translate_adds_shifted_views_with_reflect_padding():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    views = tta_views(x, Tta(flip=True, translate=1))
    assert len(views) == 6 and all(v.shape == x.shape for v in views)
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    assert torch.equal(views[1], padded[..., :6, :6]) and torch.equal(views[2], padded[..., 2:, 2:])
    assert all(torch.equal(views[3 + i], views[i].flip(-1)) for i in range(3))
    assert len(tta_views(x, Tta())) == 1


# --------------------------------------------------------------------------- alternating flip


class _Recording(TrainStep):
    """A step that trains nothing and records the batches it is given."""

    def __init__(self) -> None:
        self.batches: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        self.batches.append(x.clone())
        zero = torch.zeros(())
        return StepOutput(torch.zeros(len(y), 4), zero, zero, 0.1)


def _marked_images(n: int) -> TensorSplit:
    """Image ``i`` holds ``i`` in its top row's symmetric pixels and a marker in its left column."""
    images = torch.zeros(n, 3, 8, 8, dtype=torch.uint8)
    images[:, :, 0, 3] = images[:, :, 0, 4] = torch.arange(n, dtype=torch.uint8)[:, None]
    images[:, :, :, 0] = 255
    return TensorSplit(images, torch.arange(n) % 4)


def _flipped_per_image(batches: list[torch.Tensor]) -> dict[int, bool]:
    x = torch.cat(batches)
    ids = (x[:, 0, 0, 3] * 255).round().long().tolist()
    return dict(zip(ids, (x[:, 0, 4, -1] > 0.5).tolist(), strict=True))


def test_alternating_flip_mirrors_each_image_in_every_other_epoch():
    split = _marked_images(32)
    bits = _flip_bits(0, 32, torch.device("cpu"))
    seen = []
    state = _State()
    for epoch in (1, 2, 3):
        step = _Recording()
        flips = bits if epoch % 2 else ~bits  # as the training loop passes them
        augment = Augment(crop_padding=0, flip="alternating")
        feed = TrainFeed(split, torch.device("cpu"), Decision(True, "test"))
        part = EpochPart(torch.randperm(32, generator=state.generator), 0, 4, batch_size=8, flips=flips)
        train_epoch(state, step, feed, FLAT, part, augment=augment)  # type: ignore[arg-type]
        seen.append(_flipped_per_image(step.batches))
    assert sorted(seen[0]) == list(range(32))
    assert 8 <= sum(seen[0].values()) <= 24  # a random half, roughly
    assert all(seen[1][i] != seen[0][i] and seen[2][i] == seen[0][i] for i in range(32))


class _State:
    """The parts of a TrainState that train_epoch reads when the step is not a real one."""

    def __init__(self) -> None:
        self.model = nn.Identity()
        self.generator = torch.Generator().manual_seed(0)
        self.optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)


def test_random_flip_mirrors_about_half_independently_and_a_mask_overrides_it():
    images = _marked_images(64).images
    gen = torch.Generator().manual_seed(0)
    rand = augment_batch(images, Augment(crop_padding=0, flip=True), gen)
    assert 16 < int((rand[:, 0, 4, -1] == 255).sum()) < 48
    mask = torch.arange(64) % 3 == 0
    masked = augment_batch(images, Augment(crop_padding=0, flip="alternating"), gen, flip_mask=mask)
    assert torch.equal(masked[:, 0, 4, -1] == 255, mask)


def test_alternating_flip_trains_otherwise_than_random_flip():
    alternating = train(trial(augment=Augment(crop_padding=2, flip="alternating")), make_data())
    random_flip = train(trial(), make_data())
    assert alternating.status == "completed" and curve(alternating) != curve(random_flip)


# --------------------------------------------------------------------------- whitened stem


def _correlated_images(n: int, size: int = 12) -> torch.Tensor:
    """Normalized images whose neighbouring pixels and channels are strongly correlated."""
    gen = torch.Generator().manual_seed(5)
    smooth = F.avg_pool2d(torch.randn(n, 1, size + 2, size + 2, generator=gen), 3, stride=1)
    return 2.0 * smooth.expand(n, 3, size, size) + 0.3 * torch.randn(n, 3, size, size, generator=gen)


def _stem_output_covariance(model: nn.Module, images: torch.Tensor, channels: int) -> torch.Tensor:
    conv = stem_conv(model)
    out = F.conv2d(images, conv.weight, stride=conv.stride)  # valid patches only, as whitened
    flat = out[:, :channels].permute(1, 0, 2, 3).reshape(channels, -1)
    return torch.cov(flat.double())


def test_whitened_stem_outputs_have_identity_covariance_on_training_patches():
    images = _correlated_images(200)
    model = build_model(dataclasses.replace(TINY, stem=Stem(64)), 12)
    d = 27  # 3 channels x 3 x 3
    before = _stem_output_covariance(model, images, d)
    assert (before - torch.eye(d, dtype=torch.float64)).abs().max() > 0.5
    whiten_stem(model, images, freeze=False)
    after = _stem_output_covariance(model, images, d)
    assert (after - torch.eye(d, dtype=torch.float64)).abs().max() < 0.05
    weight = stem_conv(model).weight.flatten(1)
    assert torch.allclose(weight[d : 2 * d], -weight[:d])  # the negated copies follow
    assert stem_conv(model).weight.requires_grad


def test_narrow_stem_keeps_the_leading_components_whitened():
    images = _correlated_images(100)
    model = build_model(TINY, 12)  # stem of 8 filters < 27 patch dimensions
    whiten_stem(model, images, freeze=True)
    after = _stem_output_covariance(model, images, 8)
    assert (after - torch.eye(8, dtype=torch.float64)).abs().max() < 0.05
    # The 8 filters span the 8 leading principal directions of the patches.
    _, vectors = torch.linalg.eigh(patch_covariance(stem_conv(model), images))
    filters = stem_conv(model).weight.flatten(1).double()
    leading = vectors[:, -8:]
    assert torch.allclose(filters @ leading @ leading.T, filters, atol=1e-4)
    assert not stem_conv(model).weight.requires_grad


def test_training_with_a_frozen_whitened_stem_keeps_it_and_trains_the_rest():
    data = make_data()
    result = train(trial(whiten_stem="frozen", epochs=1), data)
    torch.manual_seed(0)  # as train seeds the model's initialisation
    reference = build_model(TINY, 16)
    whiten_stem(reference, _format(data).prepare(data.train.images), freeze=True)
    assert torch.allclose(stem_conv(result.model).weight, stem_conv(reference).weight, atol=1e-6)
    assert not torch.equal(result.model.head[-1].weight, reference.head[-1].weight)
    trained_init = train(trial(whiten_stem="init", epochs=1), data)
    assert not torch.allclose(stem_conv(trained_init.model).weight, stem_conv(reference).weight, atol=1e-6)


def test_whiten_stem_is_refused_for_torchvision_models():
    from search.config import TorchvisionResNetConfig

    cfg = TrialConfig(TorchvisionResNetConfig(num_classes=4), TrainConfig(epochs=1, whiten_stem="init"))
    with pytest.raises(UserError, match="whiten_stem"):
        train(cfg, make_data())


# --------------------------------------------------------------------------- BatchNorm, LR scaling


def test_batchnorm_momentum_and_frozen_scale_reach_every_batchnorm_and_the_count():
    config = dataclasses.replace(TINY, batchnorm=BatchNorm(momentum=0.4, frozen_scale=True))
    model = build_model(config, 16)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(m.momentum == 0.4 and not m.weight.requires_grad for m in norms)
    assert all(m.bias.requires_grad for m in norms)
    counted = count_model(model, 16)
    assert fast_count(config, 16) == counted
    assert counted.trainable_params == counted.params - sum(m.num_features for m in norms)
    result = train(trial(config), make_data())
    trained = [m for m in result.model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in trained)
    assert any(m.bias.abs().sum() > 0 for m in trained)


def test_frozen_scale_with_zero_init_is_a_one_line_spec_error():
    text = "model: {batchnorm: {frozen_scale: true}, zero_init_residual: true}\n"
    with pytest.raises(SpecError, match="zero_init_residual"):
        parse_spec(text, "x.yaml")


def test_lr_scaling_follows_the_batch_size():
    cfg = TrainConfig(batch_size=512, optimizer=SGD(lr=0.2), lr_scaling=LrScaling(reference_batch=256))
    assert scaled_lr(cfg, 512) == pytest.approx(0.4)
    assert scaled_lr(dataclasses.replace(cfg, lr_scaling=LrScaling(256, "sqrt")), 512) == pytest.approx(
        0.2 * math.sqrt(2)
    )
    assert scaled_lr(dataclasses.replace(cfg, lr_scaling=None), 512) == 0.2
    result = train(trial(batch_size=32, scheduler=Constant(), lr_scaling=LrScaling(reference_batch=16)), make_data())
    assert [m.lr for m in result.history] == pytest.approx([0.2, 0.2])


# --------------------------------------------------------------------------- progressive resizing


def model_input_sides(cfg: TrialConfig, data: ImageDataset, device: str = "cpu") -> tuple[list[int], list[int]]:
    """The image side of every batch the network saw, in training and in evaluation mode."""
    seen: dict[bool, list[int]] = {True: [], False: []}

    def record(module: nn.Module, args: tuple) -> None:
        if module.__class__.__name__ == "ResNet":
            seen[module.training].append(args[0].shape[-1])

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        train(cfg, data, TrainOptions(device=device))
    finally:
        handle.remove()
    return seen[True], seen[False]


def test_progressive_resize_trains_the_first_epochs_small_and_evaluates_full_size():
    data = make_data()
    trained, evaluated = model_input_sides(trial(epochs=3, progressive_resize=ProgressiveResize(8, 2)), data)
    steps = len(data.train) // 16
    assert trained == [8] * (2 * steps) + [16] * steps
    assert set(evaluated) == {16}
    plain, _ = model_input_sides(trial(epochs=3), data)
    assert plain == [16] * (3 * steps)


def test_downscale_averages_pixels_and_keeps_the_memory_format():
    x = torch.arange(16.0).view(1, 1, 4, 4).expand(2, 3, 4, 4).contiguous()
    small = downscale(x, 2, channels_last=True)
    assert small.shape == (2, 3, 2, 2)
    # A linear ramp keeps its mean; a pattern at the pixel scale averages out (antialiased),
    # where sampling would keep one of its values.
    assert small.mean().item() == pytest.approx(7.5)
    stripes = torch.tensor([1.0, -1.0] * 8).repeat(16, 1).view(1, 1, 16, 16)
    assert downscale(stripes, 5).abs().max().item() < 0.25
    assert F.interpolate(stripes, size=(5, 5), mode="bilinear").abs().max().item() > 0.5
    assert small.is_contiguous(memory_format=torch.channels_last)
    assert downscale(x, 4) is x


def test_progressive_resize_must_leave_full_size_epochs():
    with pytest.raises(SpecError, match=r"progressive_resize\.epochs.*less than epochs \(3\)"):
        parse_spec("train: {epochs: 3, progressive_resize: {size: 24, epochs: 3}}\n", "bad.yaml")


# --------------------------------------------------------------------------- the CUDA-graph step


def test_cuda_graph_falls_back_to_the_eager_step_off_cuda():
    eager = train(trial(), make_data())
    flagged = train(trial(cuda_graph=True), make_data())
    assert curve(flagged) == curve(eager)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the graph is captured on CUDA only)")
def test_graphed_step_trains_as_the_eager_step_on_cuda():
    # fp32, so that the graph's kernels compute what the eager ones do.
    cfg = {"epochs": 3, "ema": Ema(0.9, 2), "precision": "fp32", "scheduler": Constant()}
    eager = train(trial(**cfg), make_data(), TrainOptions(device="cuda"))
    graphed = train(trial(cuda_graph=True, **cfg), make_data(), TrainOptions(device="cuda"))
    assert [m.lr for m in graphed.history] == pytest.approx([m.lr for m in eager.history])
    assert [m.train_loss for m in graphed.history] == pytest.approx([m.train_loss for m in eager.history], rel=1e-2)
    assert [m.val_acc for m in graphed.history] == pytest.approx([m.val_acc for m in eager.history], abs=0.07)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the graph is captured on CUDA only)")
def test_graphed_step_captures_again_when_progressive_resize_changes_the_shape():
    cfg = {"epochs": 3, "precision": "fp32", "scheduler": Constant(), "progressive_resize": ProgressiveResize(8, 1)}
    eager = train(trial(**cfg), make_data(), TrainOptions(device="cuda"))
    graphed = train(trial(cuda_graph=True, **cfg), make_data(), TrainOptions(device="cuda"))
    assert [m.train_loss for m in graphed.history] == pytest.approx([m.train_loss for m in eager.history], rel=1e-2)


# --------------------------------------------------------------------------- the spec and the presets


def test_recipe_keys_parse_fixed_and_searched():
    text = """
model: {batchnorm: {momentum: {choice: [0.1, 0.4]}, frozen_scale: true}}
train:
  augment: {flip: {choice: [true, alternating]}}
  ema: {decay: 0.98}
  tta: {flip: {choice: [false, true]}, translate: 1}
  whiten_stem: {choice: [none, init, frozen]}
  lr_scaling: {reference_batch: 128, rule: sqrt}
"""
    spec = parse_spec(text, "x.yaml")
    assert set(spec.space.open_keys()) >= {"train.augment.flip", "train.tta.flip", "train.whiten_stem"}
    fixed = parse_spec("train: {augment: {flip: alternating}, ema: {}}\n", "y.yaml").fixed().train
    assert fixed.augment.flip == "alternating" and fixed.ema == Ema()


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("train: {augment: {flip: 1}}", "train.augment.flip"),
        ("train: {whiten_stem: yes}", "train.whiten_stem"),
        ("train: {ema: {decay: 1.5}}", "train.ema.decay"),
        ("train: {tta: {translate: -1}}", "train.tta.translate"),
    ],
)
def test_bad_recipe_values_are_one_line_errors_naming_the_key(text, key):
    with pytest.raises(SpecError, match=key.replace(".", r"\.")):
        parse_spec(text + "\n", "bad.yaml")


@pytest.mark.parametrize("name", ["quickstart", "cifar_fast", "cifar_5m"])
def test_presets_load_and_fit_their_budget(name):
    from pathlib import Path

    spec = load_spec(Path(__file__).resolve().parents[1] / "spaces" / f"{name}.yaml")
    if spec.is_fixed:
        counts = fast_count(spec.fixed().model, 32)
        assert spec.budget.max_params is None or counts.params <= spec.budget.max_params
