"""The model folder of seed 003's SE-ResNet (``spaces/paper_se_443.yaml``, 4,697,742 params):
its size, the time to load it, ``predict``'s throughput and the export checks (docs/models.md).

The folder is trained for one epoch on a small balanced subset of CIFAR-10 (size, load time
and throughput do not depend on how well it learned). Load time is measured in fresh
processes (interpreter start and imports counted apart); throughput on CIFAR-10 test JPEG
files (decoding included) and on a uint8 tensor (the network alone).

    python benchmarks/model_folder.py [--data-dir ../shared/data/cifar10-jpeg.tar.gz] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from common import DEFAULT_ARCHIVE, REPO, machine_load

from search.config import load_spec
from search.data import load_dataset
from search.data.fingerprint import fingerprint, source_location
from search.outputs.export_model import export_model
from search.outputs.model import load_model
from search.train import TrainOptions, train
from search.train.model_folder import FolderContents, ModelSource, write_model_folder

SPEC = REPO / "spaces" / "paper_se_443.yaml"
SUBSET = 500  # training images (50 a class) for the one epoch
FILES = 1000  # test JPEGs for the files' throughput
LOAD_RUNS = 3


def make_folder(folder: Path, data_dir: str, device: str) -> tuple[Path, object]:
    spec = load_spec(SPEC)
    spec = replace(spec, data=replace(spec.data, train_subset=SUBSET, val_subset=SUBSET))
    trial = spec.fixed()
    trial = replace(trial, train=replace(trial.train, epochs=1))
    data = load_dataset(spec.data, data_dir=data_dir, download=False)
    started = time.perf_counter()
    result = train(trial, data, TrainOptions(device=device))
    print(f"trained 1 epoch on {SUBSET} images in {time.perf_counter() - started:.1f} s on {device}")
    record = fingerprint(data, source_location(spec.data, data_dir))
    write_model_folder(folder, result, FolderContents(spec, trial, data, ModelSource(data=record), device))
    return folder, data


def sizes(folder: Path) -> None:
    total = 0
    for path in sorted(folder.iterdir()):
        size = path.stat().st_size
        total += size
        print(f"  {path.name:<18} {size / 2**20:8.2f} MiB")
    print(f"  {'total':<18} {total / 2**20:8.2f} MiB")


def load_times(folder: Path, device: str) -> None:
    code = (
        "import time; t0 = time.perf_counter()\n"
        "import search; from search.outputs.model import load_model\n"
        "t1 = time.perf_counter()\n"
        f"load_model({str(folder)!r}, {device!r})\n"
        "t2 = time.perf_counter(); print(t1 - t0, t2 - t1)\n"
    )
    runs = []
    for _ in range(LOAD_RUNS):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        runs.append(tuple(map(float, out.split())))
    imports, loads = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
    print(f"  fresh process, median of {LOAD_RUNS}: imports {imports:.2f} s, load_model {loads:.3f} s")


def throughput(folder: Path, data_dir: str, device: str, data: object) -> None:
    from search.data import dataset_root

    model = load_model(folder, device)
    root = dataset_root(load_spec(SPEC).data, data_dir, download=False)
    files = sorted((root / "test").rglob("*.jpg"))[:FILES] or sorted(root.rglob("*.jpg"))[:FILES]
    model.predict_files(files[:64])  # warm-up
    started = time.perf_counter()
    predictions, errors = model.predict_files(files)
    seconds = time.perf_counter() - started
    assert not errors and len(predictions) == len(files)
    print(f"  {len(files)} JPEG files (decode + resize + network): {len(files) / seconds:,.0f} images/s")
    batch = data.test.images[:FILES]  # type: ignore[attr-defined]
    model.predict(batch[:64])
    started = time.perf_counter()
    model.predict(batch)
    seconds = time.perf_counter() - started
    print(f"  {len(batch)} images as a uint8 tensor (network only): {len(batch) / seconds:,.0f} images/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_ARCHIVE))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {machine_load()}")
    with tempfile.TemporaryDirectory() as tmp:
        folder, data = make_folder(Path(tmp) / "se_resnet_443", args.data_dir, args.device)
        info = json.loads((folder / "model.json").read_text())
        print(f"model folder of {SPEC.name}: {info['params']:,} params, {info['flops']:,} FLOPs")
        sizes(folder)
        print("load time:")
        load_times(folder, args.device)
        print(f"predict throughput on {args.device}:")
        throughput(folder, args.data_dir, args.device, data)
        print("exports (checked against the eager model):")
        for fmt in ("torchscript", "onnx"):
            started = time.perf_counter()
            check = export_model(folder, format=fmt)
            size = check.path.stat().st_size / 2**20
            print(f"  {check.line()}; {size:.1f} MiB, {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
