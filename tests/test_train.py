"""Tests of search.train: tiny ResNets on 16x16 random images, a few seconds on 2 cores."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import search.train.loop as train_loop
from search.config import (
    SGD,
    Adam,
    AdamW,
    Augment,
    AuxHead,
    Constant,
    Cosine,
    MultiStep,
    OneCycle,
    ResNetConfig,
    Stage,
    Stem,
    Step,
    TrainConfig,
    TrialConfig,
    UserError,
    parse_spec,
)
from search.data import ImageDataset, TensorSplit
from search.models import build_model
from search.train import (
    EpochMetrics,
    ProgressPrinter,
    SeedOptions,
    TrainOptions,
    TrainResult,
    chain_callbacks,
    cpu_channels_last_is_safe,
    lr_factor,
    param_groups,
    train,
    train_spec,
    write_outputs,
)

NUM_CLASSES = 4
AUGMENT = Augment(crop_padding=2, flip=True)
TINY = ResNetConfig(num_classes=NUM_CLASSES, stem=Stem(8), stages=(Stage(1, 8), Stage(1, 16)))


def _split(n: int, gen: torch.Generator, learnable: bool) -> TensorSplit:
    labels = torch.arange(n) % NUM_CLASSES
    if not learnable:
        images = torch.randint(0, 256, (n, 3, 16, 16), generator=gen, dtype=torch.uint8)
        return TensorSplit(images, labels[torch.randperm(n, generator=gen)])
    # Class = colour: red, green, blue or grey on top of noise; learnable in a few steps.
    colours = torch.tensor([[200, 30, 30], [30, 200, 30], [30, 30, 200], [120, 120, 120]], dtype=torch.float32)
    noise = torch.randint(-40, 40, (n, 3, 16, 16), generator=gen).float()
    images = (colours[labels][:, :, None, None] + noise).clamp(0, 255).to(torch.uint8)
    return TensorSplit(images, labels)


def make_data(n_train: int = 64, learnable: bool = False, seed: int = 0) -> ImageDataset:
    gen = torch.Generator().manual_seed(seed)
    return ImageDataset(
        train=_split(n_train, gen, learnable),
        val=_split(32, gen, learnable),
        test=_split(32, gen, learnable),
        classes=("red", "green", "blue", "grey"),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )


def trial(model: ResNetConfig = TINY, **train_kw) -> TrialConfig:
    kw = {"epochs": 2, "batch_size": 16, "eval_batch_size": 32, "augment": AUGMENT} | train_kw
    return TrialConfig(model=model, train=TrainConfig(**kw))


def curve(result: TrainResult) -> list[tuple]:
    """The history without its timing fields, which differ between runs."""
    return [(m.epoch, m.train_loss, m.train_acc, m.val_loss, m.val_acc, m.lr) for m in result.history]


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------- schedules


def test_warmup_starts_small_and_reaches_the_peak():
    cfg = Cosine(warmup_epochs=1.5, min_lr_ratio=0.1)
    # 4 steps per epoch: 6 warm-up steps, linear from 1/6 to 1.
    assert lr_factor(cfg, 0, 4, 40) == pytest.approx(1 / 6)
    assert lr_factor(cfg, 2, 4, 40) == pytest.approx(3 / 6)
    assert lr_factor(cfg, 5, 4, 40) == pytest.approx(1.0)
    assert lr_factor(cfg, 6, 4, 40) == pytest.approx(1.0)


def test_cosine_ends_at_min_lr_ratio_and_is_half_way_in_the_middle():
    cfg = Cosine(min_lr_ratio=0.1)
    assert lr_factor(cfg, 0, 10, 100) == pytest.approx(1.0)
    assert lr_factor(cfg, 50, 10, 100) == pytest.approx(0.55)
    assert lr_factor(cfg, 100, 10, 100) == pytest.approx(0.1)
    factors = [lr_factor(cfg, s, 10, 100) for s in range(101)]
    assert all(a >= b for a, b in zip(factors, factors[1:]))


def test_onecycle_ramps_up_then_down():
    cfg = OneCycle(pct_start=0.25, div_factor=25, final_div_factor=1e4)
    assert lr_factor(cfg, 0, 10, 100) == pytest.approx(1 / 25)
    assert lr_factor(cfg, 25, 10, 100) == pytest.approx(1.0)
    assert lr_factor(cfg, 100, 10, 100) == pytest.approx(1 / 25 / 1e4)


def test_step_multistep_and_constant():
    assert [lr_factor(Step(step_epochs=2, gamma=0.5), s, 10, 60) for s in (0, 19, 20, 40)] == pytest.approx(
        [1, 1, 0.5, 0.25]
    )
    multi = MultiStep(milestones=(1, 3), gamma=0.1)
    assert [lr_factor(multi, s, 10, 50) for s in (9, 10, 29, 30)] == pytest.approx([1, 0.1, 0.1, 0.01])
    assert lr_factor(Constant(warmup_epochs=1), 4, 10, 50) == pytest.approx(0.5)
    assert lr_factor(Constant(warmup_epochs=1), 30, 10, 50) == 1.0


OPTIMIZERS = [SGD(lr=0.05, nesterov=True), Adam(lr=1e-3, weight_decay=1e-4), AdamW(lr=1e-3)]
SCHEDULERS = [
    Cosine(warmup_epochs=0.5, min_lr_ratio=0.1),
    OneCycle(),
    Step(step_epochs=1),
    MultiStep(milestones=(1,)),
    Constant(),
]


@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=lambda o: o.name)
def test_every_optimizer_trains(optimizer):
    result = train(trial(optimizer=optimizer), make_data(), augment=AUGMENT)
    assert result.status == "completed" and result.epochs_run == 2
    assert all(math.isfinite(m.train_loss) and math.isfinite(m.val_loss) for m in result.history)


@pytest.mark.parametrize("scheduler", SCHEDULERS, ids=lambda s: s.name)
def test_every_scheduler_trains_and_the_lr_follows_it(scheduler):
    result = train(trial(scheduler=scheduler), make_data(), augment=AUGMENT)
    assert result.status == "completed"
    # 64 images / 16 = 4 steps per epoch; the recorded LR is the last step's of each epoch.
    expected = [0.1 * lr_factor(scheduler, 4 * e - 1, 4, 8) for e in (1, 2)]
    assert [m.lr for m in result.history] == pytest.approx(expected)


def test_cosine_lr_reaches_min_after_the_last_step():
    seen = []
    result = train(
        trial(scheduler=Cosine(warmup_epochs=1, min_lr_ratio=0.2), optimizer=SGD(lr=0.4)),
        make_data(),
        TrainOptions(callback=lambda m: seen.append(m.lr)),
        augment=AUGMENT,
    )
    assert seen[0] == pytest.approx(0.4)  # the last warm-up step runs at the peak
    assert result.history[-1].lr == pytest.approx(0.4 * lr_factor(Cosine(warmup_epochs=1, min_lr_ratio=0.2), 7, 4, 8))
    assert lr_factor(Cosine(warmup_epochs=1, min_lr_ratio=0.2), 8, 4, 8) == pytest.approx(0.2)


# --------------------------------------------------------------------------- optimizer groups


def test_decay_exclusion_puts_norms_and_biases_in_a_zero_decay_group():
    model = build_model(TINY, 16)
    groups = param_groups(model, 5e-4, decay_norm_and_bias=False)
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0]
    decayed, spared = ({id(p) for p in g["params"]} for g in groups)
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if isinstance(module, nn.BatchNorm2d) or name == "bias":
                assert id(p) in spared
            else:
                assert id(p) in decayed
    assert len(param_groups(model, 5e-4, decay_norm_and_bias=True)) == 1


def test_frozen_parameters_are_not_optimized():
    model = build_model(TINY, 16)
    frozen = {id(p) for n, p in model.named_parameters() if not n.startswith("head")}
    for n, p in model.named_parameters():
        p.requires_grad_(n.startswith("head"))
    optimized = {id(p) for g in param_groups(model, 1e-4, False) for p in g["params"]}
    assert optimized and not optimized & frozen
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        param_groups(model, 1e-4, True)


def test_decay_exclusion_trains():
    result = train(trial(decay_norm_and_bias=False), make_data(), augment=AUGMENT)
    assert result.status == "completed"


# --------------------------------------------------------------------------- loss and options


def test_aux_loss_trains_the_aux_head_only_when_weighted():
    model = dataclasses.replace(TINY, aux_head=AuxHead(after_stage=0))
    torch.manual_seed(0)  # train() seeds the same way before it builds the model
    init = build_model(model, 16)
    aux0 = {k: v for k, v in init.state_dict().items() if k.startswith("aux")}
    assert aux0

    def aux_moved(weight: float) -> bool:
        res = train(trial(model, aux_weight=weight, optimizer=SGD(weight_decay=0.0)), make_data(), augment=AUGMENT)
        assert res.status == "completed"
        now = res.model.state_dict()
        return any(not torch.equal(now[k], v) for k, v in aux0.items())

    assert aux_moved(0.5)
    assert not aux_moved(0.0)


@pytest.mark.parametrize(
    "options",
    [
        {"grad_clip": 0.5, "grad_clip_mode": "norm"},
        {"grad_clip": 0.01, "grad_clip_mode": "value"},
        {"label_smoothing": 0.1},
        {"precision": "bf16"},
        {"channels_last": "on"},
        {"channels_last": "off"},
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_options_train(options):
    result = train(trial(**options), make_data(), augment=AUGMENT)
    assert result.status == "completed"
    assert all(math.isfinite(m.train_loss) for m in result.history)


def test_clipping_changes_the_run():
    plain = train(trial(), make_data(), augment=AUGMENT)
    clipped = train(trial(grad_clip=1e-3, grad_clip_mode="value"), make_data(), augment=AUGMENT)
    assert curve(plain) != curve(clipped)


# --------------------------------------------------------------------------- control flow


def test_callback_receives_every_epoch_and_can_stop():
    seen: list[EpochMetrics] = []
    result = train(trial(epochs=3), make_data(), TrainOptions(callback=seen.append), augment=AUGMENT)
    assert [m.epoch for m in seen] == [1, 2, 3] and result.status == "completed"
    assert all(isinstance(m, EpochMetrics) and m.images_per_s > 0 and m.elapsed_s > 0 for m in seen)

    result = train(trial(epochs=3), make_data(), TrainOptions(callback=lambda m: m.epoch == 1), augment=AUGMENT)
    assert result.status == "stopped" and result.epochs_run == 1 and "epoch 1" in result.reason


class InfModel(nn.Module):
    """Logits that are infinite: cross-entropy is NaN from the first step."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.mean((2, 3))) * float("inf")


def test_non_finite_loss_ends_the_run_cleanly(monkeypatch, tmp_path):
    monkeypatch.setattr(train_loop, "build_model", lambda config, image_size: InfModel())
    seen = []
    ckpt = tmp_path / "ckpt.pt"
    result = train(
        trial(),
        make_data(),
        TrainOptions(callback=seen.append, checkpoint_path=ckpt, evaluate_test=True),
        augment=AUGMENT,
    )
    assert result.status == "nan" and result.epochs_run == 1
    assert "non-finite loss in epoch 1" in result.reason
    assert not seen and not ckpt.exists() and result.test_acc is None


def test_huge_lr_ends_in_nan():
    result = train(trial(optimizer=SGD(lr=1e12, momentum=0.9), epochs=3), make_data(), augment=AUGMENT)
    assert result.status == "nan" and "non-finite" in result.reason


def test_same_seed_same_result_other_seed_other_result():
    a = train(trial(seed=3), make_data(), augment=AUGMENT)
    b = train(trial(seed=3), make_data(), augment=AUGMENT)
    c = train(trial(seed=4), make_data(), augment=AUGMENT)
    assert curve(a) == curve(b) and same_weights(a.model, b.model)
    assert curve(a) != curve(c)


def test_resume_from_epoch_1_equals_an_uninterrupted_run(tmp_path):
    # Dropout exercises the global RNG, augmentation the generator, SGD momentum the
    # optimizer state, warm-up + cosine the scheduler: all must survive the checkpoint.
    model = dataclasses.replace(TINY, dropout=0.2)
    cfg = trial(model, scheduler=Cosine(warmup_epochs=0.5), optimizer=SGD(nesterov=True))
    whole = train(cfg, make_data(), augment=AUGMENT)

    ckpt = tmp_path / "run" / "ckpt.pt"
    first = train(cfg, make_data(), TrainOptions(checkpoint_path=ckpt, callback=lambda m: True), augment=AUGMENT)
    assert first.status == "stopped" and ckpt.exists() and not list(ckpt.parent.glob("*.tmp"))
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    resumed = train(cfg, make_data(), TrainOptions(checkpoint_path=ckpt, resume=True), augment=AUGMENT)
    assert resumed.status == "completed" and resumed.epochs_run == 2
    assert curve(resumed) == curve(whole)
    assert same_weights(resumed.model, whole.model)


def test_resume_without_a_checkpoint_starts_afresh_and_a_foreign_one_is_refused(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    fresh = train(trial(), make_data(), TrainOptions(checkpoint_path=ckpt, resume=True), augment=AUGMENT)
    assert fresh.epochs_run == 2 and ckpt.exists()
    with pytest.raises(UserError, match="trial"):
        train(trial(seed=9), make_data(), TrainOptions(checkpoint_path=ckpt, resume=True), augment=AUGMENT)


def test_num_classes_mismatch_is_a_user_error():
    with pytest.raises(UserError, match="num_classes"):
        train(trial(dataclasses.replace(TINY, num_classes=10)), make_data(), augment=AUGMENT)


def test_train_split_overrides_the_training_data():
    data = make_data()
    # train + val: 96 images in batches of 16 are 6 steps per epoch (train alone: 4).
    result = train(trial(scheduler=Cosine()), data, TrainOptions(train_split=data.train_plus_val()), augment=AUGMENT)
    assert [m.lr for m in result.history] == pytest.approx([0.1 * lr_factor(Cosine(), s, 6, 12) for s in (5, 11)])


# --------------------------------------------------------------------------- learning and outputs


def test_learns_a_learnable_dataset_and_evaluates_test():
    data = make_data(n_train=128, learnable=True)
    result = train(
        trial(epochs=4, optimizer=Adam(lr=1e-2), scheduler=Cosine()),
        data,
        TrainOptions(evaluate_test=True),
        augment=AUGMENT,
    )
    assert result.status == "completed"
    assert result.final_val_acc >= 0.9 and result.test_acc >= 0.9  # chance is 0.25
    assert result.best_val_acc == max(m.val_acc for m in result.history)
    assert set(result.per_class_test_acc) == set(data.classes)
    conf = result.confusion_matrix
    assert len(conf) == NUM_CLASSES and sum(map(sum, conf)) == 32
    assert result.test_acc == pytest.approx(sum(conf[i][i] for i in range(NUM_CLASSES)) / 32)


def test_write_outputs_writes_the_three_files(tmp_path):
    result = train(trial(), make_data(), TrainOptions(evaluate_test=True), augment=AUGMENT)
    write_outputs(result, tmp_path / "out", config_dict={"model": {"name": "resnet"}}, params=1234)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    for key in (
        "val_acc",
        "test_acc",
        "params",
        "train_time_s",
        "epochs",
        "status",
        "config",
        "per_class_test_acc",
        "confusion_matrix",
    ):
        assert key in metrics
    assert metrics["params"] == 1234 and metrics["epochs"] == 2 and metrics["status"] == "completed"
    assert metrics["config"] == {"model": {"name": "resnet"}}
    rows = list(csv.DictReader((tmp_path / "out" / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"train_loss", "val_loss", "train_acc", "val_acc", "lr"} <= set(rows[0])
    html = (tmp_path / "out" / "curves.html").read_text()
    assert "plotly" in html.lower() and "val acc" in html and len(html) > 1_000_000  # plotly.js inline


def test_write_outputs_of_a_nan_run_is_valid_json(tmp_path, monkeypatch):
    monkeypatch.setattr(train_loop, "build_model", lambda config, image_size: InfModel())
    result = train(trial(), make_data(), augment=AUGMENT)
    write_outputs(result, tmp_path, config_dict={}, params=0)
    metrics = json.loads((tmp_path / "metrics.json").read_text())  # strict: NaN became null
    assert metrics["status"] == "nan" and metrics["test_acc"] is None


def test_progress_printer_and_chained_callbacks():
    m = EpochMetrics(
        epoch=2, train_loss=1.0, train_acc=0.5, val_loss=1.1, val_acc=0.45, lr=0.1, images_per_s=1234.0, elapsed_s=20.0
    )
    lines: list[str] = []
    printer = ProgressPrinter(10, log=lines.append)
    assert chain_callbacks(printer, None, lambda _: True)(m) is True
    assert lines[0].startswith("epoch  2/10") and "1,234 img/s" in lines[0] and "ETA 1m20s" in lines[0]
    assert chain_callbacks(printer)(m) is False and len(lines) == 2


def test_augment_comes_from_the_recipe_unless_overridden():
    plain = train(trial(augment=Augment(crop_padding=0, flip=False)), make_data())
    same = train(trial(), make_data(), augment=Augment(crop_padding=0, flip=False))
    augmented = train(trial(), make_data())
    assert curve(plain) == curve(same) != curve(augmented)


def test_train_spec_trains_each_seed_and_writes_outputs(monkeypatch, tmp_path):
    import search.data
    import search.train.seeds

    spec = parse_spec(
        """
study: {name: t}
model: {name: resnet, num_classes: 4, stem: {width: 8}, stages: [{blocks: 1, width: 8}, {blocks: 1, width: 16}]}
train: {epochs: 1, batch_size: 16, eval_batch_size: 32}
"""
    )
    monkeypatch.setattr(search.data, "load_dataset", lambda config, data_dir=None, download=True: make_data())
    monkeypatch.setattr(search.train.seeds, "source_location", lambda config, data_dir: tmp_path)  # made-up data
    lines: list[str] = []
    summary = train_spec(spec, SeedOptions(seeds=[0, 1], out_dir=tmp_path, device="cpu", log=lines.append))
    assert len(lines) == 2 and lines[0].startswith("seed 0: epoch 1/1")
    assert "seed 1: completed" in summary.text and "test_acc: mean" in summary.text and not summary.diverged
    for seed in (0, 1):
        metrics = json.loads((tmp_path / f"seed{seed}" / "metrics.json").read_text())
        assert metrics["config"]["train"]["seed"] == seed and metrics["params"] > 0


# A stage of 4 channels, then a strided projection shortcut from it: a 1x1 stride-2 conv with 4 inputs.
THIN = ResNetConfig(num_classes=NUM_CLASSES, stem=Stem(4), stages=(Stage(1, 4), Stage(1, 24)))


def test_thin_strided_projections_train_contiguous_on_the_cpu():
    assert cpu_channels_last_is_safe(build_model(TINY)) and not cpu_channels_last_is_safe(build_model(THIN))
    # torch aborts the process when channels_last meets such a layer, so train in a child process.
    code = (
        "import torch; torch.set_num_threads(1); "  # as a search trial with resources.cpu 1 runs
        "from test_train import THIN, TrainOptions, make_data, trial, train; "
        "r = train(trial(THIN, channels_last='on', batch_size=32, epochs=3), make_data(128), "
        "TrainOptions(device='cpu')); "
        "print(r.status)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and result.stdout.strip() == "completed", result.stderr[-2000:]
