"""Cheaper fidelities: successive-halving rungs within an epoch and at a lower resolution, a
promoted trial that trains on, and the cost of training counted in full-epoch equivalents
(images x FLOPs per image at the side trained)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import optuna
import pytest
import torch
from searching import load, sqlite_url
from tiny_model import cli

from search.budget import count_model, count_spec, fast_count
from search.budget.compute import Stretch, flops_counter, full_epochs, halving_cost, halving_rungs, rung_costs, schedule
from search.config import (
    Augment,
    ProgressiveResize,
    ResNetConfig,
    Rung,
    SpecError,
    Stage,
    Stem,
    TrainConfig,
    TrialConfig,
    parse_spec,
)
from search.data import ImageDataset, TensorSplit
from search.engine.events import EpochReport, RunStart, TrialEnd, TrialStart
from search.engine.progress import RunProgress
from search.engine.rungs import RungHalvingPruner
from search.models import build_model
from search.study.keys import FULL_EPOCHS
from search.train import EpochMetrics, TrainOptions, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ResNetConfig(num_classes=3, stem=Stem(8), stages=(Stage(1, 8), Stage(1, 16)))
N_TRAIN, BATCH = 48, 8  # 6 steps per epoch
STEPS = N_TRAIN // BATCH


def make_data(size: int = 32) -> ImageDataset:
    gen = torch.Generator().manual_seed(0)

    def split(n: int) -> TensorSplit:
        labels = torch.arange(n) % 3
        colours = torch.tensor([[200, 30, 30], [30, 200, 30], [30, 30, 200]], dtype=torch.float32)
        noise = torch.randint(-40, 40, (n, 3, size, size), generator=gen).float()
        return TensorSplit((colours[labels][:, :, None, None] + noise).clamp(0, 255).to(torch.uint8), labels)

    return ImageDataset(split(N_TRAIN), split(12), split(6), ("r", "g", "b"), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def tiny_trial(epochs: int = 2, resize: ProgressiveResize | None = None) -> TrialConfig:
    recipe = TrainConfig(
        epochs=epochs, batch_size=BATCH, eval_batch_size=16, augment=Augment(crop_padding=2), progressive_resize=resize
    )
    return TrialConfig(model=TINY, train=recipe)


def run(trial: TrialConfig, rungs: tuple[Rung, ...] = ()) -> tuple[list[EpochMetrics], object]:
    reports: list[EpochMetrics] = []
    result = train(trial, make_data(), TrainOptions(callback=lambda m: reports.append(m) and None, rungs=tuple(rungs)))
    return reports, result


def weights(model: torch.nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- the cost counter


def test_the_schedule_cuts_epochs_at_rungs_and_trains_the_steps_before_a_rung_at_its_size():
    rungs = (Rung(fraction=0.25), Rung(epochs=1, image_size=16), Rung(epochs=3))
    assert schedule(3, 8, rungs) == [
        Stretch(1, 0, 2, None, (0,)),  # a quarter of 8 steps
        Stretch(1, 2, 8, 16, (1,)),  # the rest of epoch 1 at 16 px
        Stretch(2, 0, 8, None),
        Stretch(3, 0, 8, None, (2,)),
    ]
    # Without rungs: one stretch per epoch, at progressive_resize's side in its first epochs.
    assert schedule(2, 4, (), ProgressiveResize(size=16, epochs=1)) == [Stretch(1, 0, 4, 16), Stretch(2, 0, 4, None)]


def test_the_cost_counter_is_exact_on_a_known_schedule():
    rungs = (Rung(fraction=0.25), Rung(epochs=1, image_size=16), Rung(epochs=3))
    stretches = schedule(3, 8, rungs)
    flops_at = flops_counter(TINY, 32)
    f32, f16 = fast_count(TINY, 32).flops, fast_count(TINY, 16).flops
    # The real counter at each side: fvcore on the built model agrees to the unit.
    assert f16 == count_model(build_model(TINY, 16), 16).flops
    # The pixel ratio is not exact for a ResNet (its head does not shrink with the image).
    assert f16 * 4 != f32
    assert full_epochs(stretches, 8, flops_at) == (2 * f32 + 6 * f16 + 16 * f32) / (8 * f32)
    assert full_epochs(stretches[:1], 8, flops_at) == 0.25
    assert full_epochs(stretches[:2], 8, flops_at) == (2 * f32 + 6 * f16) / (8 * f32)


def test_the_cost_after_successive_halving_pays_each_stretch_by_the_share_that_reaches_it():
    # Optuna's rungs at 6 and 18 of 30 epochs, 1 in 3 going on: 6 + 12 / 3 + 12 / 9.
    assert halving_rungs(6, 3, 30) == [Rung(epochs=6), Rung(epochs=18)]
    assert halving_rungs(1, 3, 3) == [Rung(epochs=1)] and halving_rungs(5, 3, 5) == []
    assert halving_cost([6.0, 18.0], 30.0, 3) == pytest.approx(6 + 4 + 12 / 9)
    # The ladder of rungs on a known schedule: each stretch's cost times the share that trains it.
    stretches = schedule(4, 8, (Rung(fraction=0.25, image_size=16), Rung(epochs=1), Rung(epochs=2)))
    flops_at = flops_counter(TINY, 32)
    costs, whole = rung_costs(stretches, 8, flops_at), full_epochs(stretches, 8, flops_at)
    expected = costs[0] + (costs[1] - costs[0]) / 2 + (costs[2] - costs[1]) / 4 + (whole - costs[2]) / 8
    assert halving_cost(costs, whole, 2) == pytest.approx(expected) and expected < whole / 4
    assert halving_cost([], 5.0, 3) == 5.0  # no rung before the end: every trial trains whole


# --------------------------------------------------------------------------- the trainer


def test_a_fractional_rung_reports_mid_epoch_and_the_trial_trains_on_without_retraining():
    plain_reports, plain = run(tiny_trial())
    reports, result = run(tiny_trial(), (Rung(fraction=0.5), Rung(epochs=2)))
    first = reports[0]
    assert (first.rung, first.epoch) == (0, 0)  # half-way through epoch 1
    assert first.full_epochs == 0.5 and math.isfinite(first.val_loss)
    # Every objective is there at a rung, as at an epoch: the pruner may follow any of them.
    assert math.isfinite(first.balanced_acc) and math.isfinite(first.macro_f1)
    assert [(m.epoch, m.rung) for m in reports] == [(0, 0), (1, None), (2, 1)]  # rung 1 is epoch 2's own report
    assert [m.full_epochs for m in reports] == [0.5, 1.0, 2.0]
    # The rung's validation changed nothing: the same steps, the same weights as without rungs.
    assert result.history == reports[1:] and len(result.history) == len(plain.history) == 2
    plain_weights, rung_weights = weights(plain.model), weights(result.model)
    assert all(torch.equal(plain_weights[k], rung_weights[k]) for k in plain_weights)
    assert [m.full_epochs for m in plain_reports] == [1.0, 2.0] and {m.rung for m in plain_reports} == {None}


def test_a_low_resolution_rung_trains_at_its_size_and_validates_at_full_size():
    seen: list[tuple[bool, int]] = []

    def record(module: torch.nn.Module, args: tuple) -> None:
        if isinstance(module, torch.nn.Conv2d) and module.in_channels == 3:  # the stem sees the input
            seen.append((module.training, args[0].shape[-1]))

    hook = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        reports, _ = run(tiny_trial(), (Rung(epochs=1, image_size=16), Rung(epochs=2, val_image_size=16)))
    finally:
        hook.remove()
    train_sizes = [size for training, size in seen if training]
    assert train_sizes == [16] * STEPS + [32] * STEPS  # epoch 1 at 16 px up to its rung, epoch 2 at full size
    val_sizes = [size for training, size in seen if not training]
    # Rung 0 is epoch 1's report (validated at 32), epoch 2 validates at 32 and rung 1 at 16 (its own pass).
    assert val_sizes == [32, 16, 32]
    assert [(m.epoch, m.rung) for m in reports] == [(1, 0), (2, 1), (2, None)]
    f32, f16 = fast_count(TINY, 32).flops, fast_count(TINY, 16).flops
    assert reports[0].full_epochs == f16 / f32 and reports[-1].full_epochs == 1 + f16 / f32


def test_a_trial_stopped_at_a_rung_ends_there():
    reports: list[EpochMetrics] = []
    result = train(
        tiny_trial(),
        make_data(),
        TrainOptions(callback=lambda m: reports.append(m) or m.rung == 0, rungs=(Rung(fraction=0.5),)),
    )
    assert result.status == "stopped" and result.history == [] and len(reports) == 1


# --------------------------------------------------------------------------- the spec and the pruner


@pytest.mark.parametrize(
    ("pruner", "key"),
    [
        ("{name: successive_halving, rungs: [{fraction: 0.5}, {fraction: 0.25}]}", "study.pruner.rungs[1]"),
        ("{name: successive_halving, rungs: [{fraction: 0}]}", "study.pruner.rungs[0].fraction"),
        ("{name: successive_halving, rungs: [{fraction: 0.5, epochs: 1}]}", "study.pruner.rungs[0].fraction"),
        ("{name: successive_halving, rungs: [{}]}", "study.pruner.rungs[0].fraction"),
        ("{name: successive_halving, rungs: [{epochs: 1, image_size: 4}]}", "study.pruner.rungs[0].image_size"),
        ("{name: successive_halving, min_resource: 2, rungs: [{epochs: 1}]}", "study.pruner.min_resource"),
        ("{name: successive_halving, rungs: [{epochs: 1, size: 16}]}", "study.pruner.rungs[0]"),
    ],
)
def test_a_bad_rung_is_one_spec_error_naming_its_key(pruner: str, key: str):
    text = f"study: {{pruner: {pruner}}}\nmodel: {{num_classes: 3}}\ntrain: {{epochs: 2}}\n"
    with pytest.raises(SpecError) as caught:
        parse_spec(text, "s.yaml")
    assert key in str(caught.value) and "\n" not in str(caught.value)


def test_a_sample_that_does_not_fit_a_rungs_side_is_left_out_and_a_space_of_none_is_one_error():
    pool = "{choice: [null, 8]}"  # a fixed 8x8 pooling window fits 32 px (8x8 last map), not 16 px (4x4)
    stages = "{blocks: 1, width: 8}, {blocks: 1, width: 16}, {blocks: 1, width: 16}"
    text = (
        "study: {pruner: {name: successive_halving, rungs: [{fraction: 0.5, image_size: 16}, {epochs: 1}]}}\n"
        f"model: {{num_classes: 3, pool_kernel: {pool}, stages: [{stages}]}}\n"
        "train: {epochs: 2}\n"
    )
    report = count_spec(parse_spec(text, "s.yaml"), image_size=32, samples=40)
    assert report.sizes and {s.config.model.pool_kernel for s in report.sizes} == {None}
    with pytest.raises(SpecError) as caught:
        count_spec(parse_spec(text.replace(pool, "8").replace("width: 8", "width: {choice: [8, 12]}"), "s.yaml"))
    message = str(caught.value)
    assert "model.pool_kernel" in message and "32x32, 16x16" in message and "rung" in message and "\n" not in message
    with pytest.raises(SpecError, match="a rung of study.pruner trains at 16px"):  # a fixed config: the same rule
        count_spec(parse_spec(text.replace(pool, "8"), "s.yaml"), image_size=32)


def test_the_rung_pruner_compares_trials_at_the_same_rung():
    study = optuna.create_study(direction="maximize", pruner=RungHalvingPruner(reduction_factor=2, n_rungs=2))
    kept = []
    for value in (0.5, 0.4, 0.9, 0.1):
        trial = study.ask()
        trial.report(value, step=0)
        kept.append(not trial.should_prune())
        trial.report(value, step=2)  # past the last rung: never pruned
        assert not trial.should_prune()
        study.tell(trial, value)
    # Rung 0's peers so far: [0.5] keeps 0.5; [0.5, 0.4]: the best half, 0.5, drops 0.4; ...
    assert kept == [True, False, True, False]


# --------------------------------------------------------------------------- the time left


def test_the_time_left_counts_full_epoch_equivalents_not_reports():
    now = [0.0]
    view = RunProgress(clock=lambda: now[0])
    view.run_started(RunStart(study_name="s", n_trials=3, finished_before=0, slots=1, epochs=4, started=0.0))
    view.trial_started(TrialStart(0, {}, 1, 10**6, 4))
    # A quarter epoch at full size, then the rest of epoch 1 at half the side (a quarter of the cost each).
    for epoch, full, seconds in ((0, 0.25, 12.0), (1, 0.4375, 2.0), (2, 1.4375, 8.0)):
        now[0] += seconds
        view.epoch_reported(EpochReport(0, epoch, {FULL_EPOCHS: full}, now[0]))
    # After the first report: 10 s for 1.1875 full-epoch equivalents -> 8.42 s per full epoch.
    per_full = 10.0 / 1.1875
    assert view.epoch_time() == pytest.approx(per_full)
    stopped = optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, user_attrs={FULL_EPOCHS: 1.4375})
    view.trial_ended(TrialEnd(0, "pruned", stopped, at=now[0]))
    # Two trials to go, each expected to spend what the pruned one did (start-up unknown: 0).
    assert view.time_left() == pytest.approx(2 * 1.4375 * per_full)


# --------------------------------------------------------------------------- through the CLI

SPEC = """
study:
  name: rungs
  n_trials: 3
  pruner: {{name: successive_halving, reduction_factor: 2, rungs: {rungs}}}
  seed: 0
data: {{dataset: imagefolder, val_fraction: 0.25}}
model:
  num_classes: 3
  stem: {{width: 8}}
  stages: [{{blocks: 1, width: {{choice: [8, 16]}}}}, {{blocks: 1, width: 16}}]
train: {{epochs: 2, batch_size: 8, optimizer: {{name: sgd, lr: {{range: [0.001, 0.1], log: true}}}}}}
resources: {{cpu: 1, max_concurrent: 1}}
"""


@pytest.mark.slow
def test_a_search_with_rungs_reports_at_them_and_stores_each_trials_cost(tmp_path: Path, tiny_imagefolder: Path):
    spec = tmp_path / "rungs.yaml"
    spec.write_text(SPEC.format(rungs="[{fraction: 0.5, image_size: 16}, {epochs: 1}]"))
    plan = cli(["run", str(spec), "--data-dir", str(tiny_imagefolder), "--dry-run"], tmp_path)
    assert plan.returncode == 0, plan.stderr[-3000:]
    found = re.search(r"rungs: a median-size trial reaches them after ([\d.]+), ([\d.]+) full-epoch", plan.stdout)
    assert found, plan.stdout
    # 3 steps an epoch: rung 0 after 2 steps at 16 px, rung 1 one full-size step later (a third of an epoch).
    assert float(found.group(1)) < 2 / 3 and float(found.group(2)) - float(found.group(1)) == pytest.approx(
        1 / 3, abs=0.01
    )
    # The estimate after pruning: each stretch paid by the share that reaches it (1 in 2 goes on).
    first, second = float(found.group(1)), float(found.group(2))
    whole = float(re.search(r"per trial of 2 epochs \(([\d.]+) full-epoch", plan.stdout).group(1))
    after = re.search(r"after pruning \(([\d.]+) full-epoch equivalents a trial on average, 1 in 2 ", plan.stdout)
    assert after, plan.stdout
    assert float(after.group(1)) == pytest.approx(first + (second - first) / 2 + (whole - second) / 4, abs=0.01)
    done = cli(["run", str(spec), "--data-dir", str(tiny_imagefolder)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = [t for t in load(sqlite_url(tmp_path, "rungs"), "rungs").trials if t.state.is_finished()]
    assert len(trials) == 3
    f32, f16 = fast_count(_model(trials[0].params), 32).flops, fast_count(_model(trials[0].params), 16).flops
    first = trials[0]
    assert first.state == optuna.trial.TrialState.COMPLETE  # the first trial at each rung goes on
    assert sorted(first.intermediate_values) == [0, 1]  # the rungs' indices are the steps, and only they
    # 27 training images, batch 8: 3 steps an epoch; half an epoch is 2 steps at 16 px.
    assert first.user_attrs[FULL_EPOCHS] == pytest.approx((2 * f16 + 1 * f32) / (3 * f32) + 1)
    for trial in trials[1:]:
        full = trial.user_attrs[FULL_EPOCHS]
        assert full == pytest.approx(2 * f16 / (3 * f32), rel=1e-6) or full > 1  # pruned at rung 0, or went on
    bad = tmp_path / "bad.yaml"
    bad.write_text(SPEC.format(rungs="[{epochs: 1, image_size: 64}]").replace("name: rungs", "name: bad"))
    refused = cli(["run", str(bad), "--data-dir", str(tiny_imagefolder)], tmp_path)
    assert refused.returncode == 2 and "study.pruner.rungs[0].image_size" in refused.stderr
    assert "Traceback" not in refused.stderr


def _model(params: dict) -> ResNetConfig:
    return ResNetConfig(num_classes=3, stem=Stem(8), stages=(Stage(1, params["model.stages.0.width"]), Stage(1, 16)))
