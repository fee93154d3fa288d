"""Shared fixtures: a tiny generated image dataset, a data cache kept out of the user's home,
and the real services some tests need (PostgreSQL, a `ray start` cluster; see services.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from services import PostgresServer, RayCluster

# Distinct base colours, so that even a tiny model can learn the classes.
TINY_CLASSES = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 70, 230)}
TINY_TRAIN, TINY_TEST, TINY_SIZE = 12, 6, 32
REAL_CIFAR10 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def write_class_images(
    folder: Path,
    colour: tuple[int, int, int],
    count: int,
    rng: np.random.Generator,
    size: int = TINY_SIZE,
    suffix: str = ".png",
) -> None:
    """Write ``count`` noisy solid-colour RGB images into ``folder`` (made if missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        noise = rng.normal(0, 25, size=(size, size, 3))
        pixels = np.clip(np.asarray(colour, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:04d}{suffix}")


@pytest.fixture(scope="session")
def tiny_imagefolder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-class class-folder dataset: ``root/{train,test}/<class>/NNNN.png``, 12 + 6 images per class, 32x32.

    Made once per session; treat it as read-only.
    """
    root = tmp_path_factory.mktemp("tiny_imagefolder")
    rng = np.random.default_rng(0)
    for name, colour in TINY_CLASSES.items():
        write_class_images(root / "train" / name, colour, TINY_TRAIN, rng)
        write_class_images(root / "test" / name, colour, TINY_TEST, rng)
    return root


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_imagefolder: Path, _session_data_cache: Path) -> Path:
    """A model folder made by ``resnet-search train`` (1 epoch) on the tiny image folder; read-only."""
    root = tmp_path_factory.mktemp("model")
    (root / "fixed.yaml").write_text(
        "study: {name: fixed}\ndata: {dataset: imagefolder, val_fraction: 0.25}\n"
        "model: {num_classes: 3, stem: {width: 8}, stages: [{blocks: 1, width: 8}, {blocks: 1, width: 16}]}\n"
        "train: {epochs: 1, batch_size: 8, optimizer: {name: sgd, lr: 0.05}}\n"
    )
    args = ["train", "fixed.yaml", "--data-dir", str(tiny_imagefolder), "--out", "model", "--device", "cpu"]
    env = {**os.environ, "RESNET_SEARCH_CACHE": str(_session_data_cache)}
    trained = subprocess.run(
        [sys.executable, "-m", "search.cli", *args], cwd=root, capture_output=True, text=True, env=env
    )
    assert trained.returncode == 0, trained.stderr
    return root / "model"


@pytest.fixture(scope="session")
def _session_data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("resnet_search_cache")


@dataclass(frozen=True)
class RealCifar10:
    """The real CIFAR-10 as the session's first load left it: its cache, that load's seconds
    (extract and decode) and its dataset."""

    archive: Path
    cache: Path
    build_s: float
    first: object  # search.data.ImageDataset (imported late: collecting the tests stays light)


@pytest.fixture(scope="session")
def real_cifar10(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCifar10]:
    """The real CIFAR-10 (``../shared/data`` beside the repository), extracted and decoded once
    into a cache of the session's own, for every test that trains on it or loads it again."""
    if not REAL_CIFAR10.exists():
        pytest.skip(f"needs the real CIFAR-10 at {REAL_CIFAR10} (../shared/data beside the repository)")
    from search.config import DataConfig
    from search.data import load_dataset

    cache = tmp_path_factory.mktemp("real_cifar10_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RESNET_SEARCH_CACHE", str(cache))
        start = time.perf_counter()
        first = load_dataset(DataConfig(dataset="cifar10"), data_dir=REAL_CIFAR10, download=False)
        built = time.perf_counter() - start
    yield RealCifar10(REAL_CIFAR10, cache, built, first)
    shutil.rmtree(cache / "extracted", ignore_errors=True)  # 60k small files: not left to pytest's tmp cleanup


@pytest.fixture(autouse=True)
def _isolated_data_env(monkeypatch: pytest.MonkeyPatch, _session_data_cache: Path) -> None:
    """Keep every test's tensor cache out of ``~/.cache`` and ignore the caller's RESNET_SEARCH_DATA.

    The cache is shared by the session, so the tiny dataset is decoded once for all tests;
    a test that needs an empty cache sets ``RESNET_SEARCH_CACHE`` itself.
    """
    monkeypatch.setenv("RESNET_SEARCH_CACHE", str(_session_data_cache))
    monkeypatch.delenv("RESNET_SEARCH_DATA", raising=False)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module of tiny models (``pytestmark = usefixtures(...)``): batches
    of one or two images gain nothing from threads, and on a busy 2-core machine OpenMP's
    spinning threads make each small conv many times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the session's own; skips where PostgreSQL is not installed."""
    try:
        server = PostgresServer().start()
    except RuntimeError as error:
        pytest.skip(str(error))
    yield server
    server.close()


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """A Ray cluster started with ``ray start``: a head node and one worker node."""
    cluster = RayCluster().start()
    yield cluster
    cluster.close()
