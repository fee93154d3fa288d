"""Time to accuracy: the fast-training recipe against the recipe before it, in the same run.

Run on the CPU (``--device cpu``, the default)::

    python benchmarks/time_to_accuracy.py [--parts quickstart,resnet20,ablation] [--runs 3]
        [--data-dir D] [--budget-s 300] [--resnet20-epochs 4] [--ablation-epochs 5]

- ``quickstart``: ``resnet-search train`` end to end, as a user runs it (a subprocess: the
  interpreter, imports, decoding the data from an empty cache, training, the test, the
  output files), for ``spaces/quickstart.yaml`` (new) and ``benchmarks/quickstart_before.yaml``
  (the quickstart before the recipe), taking turns, ``--runs`` times each. Per run: the
  wall time, the test accuracy, the time to 70% validation accuracy (the first epoch's
  progress line at or above it, timed from the command's start). Then the medians and
  their ratios, and the accuracy at ``--budget-s`` (the test accuracy of a run done by
  then; otherwise the validation accuracy of its last epoch done by then, marked).
- ``resnet20``: ResNet-20 (``spaces/resnet20.yaml``, its multi-step schedule compressed to
  ``--resnet20-epochs``) with and without :data:`RECIPE`, the same epochs: accuracy at
  (nearly) equal time; both times are printed.
- ``ablation``: each recipe key on its own, added to the quickstart before the recipe,
  at equal epochs: test accuracy and the change against the key off
  (``--ablation-images N``: on a random subset of N training images, a cheaper proxy). Keys that change only
  what is evaluated (``ema``, ``tta``) are measured on the base run's own weights (raw
  and averaged, each with and without test-time views), so they cost no training run.

On a GPU (``--device cuda``; refused where CUDA is missing): the time to 94% test
accuracy of ``spaces/cifar_fast.yaml`` against airbench94's published 3.29 s on an A100
scaled by the two GPUs' dense bf16 peaks, the seed 003 model's time to 94% and 95% with
the quick recipe before (``spaces/paper_se_443_quick.yaml``) and with :data:`RECIPE`, and
a small model's training images/s with and without ``train.cuda_graph``. These train on
the whole training set (train + val) and evaluate the test set after every epoch, as
DAWNBench timed its entries: the time is the trainer's own clock at the first epoch that
reaches the target (training plus every evaluation so far; the data already on the device).

Every figure is printed with the machine's load average, since other work on a shared
machine slows both sides, though not always alike.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from common import DEFAULT_ARCHIVE, REPO, machine_load

from search.config import Spec, Tta, parse_spec
from search.data import ImageDataset, TensorSplit, load_dataset
from search.models import build_model
from search.train import BatchFormat, EpochMetrics, EvalSetup, TrainOptions, evaluate, train

NEW_QUICKSTART = REPO / "spaces" / "quickstart.yaml"
OLD_QUICKSTART = REPO / "benchmarks" / "quickstart_before.yaml"
AIRBENCH94_A100_S = 3.29  # Jordan (2024), arXiv 2404.00498, Table 1
A100_BF16_TFLOPS = 312.0
# The recipe keys of spaces/quickstart.yaml, as spec overrides (dotted keys, YAML values)
# for any of our ResNets.
RECIPE: dict[str, Any] = {
    "train.tta": {"flip": True},
    "train.augment.flip": "alternating",
    "train.whiten_stem": "init",
}
# The quickstart's progressive resizing: 24 px for the first 4 of its 8 epochs.
SMALL_SIZE, SMALL_SHARE = 24, 1 / 2
EMA = {"decay": 0.99, "warmup_steps": 100}
# Each key on its own for the ablation; ``eval`` keys are read off the base run's weights.
ABLATION: list[tuple[str, dict[str, Any], str]] = [
    ("ema (decay 0.99, warm-up 100)", {"train.ema": EMA}, "eval"),
    ("tta: flip", {"train.tta": {"flip": True}}, "eval"),
    ("tta: flip + translate 1", {"train.tta": {"flip": True, "translate": 1}}, "eval"),
    ("augment.flip: alternating", {"train.augment.flip": "alternating"}, "train"),
    ("whiten_stem: init", {"train.whiten_stem": "init"}, "train"),
    ("whiten_stem: frozen", {"train.whiten_stem": "frozen"}, "train"),
    ("batchnorm.frozen_scale", {"model.batchnorm": {"frozen_scale": True}}, "train"),
    ("batchnorm.momentum 0.4", {"model.batchnorm": {"momentum": 0.4}}, "train"),
    ("label_smoothing 0.2 (from 0.1)", {"train.label_smoothing": 0.2}, "train"),
    ("zero_init_residual", {"model.zero_init_residual": True}, "train"),
    ("batch 512, lr_scaling linear", {"train.batch_size": 512, "train.lr_scaling": {"reference_batch": 256}}, "train"),
    ("batch 512, no lr scaling", {"train.batch_size": 512}, "train"),
    # At the base's cost instead of its epochs: 6 epochs, the first 3 at 24 px (each about
    # 0.65 of a 32 px epoch on the CPU, measured) cost about 5 epochs at 32 px.
    (
        "progressive_resize 24 px: 6 epochs, the first 3 small",
        {"train.epochs": 6, "train.progressive_resize": {"size": SMALL_SIZE, "epochs": 3}},
        "train",
    ),
]
PROGRESS = re.compile(r"epoch\s+(\d+)/(\d+).*val_acc\s+([\d.]+)%")


def recipe_for(epochs: int) -> dict[str, Any]:
    """:data:`RECIPE` with progressive resizing over the quickstart's share of ``epochs``."""
    small = min(epochs - 1, round(epochs * SMALL_SHARE))
    return RECIPE | ({"train.progressive_resize": {"size": SMALL_SIZE, "epochs": small}} if small else {})


def load_with(path: Path, overrides: dict[str, Any]) -> Spec:
    """The spec at ``path`` with ``overrides`` (dotted keys) set, parsed as a spec file is."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    for dotted, value in overrides.items():
        node = doc
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return parse_spec(yaml.safe_dump(doc, sort_keys=False), str(path))


# --------------------------------------------------------------------------- CPU: end to end


@dataclass(frozen=True)
class EndToEnd:
    """One ``resnet-search train`` run: wall time, test accuracy, and when each epoch's line came."""

    wall_s: float
    test_acc: float
    epochs: list[tuple[float, float]]  # (seconds since the start, validation accuracy)

    def time_to(self, target: float) -> float:
        return next((t for t, acc in self.epochs if acc >= target), math.nan)

    def accuracy_at(self, budget_s: float) -> str:
        if self.wall_s <= budget_s:
            return f"{self.test_acc:.2%} test"
        done = [acc for t, acc in self.epochs if t <= budget_s]
        return f"{done[-1]:.2%} val (unfinished)" if done else "no epoch done"


def run_train_command(spec: Path, data_dir: str) -> EndToEnd:
    """``resnet-search train SPEC`` in a temporary folder with an empty data cache; its figures."""
    with tempfile.TemporaryDirectory(prefix="resnet-search-tta-") as folder:
        work = Path(folder)
        env = {**os.environ, "RESNET_SEARCH_CACHE": str(work / "cache"), "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "search.cli", "train", str(spec), "--data-dir", data_dir]
        command += ["--out", str(work / "run"), "--device", "cpu"]
        start = time.perf_counter()
        epochs: list[tuple[float, float]] = []
        lines: list[str] = []
        with subprocess.Popen(
            command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as process:
            assert process.stdout is not None
            for line in process.stdout:
                lines.append(line)
                match = PROGRESS.search(line)
                if match:
                    epochs.append((time.perf_counter() - start, float(match.group(3)) / 100))
        wall = time.perf_counter() - start
        if process.returncode != 0:
            raise SystemExit(f"resnet-search train failed (exit {process.returncode}):\n{''.join(lines)}")
        metrics = yaml.safe_load((work / "run" / "metrics.json").read_text(encoding="utf-8"))
    return EndToEnd(wall, float(metrics["test_acc"]), epochs)


def quickstart_part(args: argparse.Namespace) -> None:
    """New and old quickstart end to end, taking turns; medians and ratios."""
    print(f"== quickstart end to end, {args.runs} runs each, empty data cache every run", flush=True)
    runs: dict[str, list[EndToEnd]] = {"new": [], "old": []}
    for index in range(args.runs):
        for name, spec in (("new", NEW_QUICKSTART), ("old", OLD_QUICKSTART)):
            run = run_train_command(spec, args.data_dir)
            runs[name].append(run)
            print(
                f"  run {index + 1} {name}: {run.wall_s:.1f} s, test {run.test_acc:.2%}, "
                f"70% val at {run.time_to(0.70):.1f} s; {machine_load()}",
                flush=True,
            )
    summary = {}
    for name, results in runs.items():
        wall = statistics.median(r.wall_s for r in results)
        acc = statistics.median(r.test_acc for r in results)
        to70 = statistics.median(r.time_to(0.70) for r in results)
        summary[name] = (wall, acc, to70)
        at_budget = ", ".join(r.accuracy_at(args.budget_s) for r in results)
        print(
            f"  {name}: median {wall:.1f} s end to end, test {acc:.2%}, time to 70% {to70:.1f} s; "
            f"at {args.budget_s:.0f} s: {at_budget}"
        )
    (nw, na, n70), (ow, oa, o70) = summary["new"], summary["old"]
    print(
        f"  ratios (old / new): time to 70% {o70 / n70:.2f}x, end to end {ow / nw:.2f}x; "
        f"test accuracy {na - oa:+.2%} (new - old)"
    )


# --------------------------------------------------------------------------- CPU: in process


def train_and_test(spec: Spec, data: ImageDataset, epochs: int | None = None, checkpoint: Path | None = None) -> Any:
    """Train a fixed spec's config on ``data.train`` and test it (its checkpoint written if asked)."""
    return train(spec.fixed(), data, TrainOptions(evaluate_test=True, checkpoint_path=checkpoint), epochs=epochs)


def seconds(result: Any) -> float:
    """A run's training time: its epochs with their validations."""
    return float(result.train_time_s)


def resnet20_part(args: argparse.Namespace, data: ImageDataset) -> None:
    """ResNet-20 with and without the recipe at the same epochs (nearly the same time)."""
    e = args.resnet20_epochs
    # The paper's schedule (LR / 10 at 50% and 75%) compressed to the epochs run.
    base = {"train.epochs": e, "train.scheduler": {"name": "multistep", "milestones": [e // 2, (3 * e) // 4]}}
    path = REPO / "spaces" / "resnet20.yaml"
    print(f"== ResNet-20, {e} epochs, {args.runs} runs each", flush=True)
    for name, overrides in (("without the recipe", base), ("with the recipe", base | recipe_for(e))):
        accs, times = [], []
        for seed in range(args.runs):
            result = train_and_test(load_with(path, overrides | {"train.seed": seed}), data)
            accs.append(result.test_acc)
            times.append(seconds(result))
        print(
            f"  {name}: test {statistics.median(accs):.2%} (runs: {', '.join(f'{a:.2%}' for a in accs)}), "
            f"{statistics.median(times):.1f} s; {machine_load()}",
            flush=True,
        )


def ablation_part(args: argparse.Namespace, data: ImageDataset) -> None:
    """Each key on its own against the quickstart before the recipe, at equal epochs."""
    epochs = args.ablation_epochs
    if args.ablation_images:  # a cheaper proxy: a random subset of the training split
        keep = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[: args.ablation_images]
        data = replace(data, train=TensorSplit(data.train.images[keep], data.train.labels[keep]))
    print(
        f"== ablation: each key added to {OLD_QUICKSTART.name}, {epochs} epochs on {len(data.train):,} "
        f"training images, seed 0",
        flush=True,
    )
    # The base run keeps a weight average (which changes nothing in training) and writes
    # its checkpoint, which holds the raw weights too: one run gives both.
    base_spec = load_with(OLD_QUICKSTART, {"train.ema": EMA})
    with tempfile.TemporaryDirectory(prefix="resnet-search-ablation-") as folder:
        checkpoint = Path(folder) / "checkpoint.pt"
        base = train_and_test(base_spec, data, epochs, checkpoint)
        raw = build_model(base_spec.fixed().model, 32)
        raw.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    fmt = BatchFormat(torch.device("cpu"), torch.tensor(data.mean), torch.tensor(data.std), False, None)

    def test_acc(model: torch.nn.Module, tta: Tta) -> float:
        model = model.to(memory_format=torch.contiguous_format)
        return evaluate(model, data.test, fmt, EvalSetup(data.num_classes, batch_size=1000, tta=tta)).acc

    raw_acc = test_acc(raw, Tta())
    evaluated = {
        "ema (decay 0.99, warm-up 100)": test_acc(base.model, Tta()),
        "tta: flip": test_acc(raw, Tta(flip=True)),
        "tta: flip + translate 1": test_acc(raw, Tta(flip=True, translate=1)),
    }
    rows = [("(none: the base run)", raw_acc, seconds(base))]
    for label, overrides, kind in ABLATION:
        if kind == "eval":
            rows.append((label, evaluated[label], seconds(base)))
            continue
        own_epochs = "train.epochs" in overrides  # a row that sets its epochs keeps them
        result = train_and_test(load_with(OLD_QUICKSTART, overrides), data, None if own_epochs else epochs)
        rows.append((label, result.test_acc, seconds(result)))
        print(f"  {label}: test {result.test_acc:.2%}, {seconds(result):.1f} s; {machine_load()}", flush=True)
    print("| key | test accuracy | change vs off | training seconds |")
    print("| --- | --- | --- | --- |")
    for label, acc, train_s in rows:
        print(f"| {label} | {acc:.2%} | {acc - raw_acc:+.2%} | {train_s:.1f} |")


# --------------------------------------------------------------------------- GPU


def first_reaching(history: list[EpochMetrics], target: float) -> EpochMetrics | None:
    """The first epoch whose (test) accuracy reaches ``target``."""
    return next((m for m in history if m.val_acc >= target), None)


def race(spec: Spec, data_dir: str, targets: tuple[float, ...]) -> dict[float, float]:
    """Train on train + val, test every epoch, on CUDA; seconds to each target (NaN: not reached)."""
    data = load_dataset(spec.data, data_dir=data_dir, download=False)
    on_test = replace(data, val=data.test)
    result = train(spec.fixed(), on_test, TrainOptions(device="cuda", train_split=data.train_plus_val()))
    seconds = {}
    for target in targets:
        hit = first_reaching(result.history, target)
        seconds[target] = hit.elapsed_s - result.compile_time_s if hit else math.nan
    print(f"    final test {result.final_val_acc:.2%} after {result.train_time_s:.1f} s", flush=True)
    return seconds


def gpu_part(args: argparse.Namespace) -> None:
    """cifar_fast's time to 94%, seed 003's to 94% and 95% before/after the recipe, CUDA-graph images/s."""
    name = torch.cuda.get_device_name()
    peak = args.peak_tflops or _peak_tflops(name)
    scaled = AIRBENCH94_A100_S * A100_BF16_TFLOPS / peak if peak else math.nan
    print(f"== GPU: {name}; airbench94 scaled to it by bf16 peak ({peak} TFLOPS): {scaled:.2f} s", flush=True)
    fast = race(load_with(REPO / "spaces" / "cifar_fast.yaml", {}), args.data_dir, (0.94,))[0.94]
    print(f"  cifar_fast.yaml: 94% in {fast:.1f} s = {fast / scaled:.1f}x scaled airbench94 (goal <= 3x)")
    quick = REPO / "spaces" / "paper_se_443_quick.yaml"
    before = race(load_with(quick, {}), args.data_dir, (0.94, 0.95))
    epochs = load_with(quick, {}).fixed().train.epochs
    after = race(load_with(quick, recipe_for(epochs)), args.data_dir, (0.94, 0.95))
    for target in (0.94, 0.95):
        print(
            f"  seed 003 to {target:.0%}: before {before[target]:.1f} s, with the recipe {after[target]:.1f} s "
            f"({before[target] / after[target]:.2f}x)"
        )
    data = load_dataset(load_with(NEW_QUICKSTART, {}).data, data_dir=args.data_dir, download=False)
    for graph in (False, True):
        spec = load_with(NEW_QUICKSTART, {"train.cuda_graph": graph, "train.epochs": 3})
        result = train(spec.fixed(), data, TrainOptions(device="cuda"))
        print(f"  quickstart model, cuda_graph {graph}: {result.history[-1].images_per_s:,.0f} images/s (epoch 3)")


def _peak_tflops(name: str) -> float | None:
    """Dense bf16 tensor-core peaks (vendor data sheets) of the GPUs we know."""
    table = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}
    return next((v for k, v in table.items() if k in name), None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--parts", default="quickstart,resnet20,ablation", help="CPU parts, comma-separated")
    parser.add_argument("--runs", type=int, default=3, help="runs of each side (the median counts)")
    parser.add_argument("--data-dir", default=str(DEFAULT_ARCHIVE), help="CIFAR-10 folder or archive")
    parser.add_argument("--budget-s", type=float, default=300.0, help="the end-to-end budget (5 minutes)")
    parser.add_argument("--resnet20-epochs", type=int, default=4)
    parser.add_argument("--ablation-epochs", type=int, default=5)
    parser.add_argument("--ablation-images", type=int, help="ablate on a random subset of the training split")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the in-process parts")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak (default: a known table)")
    args = parser.parse_args(argv)
    print(f"{machine_load()}; torch {torch.__version__}", flush=True)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda: this machine has no CUDA device (torch.cuda.is_available() is False)")
        gpu_part(args)
        return
    torch.set_num_threads(args.threads)
    parts = set(args.parts.split(","))
    if "quickstart" in parts:
        quickstart_part(args)
    if parts & {"resnet20", "ablation"}:
        data = load_dataset(load_with(OLD_QUICKSTART, {}).data, data_dir=args.data_dir, download=False)
        if "resnet20" in parts:
            resnet20_part(args, data)
        if "ablation" in parts:
            ablation_part(args, data)


if __name__ == "__main__":
    main()
