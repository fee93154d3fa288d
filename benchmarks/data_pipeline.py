"""Images/s of our batched pipeline vs torchvision's per-image DataLoader, same data, same run.

Ours: the training set is one uint8 tensor; each batch of 512 is cropped (pad 4, reflect),
flipped and normalized by :func:`search.data.augment_batch` + :func:`search.data.normalize`.
Theirs: ``DataLoader(num_workers=2)`` applying RandomCrop(32, 4, reflect) /
RandomHorizontalFlip / ToTensor / Normalize to one image at a time, once over JPEG files
(``ImageFolder``, the usual setup) and once over the same uint8 tensor (no decoding).

    python benchmarks/data_pipeline.py [--data-dir D] [--images 20000]

The default data is the shared CIFAR-10 JPEG archive, extracted and decoded into the user
cache by :func:`search.data.load_dataset` on the first run. Worker start-up is excluded
from the DataLoader timings (one batch is drawn before the clock starts), which favours them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets, transforms

from search.config import Augment, DataConfig
from search.data import augment_batch, dataset_root, load_dataset, normalize

DEFAULT_ARCHIVE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


class UInt8Images(Dataset):
    """Per-image access to a uint8 ``N x 3 x H x W`` tensor, for the tensor-backed baseline."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: transforms.Compose) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[i]), int(self.labels[i])


def time_ours(images: torch.Tensor, count: int, batch_size: int, mean, std) -> float:
    """Images/s of augment_batch + normalize over ``count`` images in batches."""
    gen = torch.Generator().manual_seed(0)
    augment = Augment(crop_padding=4, padding_mode="reflect", flip=True)
    normalize(augment_batch(images[:batch_size], augment, gen), mean, std)  # warm-up
    start = time.perf_counter()
    done = 0
    while done < count:
        batch = images[done % len(images) :][:batch_size]
        x = normalize(augment_batch(batch, augment, gen), mean, std)
        done += len(x)
    return done / (time.perf_counter() - start)


def time_loader(dataset: Dataset, count: int, batch_size: int, workers: int) -> float:
    """Images/s of a shuffling DataLoader over ``count`` images, its first batch untimed."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True)
    it = iter(loader)
    next(it)  # start the workers before the clock
    start = time.perf_counter()
    done = 0
    while done < count:
        try:
            x, _ = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        done += len(x)
    return done / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir", default=str(DEFAULT_ARCHIVE), help="CIFAR-10 folder or archive (class folders or pickles)"
    )
    parser.add_argument("--images", type=int, default=20_000, help="images timed per pipeline")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the baselines")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads for ours (1: one core against the baselines' two workers)"
    )
    args = parser.parse_args(argv)
    # One thread: each DataLoader worker also runs one torch thread, and on a busy machine
    # two OpenMP threads on 1.5 MB batches spend most of their time waiting for each other.
    torch.set_num_threads(args.threads)

    config = DataConfig(dataset="cifar10")
    start = time.perf_counter()
    data = load_dataset(config, data_dir=args.data_dir, download=False)
    print(f"load_dataset: {time.perf_counter() - start:.2f} s ({len(data.train)} train images, {data.image_size}px)")
    mean, std = data.mean, data.std
    per_image = [
        transforms.RandomCrop(data.image_size, padding=4, padding_mode="reflect"),
        transforms.RandomHorizontalFlip(),
    ]

    ours = time_ours(data.train.images, args.images, args.batch_size, mean, std)
    print(f"ours (augment_batch + normalize, batch {args.batch_size}, {args.threads} CPU thread): {ours:,.0f} images/s")

    rows = []
    root = dataset_root(config, data_dir=args.data_dir, download=False)
    if (root / "train").is_dir():  # class folders: the usual JPEG-decoding baseline
        to_float = [transforms.ToTensor(), transforms.Normalize(mean, std)]
        folder = datasets.ImageFolder(str(root / "train"), transform=transforms.Compose([*per_image, *to_float]))
        rows.append(("torchvision ImageFolder (JPEG decode per image)", folder))
    tensor_ds = UInt8Images(
        data.train.images,
        data.train.labels,
        transforms.Compose([*per_image, transforms.ConvertImageDtype(torch.float32), transforms.Normalize(mean, std)]),
    )
    rows.append(("torchvision per-image transforms over the uint8 tensor", tensor_ds))
    for name, dataset in rows:
        theirs = time_loader(dataset, args.images, args.batch_size, args.workers)
        print(f"{name}, {args.workers} workers: {theirs:,.0f} images/s -> ours is {ours / theirs:.1f}x")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
