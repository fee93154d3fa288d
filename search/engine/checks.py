"""What is checked before a run writes to its study: there is a space to search, weights that
load, a writable folder with room, a model that fits the data, a budget some config meets,
and resources that exist."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from search.budget import CountReport, count_spec
from search.budget.latency import require_runtime
from search.budget.survey import measures_latency
from search.config import DataConfig, Spec, TorchvisionResNetConfig, TrialConfig, UserError
from search.data import ImageDataset, load_dataset, locate
from search.engine.events import Log
from search.models import build_model
from search.train.warm_start import check_channels, check_fits_data, check_init

# Free space a run wants in the study's folder before it starts (logs, Ray's results, checkpoints).
MIN_FREE_BYTES = 200 * 2**20


def require_space(spec: Spec) -> None:
    """Raises UserError for a fixed spec: there is nothing to search."""
    if spec.is_fixed:
        raise UserError(
            f"{spec.source}: model/train: nothing to search, every key is fixed; "
            f"train it with: resnet-search train {spec.source}"
        )


def check_weights(spec: Spec, configs: Sequence[TrialConfig]) -> None:
    """Pretrained weights that cannot be found or do not fit fail the run before any trial,
    not every trial: each architecture of the run's samples (:func:`sample_space`) is built with its
    weights once, before the study is opened.

    Raises:
        UserError: the weights a sampled config names are neither a file nor in the hub
            cache, or their names or shapes do not fit the architecture.
    """
    models = [c.model for c in configs]
    with_weights = {
        (c.name, c.num_classes, c.weights): c
        for c in models
        if isinstance(c, TorchvisionResNetConfig) and c.weights is not None
    }
    for config in with_weights.values():
        try:
            build_model(config)  # loads the weights; torchvision's ResNets take any input size
        except UserError as error:
            raise UserError(f"{spec.source}: model.weights: {error}") from None
    for model in {c.init_from: c for c in models if c.init_from is not None}.values():
        try:
            check_init(model)
        except UserError as error:
            raise UserError(f"{spec.source}: {error}") from None


def check_against_data(
    spec: Spec, data_dir: str | None, data: ImageDataset, configs: Sequence[TrialConfig]
) -> tuple[int, CountReport]:
    """What the loaded data decides before a run: the side every trial trains at (the dry run
    asks the same :func:`trial_image_size`), the counts of the run's one sample of the space
    (``configs``, :func:`sample_space`) at that side, a budget some config meets, and models
    that fit the data.

    Returns:
        The trials' image side, and the survey (the cost probe and Hyperband read it too).

    Raises:
        UserError: see :func:`check_space_fits` and :func:`check_data_fits`.
    """
    image_size = trial_image_size(spec.data, data_dir, data)
    survey = count_spec(spec, image_size=image_size, configs=configs)
    check_space_fits(spec, survey)
    check_data_fits(spec, data, survey)
    return image_size, survey


def check_data_fits(spec: Spec, data: ImageDataset, survey: CountReport) -> None:
    """A head of another width than the data's classes, or a fine-tune source of other classes
    or another input size, would fail every trial: it fails the run before any, once.

    Raises:
        UserError: a sampled config's ``num_classes`` is not the data's class count, or its
            ``init_from`` folder does not fit the data (see :func:`check_fits_data`).
    """
    configs = {
        (m.num_classes, m.init_from, getattr(m, "in_channels", 3)): m for m in (s.config.model for s in survey.sizes)
    }
    for model in configs.values():
        try:
            check_fits_data(model, data.classes, data.image_size)
            check_channels(model, data.channels)
        except UserError as error:
            raise UserError(f"{spec.source}: {error}") from None


def check_space_fits(spec: Spec, report: CountReport) -> None:
    """A budget that no config of the space meets fails before the study is written to.

    Raises:
        UserError: none of the survey's configs fits (names the smallest), or this machine
            cannot measure latency as ``budget.latency`` says.
    """
    if not report.fitting:
        raise UserError(
            f"{spec.source}: budget: no config of the space fits ({report.smallest_line()}); "
            "raise the budget's limits or shrink the space (fewer blocks, narrower widths)"
        )
    if measures_latency(spec):
        require_runtime(spec.budget.latency_settings, spec.source)


# A CIFAR found nowhere is downloaded, and torchvision's CIFAR images are 32x32.
CIFAR_SIZE = 32


def trial_image_size(config: DataConfig, data_dir: str | None, dataset: ImageDataset | None = None) -> int:
    """The side every trial trains at: the one answer ``run`` and ``run --dry-run`` both use.

    ``data.image_size`` when set (every image is resized to it), else the images' own size
    as stored, read from the dataset (through the tensor cache); a CIFAR found nowhere is
    what its download will be, 32.

    Args:
        config: The spec's data section.
        data_dir: The ``--data-dir`` flag.
        dataset: The dataset, where the caller has loaded it already (a run has).

    Returns:
        The side of the square input, in pixels.

    Raises:
        UserError: an image folder that cannot be found or read.
    """
    if dataset is not None:
        return dataset.image_size
    if config.image_size is not None:
        return config.image_size
    try:
        locate(config, data_dir, download=False)
    except UserError:
        if config.dataset in ("cifar10", "cifar100"):
            return CIFAR_SIZE
        raise
    return load_dataset(config, data_dir=data_dir, download=False).image_size


def absolute_data_paths(spec: Spec, data_dir: str | None) -> tuple[Spec, str | None]:
    """Tune runs each trial in a folder of its own: data paths must not depend on the cwd."""
    if spec.data.root:
        spec = replace(spec, data=replace(spec.data, root=str(Path(spec.data.root).resolve())))
    return spec, str(Path(data_dir).resolve()) if data_dir else None


DEVICES = ("cpu", "cuda")


def with_device(spec: Spec, device: str | None) -> Spec:
    """``spec`` with its trials on the device asked for: ``cpu``, no GPU (whatever
    ``resources.gpu`` says); ``cuda``, ``resources.gpu`` per trial, one where it says none;
    ``None``, as it is.

    Raises:
        UserError: another device.
    """
    if device not in (None, *DEVICES):
        raise UserError(f"device={device!r}: allowed: {', '.join(DEVICES)}")
    if device is None or (device == "cuda" and spec.resources.gpu > 0):
        return spec
    return replace(spec, resources=replace(spec.resources, gpu=0.0 if device == "cpu" else 1.0))


def check_resources(spec: Spec, cluster: dict, log: Log, require_gpu: bool = False) -> bool:
    """Whether trials get GPUs. A GPU (or part of one) per trial and no GPU at all: run on the
    CPU and say so, so that a GPU spec also runs on a laptop (an error where GPUs are required:
    ``device='cuda'``); more GPUs than exist: an error."""
    wanted = spec.resources.gpu
    have = cluster.get("GPU", 0)
    if require_gpu and have == 0:
        raise UserError("device='cuda' asks for a GPU per trial, and the Ray cluster has no GPU")
    if 0 < wanted <= 1 and have == 0:
        log(f"resources.gpu is {wanted:g} per trial but the Ray cluster has no GPU: trials run on the CPU")
        return False
    if wanted > have:
        raise UserError(
            f"{spec.source}: resources.gpu: {wanted:g} GPUs per trial, the Ray cluster has {have:g}; "
            "a trial trains on one GPU, so use at most 1 (a fraction packs trials on a GPU)"
        )
    if spec.resources.cpu > cluster.get("CPU", 0):
        raise UserError(
            f"{spec.source}: resources.cpu: {spec.resources.cpu:g} CPUs per trial, "
            f"the Ray cluster has {cluster.get('CPU', 0):g}"
        )
    return wanted > 0


def check_writable(directory: Path) -> None:
    """A study folder that cannot be written, or a disk that is (nearly) full, fails before any training.

    Raises:
        UserError: the folder cannot be made or written, or has under ``MIN_FREE_BYTES`` free.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".write-test"
        with probe.open("wb") as file:
            file.write(b"0" * 4096)
            file.flush()
            os.fsync(file.fileno())  # a full disk may only say so when the data is written out
        probe.unlink()
        free = shutil.disk_usage(directory).free
    except OSError as error:
        raise UserError(f"{directory}: cannot write the study's folder ({error.strerror or error})") from None
    if free < MIN_FREE_BYTES:
        raise UserError(
            f"{directory}: only {free / 2**20:.0f} MiB free on its disk; "
            f"a run needs at least {MIN_FREE_BYTES // 2**20} MiB: free some space"
        )
