"""Images/s of our batched pipeline vs torchvision's per-image DataLoader, same data, same run.

Ours: the training set is one uint8 tensor; each batch of 512 is cropped (pad 4, reflect),
flipped and normalized by :func:`search.data.augment_batch` + :func:`search.data.normalize`.
Theirs: ``DataLoader(num_workers=2)`` applying RandomCrop(32, 4, reflect) /
RandomHorizontalFlip / ToTensor / Normalize to one image at a time, once over JPEG files
(``ImageFolder``, the usual setup) and once over the same uint8 tensor (no decoding).

    python benchmarks/data_pipeline.py [--data-dir D] [--images 20000]
    python benchmarks/data_pipeline.py --part stream   # streamed vs on-device batches, 32 and 128 px
    python benchmarks/data_pipeline.py --part cache [--build-images 20000]  # cache build rate, peak RAM

``--part stream``: images/s of a training epoch's batches (uint8 gather, augment, normalize; no
model) from a :class:`search.train.feed.TrainFeed` holding generated images in a memory-mapped
file, copied whole (``on_device: true``) or streamed from the map (``false``), on this CPU.
``--part cache``: the cache built from generated 224-px JPEGs, once the old way (every image
decoded into one array, then copied to N x 3 x H x W, then saved) and once ours (chunks written
straight to the images file), each in a subprocess that reports its peak RSS; the ratio is printed.
The old way is timed without the channel statistics it also computed (float64 chunks of 4,096
images: 4.9 GB more at 224 px), which makes its peak here a lower bound.

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
from search.data.placement import Decision
from search.data.splits import MappedSplit
from search.train.feed import TrainFeed

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


def time_feed(split: MappedSplit, on_device: bool, batch_size: int, device: torch.device) -> float:
    """Images/s of one epoch of a feed's batches on ``device``, augmented and normalized (the
    loop minus the model); the copy of an on-device set is not counted (the caller times it)."""
    feed = TrainFeed(split, device, Decision(on_device, "benchmark"))
    augment = Augment(crop_padding=4, padding_mode="reflect", flip=True)
    gen = torch.Generator(device=device).manual_seed(0)
    perm = torch.randperm(len(feed), generator=gen, device=device)
    start = time.perf_counter()
    done = 0
    for _, images, _ in feed.batches(perm, batch_size):
        normalize(augment_batch(images, augment, gen), (0.5,) * 3, (0.25,) * 3)
        done += len(images)
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the device's queued work counts
    return done / (time.perf_counter() - start)


def stream_part(batch_size: int, device: torch.device) -> None:
    """Streamed vs on-device batches at 32 and 128 px on ``device``, from a generated memory-mapped file."""
    import tempfile

    for side, count in ((32, 20_000), (128, 4_000)):
        with tempfile.TemporaryDirectory() as folder:
            raw = Path(folder) / "images.u8"
            shape = (count, 3, side, side)
            gen = torch.Generator().manual_seed(0)
            raw.write_bytes(torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen).numpy().tobytes())
            source = torch.from_file(str(raw), shared=False, size=count * 3 * side * side, dtype=torch.uint8)
            split = MappedSplit(source.view(shape), torch.arange(count), torch.zeros(count, dtype=torch.int64))
            t0 = time.perf_counter()
            whole = time_feed(split, True, batch_size, device)
            copy_s = time.perf_counter() - t0
            streamed = time_feed(split, False, batch_size, device)
            print(
                f"{device.type}, {side}px, {count:,} images, batch {batch_size}: on device {whole:,.0f} images/s "
                f"(copy and epoch {copy_s:.1f} s), streamed {streamed:,.0f} images/s "
                f"-> streamed/on-device {streamed / whole:.2f}"
            )


def write_jpegs(folder: Path, count: int, side: int = 224) -> None:
    """``count`` smooth generated JPEGs of ``side`` px in two class folders (fast to encode)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        cls = folder / f"class{i % 2}"
        cls.mkdir(parents=True, exist_ok=True)
        small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        small.resize((side, side), Image.Resampling.BILINEAR).save(cls / f"{i:06d}.jpg", quality=90)


OLD_BUILD = """
import resource, sys, time, torch
from pathlib import Path
from search.data.decode import decode_images, to_nchw
files = sorted(Path(sys.argv[1]).rglob("*.jpg"))
start = time.perf_counter()
decoded = decode_images(files, 224)          # every chunk held, then concatenated
images = to_nchw(decoded.images)             # and copied to N x 3 x H x W
torch.save({"train_images": images}, sys.argv[2])
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

NEW_BUILD = """
import resource, sys, time
from search.config import DataConfig
from search.data import load_dataset
start = time.perf_counter()
load_dataset(DataConfig(dataset="imagefolder", image_size=224), data_dir=sys.argv[1], download=False)
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def cache_part(count: int) -> None:
    """Peak RSS and rate of building the cache of ``count`` 224-px JPEGs, the old way and ours."""
    import os
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "jpegs"
        t0 = time.perf_counter()
        write_jpegs(root, count)
        print(f"generated {count:,} 224-px JPEGs in {time.perf_counter() - t0:.0f} s")
        env = {**os.environ, "RESNET_SEARCH_CACHE": str(Path(folder) / "cache")}
        results = {}
        for name, script in (
            ("old build (one array, then a copy)", OLD_BUILD),
            ("ours (chunks to the file)", NEW_BUILD),
        ):
            args = [sys.executable, "-c", script, str(root), str(Path(folder) / "old.pt")]
            out = subprocess.run(args, env=env, capture_output=True, text=True, check=True).stdout.split()
            seconds, peak_kb = float(out[-2]), int(out[-1])
            results[name] = peak_kb
            gb = count * 3 * 224 * 224 / 1e9
            print(
                f"{name}: {count / seconds:,.0f} images/s, peak RSS {peak_kb / 2**20:.2f} GiB ({gb:.2f} GB of pixels)"
            )
        old, new = results.values()
        print(f"peak RSS old/ours: {old / new:.1f}x")


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
    parser.add_argument("--part", choices=("loaders", "stream", "cache"), default="loaders")
    parser.add_argument("--build-images", type=int, default=20_000, help="generated 224-px images of --part cache")
    parser.add_argument("--device", default="cpu", help="where --part stream's batches go (cpu, cuda)")
    args = parser.parse_args(argv)
    # One thread: each DataLoader worker also runs one torch thread, and on a busy machine
    # two OpenMP threads on 1.5 MB batches spend most of their time waiting for each other.
    torch.set_num_threads(args.threads)
    if args.part == "stream":
        return stream_part(args.batch_size, torch.device(args.device))
    if args.part == "cache":
        return cache_part(args.build_images)

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
