"""Training images/s of our trainer vs a plain PyTorch loop: same model, batch, steps and threads.

Run: ``python benchmarks/trainer.py [--data-dir D] [--models quickstart,resnet20,paper_se_443]
[--rounds N] [--steps N] [--batch-size B] [--compile] [--cuda-graph] [--profile] [--accuracy]
[--device cpu|cuda]``.

Ours: :func:`search.train.train` on the uint8 in-memory dataset (whole-batch augmentation,
``channels_last: auto``). Baseline: the loop a user writes from the PyTorch tutorials: a
``DataLoader`` with 2 workers over a dataset that applies RandomCrop(32, padding 4) +
RandomHorizontalFlip + ToTensor + Normalize to one image at a time, the fp32 model in the
default (contiguous) memory format, and a plain SGD loop with the same optimizer, LR
schedule, label smoothing and gradient clipping. Its dataset holds the uint8 images in
memory and converts each to PIL, as ``torchvision.datasets.CIFAR10`` does
(``--baseline-data jpeg``: ``ImageFolder`` over the JPEG files, decoded every epoch).

Both train the same config with the same batch size for the same steps on 2 torch threads
(the baseline's workers run one thread each, the DataLoader default). Each trains twice
the timed steps: the first half warms up (oneDNN's kernel choice, the allocator, the
workers), the second half is timed. The baseline's loader holds more batches than it
serves, so its workers are busy through the timed half, as in a long run. Ours and the
baseline take turns, round by round, in one process, and each side's fastest round counts
(as ``timeit`` does: the least disturbed by other work on the machine); every round's
figures are printed too, and the machine's load. Under load from elsewhere the ratio is
not to be trusted: the scheduler gives the baseline's four busy threads (two in its
workers) a larger share of the cores than ours' two.

``--profile`` profiles ours' timed epoch once more (torch.profiler, top operators).
``--accuracy`` also trains both on a training subset for a few epochs, same recipe and
seeds, and prints both validation accuracies: they should agree within seed-to-seed noise.
``--device cuda`` runs the same on a GPU and adds the model FLOPs utilization (MFU) of
each against the GPU's dense bf16 peak; it refuses where CUDA is missing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from common import DEFAULT_ARCHIVE, REPO, machine_load
from PIL import Image
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets, transforms

from search.budget import fast_count
from search.config import Augment, DataConfig, TrialConfig, load_spec
from search.data import ImageDataset, TensorSplit, dataset_root, load_dataset
from search.models import build_model
from search.train import EpochMetrics, TrainOptions, lr_factor, train

TARGET_SPEEDUP = 1.5


@dataclass(frozen=True)
class Case:
    """A model to time: its fixed spec, how many steps to time (as many warm up first), how often."""

    spec: str
    timed_steps: int
    rounds: int


# Step counts keep each round under a minute and a half on 2 cores: seed 003's SE-ResNet
# trains about 20 images/s there, the quickstart model about 40x faster.
CASES = {
    # The quickstart model and recipe as first measured (before the fast-training recipe).
    "quickstart": Case("benchmarks/quickstart_before.yaml", 16, 3),
    "resnet20": Case("spaces/resnet20.yaml", 12, 3),
    "paper_se_443": Case("spaces/paper_se_443.yaml", 3, 2),
}
EVAL_IMAGES = 32  # ours validates after every epoch: a tiny split keeps that cheap
PROFILE_ROWS = 12
EXTRA_BATCHES = 8  # the baseline's loader holds this many unserved batches (workers keep busy)

# Dense bf16 tensor-core peaks (NVIDIA data sheets), matched against the device name.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12}


def load_case(name: str, args: argparse.Namespace | None = None) -> TrialConfig:
    """The fixed config of a case's spec, with ``--batch-size``, ``--compile`` and ``--cuda-graph`` applied."""
    trial = load_spec(REPO / CASES[name].spec).fixed()
    if args is None:
        return trial
    batch_size = args.batch_size or trial.train.batch_size
    cfg = replace(trial.train, batch_size=batch_size, compile=args.compile, cuda_graph=args.cuda_graph)
    return replace(trial, train=cfg)


def case_steps(name: str, args: argparse.Namespace) -> int:
    """How many steps to time: ``--steps``, else the case's CPU-sized count."""
    return args.steps or CASES[name].timed_steps


def random_subset(split: TensorSplit, count: int, seed: int = 0) -> TensorSplit:
    """``count`` images drawn without replacement: all classes, unlike a prefix of a class-sorted split."""
    if count > len(split):
        raise SystemExit(f"asked for {count} training images, the split has {len(split)}")
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:count]
    return TensorSplit(split.images[idx], split.labels[idx])


def sync(device: torch.device) -> None:
    """Wait for the device's queue: a clock read on CUDA needs it drained."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- ours


def time_ours(
    trial: TrialConfig, data: ImageDataset, steps: int, device: torch.device, on_warm: Callable[[], None] = lambda: None
) -> float:
    """Images/s of :func:`search.train.train`'s second epoch of ``steps`` steps (the first warms up).

    The figure is the trainer's own for the epoch (its validation left out). ``on_warm`` is
    called at the end of epoch 1.
    """
    split = random_subset(data.train, steps * trial.train.batch_size)
    small = replace(data, val=TensorSplit(data.val.images[:EVAL_IMAGES], data.val.labels[:EVAL_IMAGES]))

    def at_epoch_end(metrics: EpochMetrics) -> None:
        if metrics.epoch == 1:
            on_warm()

    result = train(trial, small, TrainOptions(device=device, train_split=split, callback=at_epoch_end), epochs=2)
    return result.history[-1].images_per_s


def profile_ours(trial: TrialConfig, data: ImageDataset, steps: int, device: torch.device) -> str:
    """torch.profiler's top operators over ours' timed epoch, and where the time goes.

    On the CPU: the convolutions' share of the self CPU time. On CUDA: the GPU's busy
    share of the epoch's wall time (kernel time over wall time; the rest is the GPU
    waiting for the host to launch work).
    """
    on_cuda = device.type == "cuda"
    profiler = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA] if on_cuda else [ProfilerActivity.CPU])
    started: list[float] = []

    def begin() -> None:
        sync(device)
        started.append(time.perf_counter())
        profiler.start()

    time_ours(trial, data, steps, device, on_warm=begin)
    sync(device)
    wall_us = (time.perf_counter() - started[0]) * 1e6
    profiler.stop()
    events = profiler.key_averages()
    if on_cuda:
        busy = sum(e.self_device_time_total for e in events)
        return (
            events.table(sort_by="self_device_time_total", row_limit=PROFILE_ROWS)
            + f"GPU kernels busy {busy / wall_us:.0%} of the timed epoch's wall time ({wall_us / 1e6:.2f} s)"
        )
    total = sum(e.self_cpu_time_total for e in events)
    convolutions = sum(e.self_cpu_time_total for e in events if "convolution" in e.key)
    return (
        events.table(sort_by="self_cpu_time_total", row_limit=PROFILE_ROWS)
        + f"convolution kernels (forward + backward): {convolutions / total:.0%} of the self CPU time"
    )


# --------------------------------------------------------------------------- the baseline


class InMemoryImages(Dataset):
    """uint8 images held in memory, each converted to PIL and transformed on access.

    What ``torchvision.datasets.CIFAR10`` does with its arrays.
    """

    def __init__(self, split: TensorSplit, transform: transforms.Compose) -> None:
        self.images = split.images.permute(0, 2, 3, 1).contiguous().numpy()  # N x H x W x 3, as PIL wants
        self.labels = split.labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def per_image_transforms(augment: Augment | None, size: int, mean, std) -> transforms.Compose:
    """torchvision's per-image pipeline for ``augment`` (None: evaluation, no augmentation)."""
    steps: list = []
    if augment is not None:
        if augment.cutout:
            raise SystemExit("the baseline has no cutout; pick a recipe without it")
        if augment.crop_padding:
            mode = {"reflect": "reflect", "zeros": "constant"}[augment.padding_mode]
            steps.append(transforms.RandomCrop(size, padding=augment.crop_padding, padding_mode=mode))
        if augment.flip:
            steps.append(transforms.RandomHorizontalFlip())
    return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(mean, std)])


def loader(
    dataset: Dataset, batch_size: int, workers: int, seed: int, *, shuffle: bool, device: torch.device
) -> DataLoader:
    """The usual DataLoader: for training shuffled in a seeded order, the last partial batch dropped (as ours)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=shuffle,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )


class PlainLoop:
    """The baseline's model, SGD, LR schedule and loss, stepped as the PyTorch tutorials do.

    The schedule is ours (:func:`search.train.lr_factor` through ``LambdaLR``), so the two
    runs differ in their loops, not in their recipes.
    """

    def __init__(self, trial: TrialConfig, steps_per_epoch: int, epochs: int, device: torch.device) -> None:
        cfg = trial.train
        if cfg.optimizer.name != "sgd":
            raise SystemExit(f"the baseline is an SGD loop; {cfg.optimizer.name} is not supported")
        torch.manual_seed(cfg.seed)
        self.device = device
        self.cfg = cfg
        self.model = build_model(trial.model, 32).to(device)
        opt = cfg.optimizer
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=opt.lr,
            momentum=opt.momentum,
            nesterov=opt.nesterov and opt.momentum > 0,
            weight_decay=opt.weight_decay,
        )
        total = steps_per_epoch * epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(cfg.scheduler, s, steps_per_epoch, total)
        )
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One training step on a batch; returns the loss."""
        self.model.train()
        images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
        loss = self.criterion(self.model(images), labels)
        self.optimizer.zero_grad()
        loss.backward()
        if self.cfg.grad_clip is not None:
            clip = nn.utils.clip_grad_norm_ if self.cfg.grad_clip_mode == "norm" else nn.utils.clip_grad_value_
            clip(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return loss

    @torch.no_grad()
    def accuracy(self, batches: DataLoader) -> float:
        """Top-1 accuracy over a loader, in eval mode."""
        self.model.eval()
        correct = total = 0
        for images, labels in batches:
            logits = self.model(images.to(self.device))
            correct += int((logits.argmax(1).cpu() == labels).sum())
            total += len(labels)
        return correct / total


def baseline_dataset(kind: str, split: TensorSplit, augment: Augment, data_dir: str, mean, std) -> Dataset:
    """The baseline's training images: in memory (as torchvision's CIFAR10) or JPEG files (ImageFolder)."""
    transform = per_image_transforms(augment, split.images.shape[-1], mean, std)
    if kind == "memory":
        return InMemoryImages(split, transform)
    root = dataset_root(DataConfig(dataset="cifar10"), data_dir=data_dir, download=False) / "train"
    folder = datasets.ImageFolder(str(root), transform=transform)
    picked = torch.randperm(len(folder), generator=torch.Generator().manual_seed(0))[: len(split)]
    return Subset(folder, picked.tolist())


def time_baseline(trial: TrialConfig, dataset: Dataset, steps: int, workers: int, device: torch.device) -> float:
    """Images/s of the plain loop over its last ``steps`` of ``2 * steps`` steps."""
    batch = trial.train.batch_size
    loop = PlainLoop(trial, 2 * steps, 1, device)
    batches = iter(loader(dataset, batch, workers, trial.train.seed, shuffle=True, device=device))
    for _ in range(steps):
        loop.step(*next(batches))
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        loss = loop.step(*next(batches))
    loss.item()  # the last step has finished
    seconds = time.perf_counter() - start
    del batches  # the workers stop here, not during the next measurement
    return steps * batch / seconds


# --------------------------------------------------------------------------- the comparisons


def mfu_note(trial: TrialConfig, images_per_s: float, device: torch.device, peak: float | None) -> str:
    """`` (MFU x%)`` on CUDA: training FLOPs (3 x forward, 2 per multiply-add) over the bf16 peak."""
    if device.type != "cuda" or peak is None:
        return ""
    macs = fast_count(trial.model, 32).flops  # fvcore's FLOPs are multiply-adds
    return f" (MFU {images_per_s * 3 * 2 * macs / peak:.1%})"


def gpu_peak(device: torch.device, override_tflops: float | None) -> float | None:
    """The dense bf16 peak of the GPU in FLOP/s (None on CPU or an unknown GPU)."""
    if device.type != "cuda":
        return None
    if override_tflops:
        return override_tflops * 1e12
    gpu = torch.cuda.get_device_name(device)
    peak = next((p for key, p in PEAK_BF16_FLOPS.items() if key in gpu), None)
    print(f"{gpu}: dense bf16 peak " + (f"{peak / 1e12:.0f} TFLOP/s" if peak else "unknown (pass --peak-tflops)"))
    return peak


def time_case(
    name: str, args: argparse.Namespace, data: ImageDataset, device: torch.device
) -> tuple[list[float], list[float]]:
    """Images/s of ours and of the baseline for one case, one figure per round each."""
    trial = load_case(name, args)
    steps = case_steps(name, args)
    dataset = baseline_dataset(
        args.baseline_data,
        random_subset(data.train, (2 * steps + EXTRA_BATCHES) * trial.train.batch_size),
        trial.train.augment,
        args.data_dir,
        data.mean,
        data.std,
    )
    ours: list[float] = []
    theirs: list[float] = []
    timers = [
        lambda: ours.append(time_ours(trial, data, steps, device)),
        lambda: theirs.append(time_baseline(trial, dataset, steps, args.workers, device)),
    ]
    for round_ in range(args.rounds or CASES[name].rounds):
        # Who goes first alternates, so that load from elsewhere that rises or falls
        # during a round does not always favour the same side.
        for timer in timers if round_ % 2 == 0 else timers[::-1]:
            timer()
    return ours, theirs


def compare_speed(args: argparse.Namespace, data: ImageDataset, device: torch.device) -> bool:
    """Time every case; print the fastest rounds of ours and of the baseline, and their ratio.

    Returns:
        Whether every ratio meets the target.
    """
    peak = gpu_peak(device, args.peak_tflops)
    all_met = True
    for name in args.models:
        trial = load_case(name, args)
        ours, theirs = time_case(name, args, data, device)
        ratio = max(ours) / max(theirs)
        all_met &= ratio >= TARGET_SPEEDUP
        print(
            f"{name}: batch {trial.train.batch_size}{', compiled' if trial.train.compile else ''}, "
            f"{case_steps(name, args)} timed steps, "
            f"best of {len(ours)}: ours {max(ours):,.1f} images/s{mfu_note(trial, max(ours), device, peak)}, "
            f"baseline {max(theirs):,.1f} images/s{mfu_note(trial, max(theirs), device, peak)} -> {ratio:.2f}x "
            f"(rounds, ours / baseline: {', '.join(f'{o:,.1f} / {t:,.1f}' for o, t in zip(ours, theirs))}); "
            f"{machine_load()}",
            flush=True,
        )
        if args.profile:
            print(profile_ours(trial, data, case_steps(name, args), device), flush=True)
    return all_met


def compare_accuracy(args: argparse.Namespace, data: ImageDataset, device: torch.device) -> None:
    """Train the quickstart model both ways on a subset, same recipe and seeds; print val accuracies."""
    base = load_case("quickstart")
    base = replace(base, train=replace(base.train, epochs=args.accuracy_epochs))
    split = random_subset(data.train, args.accuracy_images)
    steps_per_epoch = len(split) // base.train.batch_size
    train_set = InMemoryImages(split, per_image_transforms(base.train.augment, data.image_size, data.mean, data.std))
    val_batches = loader(
        InMemoryImages(data.val, per_image_transforms(None, data.image_size, data.mean, data.std)),
        1024,
        args.workers,
        0,
        shuffle=False,
        device=device,
    )
    ours, theirs = [], []
    for seed in args.seeds:
        trial = replace(base, train=replace(base.train, seed=seed))
        ours.append(train(trial, data, TrainOptions(device=device, train_split=split)).final_val_acc)
        loop = PlainLoop(trial, steps_per_epoch, args.accuracy_epochs, device)
        batches = loader(train_set, trial.train.batch_size, args.workers, seed, shuffle=True, device=device)
        for _ in range(args.accuracy_epochs):
            for images, labels in batches:
                loop.step(images, labels)
        theirs.append(loop.accuracy(val_batches))
        print(f"accuracy, seed {seed}: ours {ours[-1]:.2%}, baseline {theirs[-1]:.2%}", flush=True)
    print(
        f"quickstart model, {len(split)} training images, {args.accuracy_epochs} epochs, {len(data.val)} val images: "
        f"val accuracy ours {statistics.fmean(ours):.2%}, baseline {statistics.fmean(theirs):.2%} "
        f"(mean of {len(args.seeds)} seed(s); difference {statistics.fmean(ours) - statistics.fmean(theirs):+.2%})"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_ARCHIVE), help="CIFAR-10 folder or archive")
    parser.add_argument(
        "--models",
        type=lambda s: [m for m in s.split(",") if m],
        default=list(CASES),
        help=f"comma-separated, of {', '.join(CASES)} (empty: accuracy only)",
    )
    parser.add_argument("--rounds", type=int, help="rounds per model (the fastest counts; default 3, seed 003 2)")
    parser.add_argument("--steps", type=int, help="timed steps per round (default: each model's CPU-sized count)")
    parser.add_argument("--batch-size", type=int, help="overrides every model's batch size (e.g. to fill a GPU)")
    parser.add_argument("--compile", action="store_true", help="ours runs torch.compile (compile time not timed)")
    parser.add_argument("--cuda-graph", action="store_true", help="ours replays its step as a CUDA graph (CUDA only)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of both loops")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the baseline")
    parser.add_argument("--baseline-data", choices=("memory", "jpeg"), default="memory")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, for MFU (default: a known table)")
    parser.add_argument("--profile", action="store_true", help="also profile ours' timed epoch (one more run)")
    parser.add_argument("--accuracy", action="store_true", help="also compare validation accuracy (a few minutes)")
    parser.add_argument("--accuracy-images", type=int, default=10_000)
    parser.add_argument("--accuracy-epochs", type=int, default=3)
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1])
    args = parser.parse_args(argv)
    unknown = set(args.models) - set(CASES)
    if unknown:
        parser.error(f"unknown model(s) {', '.join(sorted(unknown))}; choose from {', '.join(CASES)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: this machine has no CUDA device (torch.cuda.is_available() is False)")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    data = load_dataset(DataConfig(dataset="cifar10"), data_dir=args.data_dir, download=False)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}; "
        f"baseline: {args.workers} DataLoader workers, {args.baseline_data} images; "
        f"target >= {TARGET_SPEEDUP}x; {machine_load()}",
        flush=True,
    )
    met = compare_speed(args, data, device)
    if args.accuracy:
        compare_accuracy(args, data, device)
    sys.stdout.flush()
    if not met:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
