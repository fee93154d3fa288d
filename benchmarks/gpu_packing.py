"""Aggregate throughput of small trials sharing one GPU vs the same trials one at a time.

Run: ``python benchmarks/gpu_packing.py [--models quickstart,resnet20] [--trials 4]
[--epochs 3] [--device cuda] [--data-dir D] [--images N] [--cuda-graph]``.

``quickstart`` is the quickstart model and recipe before the fast-training recipe
(``benchmarks/quickstart_before.yaml``), as first measured; ``--cuda-graph`` trains every
trial with ``train.cuda_graph`` (its step replayed as one CUDA graph).

Ray Tune runs each trial in its own worker process; with ``resources.gpu: 0.25`` it puts
four of them on one GPU at once. This benchmark does the same without Ray (whose wheel
is too large to carry to a lent GPU machine): ``--trials`` processes each train one
trial of a model with :func:`search.train.train` concurrently, against one process that
trains the same trials one after the other. Every process loads the data and builds its
CUDA context before a common start signal (Ray's workers are started and reused apart
from the trials), so the figure is training throughput: all training images of all
trials over the wall time from the start signal to the last trial's end. Per-epoch
validation (5,000 images) is part of every trial, as in a search.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from dataclasses import replace

import torch
from common import DEFAULT_ARCHIVE, REPO

from search.config import TrialConfig, load_spec
from search.data import TensorSplit, load_dataset
from search.train import TrainOptions, train

SPECS = {"quickstart": "benchmarks/quickstart_before.yaml", "resnet20": "spaces/resnet20.yaml"}
TARGET_RATIO = 2.0


def with_seed(trial: TrialConfig, seed: int, epochs: int, cuda_graph: bool = False) -> TrialConfig:
    """The trial with its own seed and a short run (its step a CUDA graph if asked)."""
    return replace(trial, train=replace(trial.train, seed=seed, epochs=epochs, cuda_graph=cuda_graph))


def worker(model: str, seeds: list[int], args: argparse.Namespace, start: mp.Barrier, out: mp.Queue) -> None:
    """Train one trial per seed, one after another, after everyone is ready; report images and times."""
    device = torch.device(args.device)
    spec = load_spec(REPO / SPECS[model])
    data = load_dataset(spec.data, data_dir=args.data_dir, download=False)
    split = data.train
    if args.images:
        split = TensorSplit(split.images[: args.images], split.labels[: args.images])
    torch.zeros(1, device=device)  # the CUDA context, before the start signal
    start.wait()
    began = time.time()
    images = 0
    for seed in seeds:
        trial = with_seed(spec.fixed(), seed, args.epochs, args.cuda_graph)
        result = train(trial, data, TrainOptions(device=device, train_split=split))
        batch = min(trial.train.batch_size, len(split.labels))  # every step is a full batch
        images += result.epochs_run * (len(split.labels) // batch) * batch
    out.put((began, time.time(), images))


def run(model: str, processes: int, trials: int, args: argparse.Namespace) -> tuple[float, float]:
    """Train ``trials`` trials in ``processes`` processes; returns (images/s over all, wall seconds)."""
    ctx = mp.get_context("spawn")  # CUDA cannot be used in a forked child
    start, out = ctx.Barrier(processes), ctx.Queue()
    seeds = [list(range(trials))[i::processes] for i in range(processes)]
    procs = [ctx.Process(target=worker, args=(model, s, args, start, out)) for s in seeds]
    for p in procs:
        p.start()
    reports = [out.get() for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode:
            raise SystemExit(f"a worker failed with exit code {p.exitcode}")
    wall = max(r[1] for r in reports) - min(r[0] for r in reports)
    return sum(r[2] for r in reports) / wall, wall


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=lambda s: s.split(","), default=list(SPECS))
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--data-dir", default=str(DEFAULT_ARCHIVE), help="CIFAR-10 folder or archive")
    parser.add_argument("--images", type=int, help="train on the first N images only (a smoke run)")
    parser.add_argument("--cuda-graph", action="store_true", help="every trial's step as a CUDA graph")
    args = parser.parse_args(argv)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"{args.trials} trials x {args.epochs} epochs per model on {name}; target >= {TARGET_RATIO}x", flush=True)
    for model in args.models:
        alone, alone_wall = run(model, 1, args.trials, args)
        packed, packed_wall = run(model, args.trials, args.trials, args)
        print(
            f"{model}: one at a time {alone:,.0f} images/s ({alone_wall:.1f} s), {args.trials} at once "
            f"{packed:,.0f} images/s ({packed_wall:.1f} s) -> {packed / alone:.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
