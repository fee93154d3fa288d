"""Imbalanced classes: ``train.class_weights`` and ``train.sampler`` on a 10:1 dataset, the
``balanced_acc`` and ``macro_f1`` metrics against scikit-learn's on the same predictions, the
run's warning on plain accuracy, and the whole path through the CLI (``run`` with objective
``balanced_acc``, then ``evaluate`` with per-class recall)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import balanced_accuracy_score, f1_score, precision_recall_fscore_support
from sklearn.utils.class_weight import compute_class_weight

from search.config import Augment, ResNetConfig, Stage, Stem, TrainConfig, TrialConfig, parse_spec
from search.data import ImageDataset, TensorSplit
from search.engine.preflight import imbalance_line
from search.models import build_model
from search.outputs.evaluate import per_class_scores
from search.train import BatchFormat, EvalSetup, evaluate, train
from search.train.balance import BatchOrder, balanced_class_weights
from search.train.class_metrics import balanced_accuracy, macro_f1

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MAJORITY, MINORITY = 200, 20  # 10:1
TINY = ResNetConfig(num_classes=2, stem=Stem(8), stages=(Stage(1, 8), Stage(1, 16)))


def ten_to_one_labels() -> torch.Tensor:
    return torch.cat([torch.zeros(MAJORITY, dtype=torch.long), torch.ones(MINORITY, dtype=torch.long)])


def ten_to_one_data(seed: int = 0) -> ImageDataset:
    """Two colours, 10:1 in the training split, balanced in validation; 16x16 noise on top."""
    gen = torch.Generator().manual_seed(seed)

    def split(labels: torch.Tensor) -> TensorSplit:
        colours = torch.tensor([[180, 60, 60], [60, 60, 180]], dtype=torch.float32)
        noise = torch.randint(-90, 90, (len(labels), 3, 16, 16), generator=gen).float()
        images = (colours[labels][:, :, None, None] + noise).clamp(0, 255).to(torch.uint8)
        return TensorSplit(images, labels)

    val = torch.arange(40) % 2
    return ImageDataset(
        train=split(ten_to_one_labels()),
        val=split(val),
        test=split(val),
        classes=("ok", "defect"),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )


# --------------------------------------------------------------------------- weights and sampler


def test_balanced_class_weights_are_the_formula_and_scikit_learns() -> None:
    labels = ten_to_one_labels()
    weights = balanced_class_weights(labels, 2)
    n = len(labels)
    assert weights.tolist() == pytest.approx([n / (2 * MAJORITY), n / (2 * MINORITY)])
    sklearn = compute_class_weight("balanced", classes=np.array([0, 1]), y=labels.numpy())
    assert weights.tolist() == pytest.approx(sklearn)
    # A class absent from the training split: n_classes counts the present ones, as scikit-learn does.
    three = torch.tensor([0] * 30 + [2] * 3)
    sklearn = compute_class_weight("balanced", classes=np.array([0, 2]), y=three.numpy())
    assert balanced_class_weights(three, 3).tolist() == pytest.approx([sklearn[0], 0.0, sklearn[1]])


def test_the_balanced_sampler_draws_every_class_equally_often_and_repeats_with_its_seed() -> None:
    labels = ten_to_one_labels()
    order = BatchOrder.for_split("balanced", labels, 2)
    draws = [order.draw(torch.Generator().manual_seed(s)) for s in range(20)]
    assert all(len(d) == len(labels) for d in draws)  # the epoch keeps its length
    drawn = labels[torch.cat(draws)]
    share = drawn.float().mean().item()  # the minority class's share of 4,400 draws
    assert 0.47 < share < 0.53, share
    batches = labels[draws[0][: (len(labels) // 32) * 32]].view(-1, 32).float().mean(1)
    assert 0.25 < batches.mean().item() < 0.75 and batches.min() > 0  # every batch of 32 holds the minority
    minority = draws[0][labels[draws[0]] == 1]
    assert len(set(minority.tolist())) > MINORITY // 2  # the minority's images, not one repeated
    assert torch.equal(order.draw(torch.Generator().manual_seed(3)), draws[3])  # seeded: repeats
    uniform = BatchOrder.for_split("uniform", labels, 2).draw(torch.Generator().manual_seed(0))
    assert sorted(uniform.tolist()) == list(range(len(labels)))  # a permutation, as before
    assert labels[uniform].float().mean().item() == pytest.approx(MINORITY / len(labels))


def _run(**recipe: object) -> list[float]:
    cfg = TrainConfig(epochs=2, batch_size=32, augment=Augment(crop_padding=0, flip=False), **recipe)  # type: ignore[arg-type]
    result = train(TrialConfig(TINY, cfg), ten_to_one_data())
    assert result.status == "completed"
    last = result.history[-1]
    assert 0.0 <= last.balanced_acc <= 1.0 and 0.0 <= last.macro_f1 <= 1.0
    return [m.train_loss for m in result.history]


def test_class_weights_and_the_balanced_sampler_change_what_trains() -> None:
    plain = _run()
    weighted = _run(class_weights="balanced")
    sampled = _run(sampler="balanced")
    assert plain != weighted and plain != sampled and weighted != sampled
    # The same weights on the first batch: the plain loss is the unweighted mean, the weighted
    # one the mean over the batch's weights, and the training recipe repeats with its seed.
    assert _run(sampler="balanced") == sampled


def test_the_weighted_loss_is_torchs_weighted_cross_entropy_of_the_formula() -> None:
    from search.train.step import losses

    logits, y = torch.randn(12, 2), torch.tensor([0] * 10 + [1] * 2)
    weight = balanced_class_weights(y, 2)
    _, main, _ = losses(logits, y, TrainConfig(class_weights="balanced"), weight)
    per_image = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    expected = (per_image * weight[y]).sum() / weight[y].sum()
    assert main.item() == pytest.approx(expected.item(), rel=1e-6)
    _, unweighted, _ = losses(logits, y, TrainConfig())
    assert unweighted.item() == pytest.approx(per_image.mean().item(), rel=1e-6)


# --------------------------------------------------------------------------- metrics


def _confusion(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> torch.Tensor:
    return torch.bincount(torch.from_numpy(y_true * k + y_pred), minlength=k * k).view(k, k)


@pytest.mark.parametrize("seed", range(12))
def test_balanced_acc_and_macro_f1_equal_scikit_learns(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 7))
    n = int(rng.integers(1, 80))
    # Skewed draws: some classes are absent from the truth, some never predicted.
    y_true = rng.choice(k, size=n, p=rng.dirichlet(np.full(k, 0.5)))
    y_pred = np.where(rng.random(n) < 0.5, y_true, rng.choice(k, size=n, p=rng.dirichlet(np.full(k, 0.5))))
    conf = _confusion(y_true, y_pred, k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn warns on classes absent from the truth
        expected_bal = balanced_accuracy_score(y_true, y_pred)
        expected_f1 = f1_score(y_true, y_pred, average="macro")
        precision, recall, f1, support = precision_recall_fscore_support(
            y_true, y_pred, labels=list(range(k)), zero_division=0
        )
    assert balanced_accuracy(conf).item() == pytest.approx(expected_bal, abs=1e-12)
    assert macro_f1(conf).item() == pytest.approx(expected_f1, abs=1e-12)
    scores = per_class_scores(conf.tolist(), tuple(f"c{i}" for i in range(k)))
    for i in range(k):
        row = scores[f"c{i}"]
        assert row["support"] == support[i]
        for key, value in (("precision", precision[i]), ("recall", recall[i]), ("f1", f1[i])):
            assert row[key] is None or row[key] == pytest.approx(value, abs=1e-12)
        assert (row["recall"] is None) == (support[i] == 0)


def test_the_validation_pass_reports_scikit_learns_values_on_the_models_predictions() -> None:
    data = ten_to_one_data()
    torch.manual_seed(0)
    model = build_model(TINY, 16).eval()
    fmt = BatchFormat(torch.device("cpu"), torch.full((3,), 0.5), torch.full((3,), 0.25), False, None)
    imbalanced = TensorSplit(data.train.images[::3], data.train.labels[::3])
    ev = evaluate(model, imbalanced, fmt, EvalSetup(num_classes=2, batch_size=16), confusion=True)
    with torch.inference_mode():
        predicted = model(fmt.prepare(imbalanced.images)).argmax(1).numpy()
    truth = imbalanced.labels.numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ev.balanced_acc == pytest.approx(balanced_accuracy_score(truth, predicted), abs=1e-6)
        assert ev.macro_f1 == pytest.approx(f1_score(truth, predicted, average="macro"), abs=1e-6)
    assert ev.acc == pytest.approx(float((predicted == truth).mean()))
    empty = evaluate(
        model, TensorSplit(imbalanced.images[:0], imbalanced.labels[:0]), fmt, EvalSetup(num_classes=2, batch_size=4)
    )
    assert math.isnan(empty.balanced_acc) and math.isnan(empty.macro_f1)


def test_evaluate_prints_each_classs_precision_recall_and_f1(model_dir: Path, tmp_path: Path) -> None:
    args = [sys.executable, "-m", "search.cli", "evaluate", str(model_dir), "--out", str(tmp_path), "--device", "cpu"]
    shown = subprocess.run(args, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    result = json.loads((tmp_path / "evaluation_test.json").read_text())
    lines = shown.stdout.splitlines()
    assert f"balanced accuracy {result['balanced_accuracy']:.2%}, macro-F1 {result['macro_f1']:.4f}" in lines
    assert lines[lines.index("per class:") + 1].split() == ["precision", "recall", "F1", "support"]
    for name, score in result["scores"].items():
        row = next(line.split() for line in lines if line.split()[:1] == [name])
        shown_scores = [f"{score[k]:.2%}" if score[k] is not None else "-" for k in ("precision", "recall", "f1")]
        assert row[1:4] == shown_scores and row[4].endswith(f"/{score['support']}")
        assert score["recall"] == result["per_class"][name]
    recalls = [s["recall"] for s in result["scores"].values()]
    assert result["balanced_accuracy"] == pytest.approx(sum(recalls) / len(recalls))


# --------------------------------------------------------------------------- the warning


def test_a_run_warns_on_imbalanced_classes_only_when_it_optimizes_plain_accuracy() -> None:
    accuracy = parse_spec("study: {objectives: [{metric: val_acc}]}")
    balanced = parse_spec("study: {objectives: [{metric: balanced_acc}]}")
    counts = {"ok": 970, "defect": 30}
    line = imbalance_line(accuracy, counts)
    assert line is not None and line.startswith("warning: imbalanced classes: ok has 970 training images, defect 30")
    assert "balanced_acc" in line and "train.class_weights: balanced" in line
    assert imbalance_line(balanced, counts) is None
    assert imbalance_line(accuracy, {"ok": 500, "defect": 100}) is None  # 5x exactly: no warning
    assert imbalance_line(accuracy, {"ok": 501, "defect": 100}) is not None
    loss = parse_spec("study: {objectives: [{metric: val_loss, direction: minimize}]}")
    assert imbalance_line(loss, counts) is None  # no accuracy objective: nothing to warn of


# --------------------------------------------------------------------------- through the CLI

SPEC = """
study:
  name: imb
  n_trials: 2
  objectives: [{metric: balanced_acc, direction: maximize}]
  sampler: {name: random}
  pruner: {name: none}
data: {dataset: imagefolder, image_size: 24, val_fraction: 0.25}
model:
  num_classes: 2
  stem: {width: 8}
  stages: [{blocks: 1, width: 8}, {blocks: 1, width: {choice: [8, 16]}}]
train:
  epochs: 1
  batch_size: 16
  optimizer: {name: sgd, lr: 0.05}
  class_weights: {choice: [none, balanced]}
  sampler: {choice: [uniform, balanced]}
resources: {cpu: 1, max_concurrent: 1}
"""


def imbalanced_folder(root: Path) -> Path:
    """``train/`` and ``test/`` of 10:1 classes, JPEGs of mixed sizes (resized to 24 by the spec)."""
    rng = np.random.default_rng(0)
    for split, (many, few) in {"train": (60, 6), "test": (20, 2)}.items():
        for name, colour, count in (("ok", (200, 60, 60), many), ("defect", (60, 60, 200), few)):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                size = (20, 33, 48)[i % 3]
                pixels = np.clip(np.asarray(colour) + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i:03d}.jpg", quality=90)
    return root


@pytest.mark.slow  # a real (local) Ray
def test_a_search_for_balanced_accuracy_then_evaluate_per_class(tmp_path: Path, _session_data_cache: Path) -> None:
    data = imbalanced_folder(tmp_path / "photos")
    (tmp_path / "s.yaml").write_text(SPEC)
    env = {**os.environ, "RESNET_SEARCH_CACHE": str(_session_data_cache)}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "search.cli", *args], cwd=tmp_path, capture_output=True, text=True, env=env
        )

    ran = cli("run", "s.yaml", "--data-dir", str(data), "--keep", "1", "--device", "cpu")
    assert ran.returncode == 0, ran.stderr
    assert "warning: imbalanced classes" not in ran.stdout + ran.stderr  # the objective is balanced
    assert "complete: balanced_acc" in ran.stdout + ran.stderr
    import optuna

    study = optuna.load_study(study_name="imb", storage=f"sqlite:///{tmp_path}/studies/imb.db")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2 and all(0.0 <= t.values[0] <= 1.0 for t in complete)
    assert {"train.class_weights", "train.sampler"} <= set(complete[0].params)
    best = max(complete, key=lambda t: t.values[0])
    folder = tmp_path / "studies" / "imb" / "models" / f"trial_{best.number}"

    shown = cli("evaluate", str(folder), "--device", "cpu")
    assert shown.returncode == 0, shown.stderr
    assert "balanced accuracy" in shown.stdout and "macro-F1" in shown.stdout
    defect_line = next(line for line in shown.stdout.splitlines() if line.strip().startswith("defect"))
    assert defect_line.rstrip().endswith("/2")  # recall's count: of the 2 test images of the defect class
    as_json = cli("evaluate", str(folder), "--device", "cpu", "--json")
    assert as_json.returncode == 0, as_json.stderr
    result = json.loads(as_json.stdout)
    assert result["images"] == 22 and set(result["scores"]) == {"ok", "defect"}
    recalls = [result["scores"][c]["recall"] for c in ("ok", "defect")]
    assert result["balanced_accuracy"] == pytest.approx(sum(recalls) / 2)
    assert result["scores"]["defect"]["support"] == 2 and result["per_class"]["defect"] == recalls[1]
