"""The ``train`` command: a fixed spec's config trained once per seed, each run's files written."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

import search.data
from search.config import InvalidValue, Spec, SpecError, TrialConfig, UserError
from search.data import ImageDataset
from search.data.fingerprint import fingerprint, source_location
from search.models.geometry import check_fits
from search.train.loop import train
from search.train.model_folder import WEIGHTS_FILE, ModelSource, write_run
from search.train.progress import ProgressPrinter
from search.train.warm_start import check_fits_data, check_init


def train_spec(
    spec: Spec,
    *,
    data_dir: str | Path | None = None,
    download: bool = True,
    epochs: int | None = None,
    seeds: list[int] | None = None,
    out_dir: str | Path | None = None,
    device: str | None = None,
    resume: bool = False,
    init_from: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> str:
    """Train a fixed spec's config once per seed and write each run's outputs (``train`` command).

    Each run trains on the training split, validates every epoch and evaluates the test
    split at the end; its files go to ``out_dir`` (one seed) or ``out_dir/seed<N>``, a model
    folder (:mod:`search.train.model_folder`: ``model.safetensors``, ``config.yaml``,
    ``model.json``, ``metrics.json``, ``history.csv``, ``curves.html``, ``README.md``) with
    ``checkpoint.pt`` (the training state, written every epoch, for ``resume``).

    Args:
        spec: A spec whose every leaf is fixed.
        data_dir: Where to look for the dataset (see :func:`search.data.load_dataset`).
        download: Allow downloading a missing standard dataset.
        epochs: Overrides ``train.epochs``.
        seeds: Seeds to train with; default the spec's ``train.seed``.
        out_dir: Output folder; default ``runs/<study name>``.
        device: ``cuda`` or ``cpu``; default CUDA when available.
        resume: Continue each seed's run from its checkpoint, where there is one.
        init_from: A model folder to start from (``train --init``); beats ``model.init_from``.
        log: Receives one progress line per epoch.

    Returns:
        A summary: one line per seed, and mean +- std over seeds when there are several.

    Raises:
        SpecError: The spec is not fixed, or its config does not fit the images (see ``check_fits``).
        UserError: The data cannot be found or does not fit the model (its class count, or the
            ``init_from`` folder's classes or input size), checked before any training.
    """
    trial = spec.fixed()
    if init_from is not None:
        trial = replace(trial, model=replace(trial.model, init_from=str(Path(init_from).resolve())))
    check_init(trial.model)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    # Looked up on the package when called, not bound at import, so a test can patch it there.
    data = search.data.load_dataset(spec.data, data_dir=data_dir, download=download)
    _check_fits(spec, trial, data)
    source = ModelSource(data=fingerprint(data, source_location(spec.data, data_dir)))
    out = Path(out_dir) if out_dir is not None else Path("runs") / spec.study.name
    seeds = seeds or [trial.train.seed]
    several = len(seeds) > 1
    lines, val_accs, test_accs = [], [], []
    for seed in seeds:
        run = replace(trial, train=replace(trial.train, seed=seed))
        val_acc, test_acc, line = _train_seed(
            spec,
            run,
            data,
            out / f"seed{seed}" if several else out,
            source=source,
            prefix=f"seed {seed}: " if several else "",
            epochs=epochs,
            device=device,
            resume=resume,
            log=log,
        )
        val_accs.append(val_acc)
        test_accs.append(test_acc)
        lines.append(line)
    if several:
        for name, accs in (("val_acc", val_accs), ("test_acc", test_accs)):
            mean, std = statistics.fmean(accs), statistics.stdev(accs)
            lines.append(f"{name}: mean {mean:.2%} +- {std:.2%} over {len(accs)} seeds")
    folders = [out / f"seed{seed}" if several else out for seed in seeds]
    lines += [f"model folder: {folder}" for folder in folders if (folder / WEIGHTS_FILE).exists()]
    return "\n".join(lines)


def _check_fits(spec: Spec, trial: TrialConfig, data: ImageDataset) -> None:
    """Before any training, what would fail it or make it meaningless: shapes torch would refuse
    mid-run, a head of another width than the data's classes, a fine-tune source of other
    classes or input size.

    Raises:
        SpecError, UserError: naming the spec and the key.
    """
    try:
        check_fits(trial, data.image_size)
    except InvalidValue as error:
        raise SpecError(spec.source, error.key, error.message) from None
    try:
        check_fits_data(trial.model, data.classes, data.image_size)
    except UserError as error:
        raise UserError(f"{spec.source}: {error}") from None


def _train_seed(
    spec: Spec,
    run: TrialConfig,
    data: ImageDataset,
    run_dir: Path,
    *,
    source: ModelSource,
    prefix: str,
    epochs: int | None,
    device: str,
    resume: bool,
    log: Callable[[str], None],
) -> tuple[float, float, str]:
    """Train ``run`` (one seed's config), checkpointing every epoch, and write its files to ``run_dir``.

    Args:
        spec: The fixed spec, for ``config.yaml``.
        run: The trial config with this seed.
        data: The loaded dataset.
        run_dir: Where this run's files go.
        source: Where the model comes from, for ``model.json``.
        prefix: Put before every progress line.
        epochs: Overrides ``train.epochs``.
        device: Where to train.
        resume: Continue from ``run_dir/checkpoint.pt`` if it exists.
        log: Receives one progress line per epoch.

    Returns:
        The final validation accuracy, the test accuracy (NaN if none) and the seed's summary line.
    """
    seed = run.train.seed
    result = train(
        run,
        data,
        device=device,
        epochs=epochs,
        callback=ProgressPrinter(epochs or run.train.epochs, log=log, prefix=prefix),
        evaluate_test=True,
        checkpoint_path=run_dir / "checkpoint.pt",
        resume=resume,
        log=log,
    )
    params = sum(p.numel() for p in result.model.parameters()) if result.model is not None else 0
    write_run(run_dir, result, spec=spec, trial=run, data=data, source=source, device=device)
    test_acc = result.test_acc if result.test_acc is not None else math.nan
    line = (
        f"seed {seed}: {result.status}, val_acc {result.final_val_acc:.2%}, test_acc {test_acc:.2%}, "
        f"{params:,} params, {result.train_time_s:.0f} s, {result.images_per_s:,.0f} img/s -> {run_dir}"
        + (f" ({result.reason})" if result.reason else "")
    )
    return result.final_val_acc, test_acc, line
