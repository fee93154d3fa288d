"""The ``train`` command: a fixed spec's config trained once per seed, each run's files written."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

import search.data
from search.config import InvalidValue, Spec, SpecError, TrialConfig, UserError
from search.config.files import check_output_folder
from search.data import ImageDataset, TensorSplit
from search.data.fingerprint import fingerprint, source_location
from search.models.geometry import check_fits
from search.train.epoch_lines import ProgressPrinter
from search.train.loop import train
from search.train.model_folder import WEIGHTS_FILE, FolderContents, ModelSource, write_run
from search.train.options import SeedOptions, TrainOptions
from search.train.recipe import default_device
from search.train.result import TrainResult
from search.train.warm_start import check_channels, check_fits_data, check_init


def train_spec(
    spec: Spec,
    options: SeedOptions | None = None,
    *,
    resume: bool = False,
    init_from: str | Path | None = None,
) -> TrainSummary:
    """Train a fixed spec's config once per seed and write each run's outputs (``train`` command).

    Each run trains on the training split, validates every epoch and evaluates the test
    split at the end; its files go to ``out_dir`` (one seed) or ``out_dir/seed<N>``, a model
    folder (:mod:`search.train.model_folder`: ``model.safetensors``, ``config.yaml``,
    ``model.json``, ``metrics.json``, ``history.csv``, ``curves.html``, ``README.md``) with
    ``checkpoint.pt`` (the training state, written every epoch, for ``resume``).

    Args:
        spec: A spec whose every leaf is fixed.
        options: The data, epochs, seeds, output folder, device and log (:class:`SeedOptions`);
            default: all defaults (the spec's data, seed and epochs, ``runs/<study name>``).
        resume: Continue each seed's run from its checkpoint, where there is one.
        init_from: A model folder to start from (``train --init``); beats ``model.init_from``.

    Returns:
        A summary: one line per seed, and mean +- std over seeds when there are several; the
        seeds whose loss went non-finite (their folders hold no model) are in ``diverged``.

    Raises:
        SpecError: The spec is not fixed, or its config does not fit the images (see ``check_fits``).
        UserError: ``out_dir`` cannot be written (checked first); the data cannot be found or does
            not fit the model (its class count, or the ``init_from`` folder's classes or input size),
            checked before any training.
    """
    options = options or SeedOptions()
    data_dir, log = options.data_dir, options.log
    trial = spec.fixed()
    out = check_output_folder(options.out_dir) if options.out_dir is not None else Path("runs") / spec.study.name
    if init_from is not None:
        trial = replace(trial, model=replace(trial.model, init_from=str(Path(init_from).resolve())))
    check_init(trial.model)
    where = default_device(options.device)
    # Looked up on the package when called, not bound at import, so a test can patch it there.
    data = search.data.load_dataset(spec.data, data_dir=data_dir, download=options.download)
    _check_fits(spec, trial, data)
    source = ModelSource(data=fingerprint(data, source_location(spec.data, data_dir)))
    seeds = options.seeds or [trial.train.seed]
    several = len(seeds) > 1
    lines, val_accs, test_accs, diverged = [], [], [], []
    for seed in seeds:
        run = SeedRun(
            spec,
            replace(trial, train=replace(trial.train, seed=seed)),
            data,
            out / f"seed{seed}" if several else out,
            source,
            where,
            epochs=options.epochs,
            checkpoint=True,
            resume=resume,
            prefix=f"seed {seed}: " if several else "",
        )
        result = train_seed(run, log)
        val_accs.append(result.final_val_acc)
        test_accs.append(result.test_acc if result.test_acc is not None else math.nan)
        lines.append(_seed_line(run, result))
        if result.status == "nan":
            diverged.append(f"seed {seed}: {result.reason}")
    if several:
        for name, accs in (("val_acc", val_accs), ("test_acc", test_accs)):
            mean, std = statistics.fmean(accs), statistics.stdev(accs)
            lines.append(f"{name}: mean {mean:.2%} +- {std:.2%} over {len(accs)} seeds")
    folders = [out / f"seed{seed}" if several else out for seed in seeds]
    lines += [f"model folder: {folder}" for folder in folders if (folder / WEIGHTS_FILE).exists()]
    return TrainSummary("\n".join(lines), tuple(diverged))


@dataclass(frozen=True)
class TrainSummary:
    """What ``train`` prints (``text``) and the seeds that diverged, each with its reason: a run
    with one of those failed, whatever the others did."""

    text: str
    diverged: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.text


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
        check_channels(trial.model, data.channels)
    except UserError as error:
        raise UserError(f"{spec.source}: {error}") from None


@dataclass(frozen=True)
class SeedRun:
    """One seed's training run, as ``train`` and ``retrain`` do it: what trains, on what, and
    where its files go.

    Attributes:
        spec: The fixed spec, for ``config.yaml``.
        config: The trial config with this seed.
        data: The loaded dataset.
        folder: Where this run's model folder goes.
        source: Where the model comes from, for ``model.json``.
        device: Where to train.
        epochs: Overrides ``train.epochs``.
        train_split: What to train on; ``None``: the training split (``retrain`` gives train+val).
        checkpoint: Write ``folder/checkpoint.pt`` every epoch (``train``; ``resume`` reads it).
        resume: Continue from that checkpoint if it exists.
        prefix: Put before every progress line.
    """

    spec: Spec
    config: TrialConfig
    data: ImageDataset
    folder: Path
    source: ModelSource
    device: torch.device
    epochs: int | None = None
    train_split: TensorSplit | None = None
    checkpoint: bool = False
    resume: bool = False
    prefix: str = ""


def train_seed(run: SeedRun, log: Callable[[str], None] = print) -> TrainResult:
    """Train one seed's config, test it, and write what the run leaves in ``run.folder`` (its
    model folder, or a diverged run's metrics: :func:`write_run`).

    Returns:
        The finished run.
    """
    config = run.config
    options = TrainOptions(
        device=run.device,
        callback=ProgressPrinter(
            run.epochs or config.train.epochs, log=log, prefix=run.prefix, held_out=run.train_split is None
        ),
        checkpoint_path=run.folder / "checkpoint.pt" if run.checkpoint else None,
        resume=run.resume,
        evaluate_test=True,
        train_split=run.train_split,
        log=log,
    )
    result = train(config, run.data, options, epochs=run.epochs)
    write_run(run.folder, result, FolderContents(run.spec, config, run.data, run.source, run.device))
    return result


def _seed_line(run: SeedRun, result: TrainResult) -> str:
    """The summary line of one seed's run, as ``train`` prints it."""
    params = sum(p.numel() for p in result.model.parameters()) if result.model is not None else 0
    test_acc = result.test_acc if result.test_acc is not None else math.nan
    return (
        f"seed {run.config.train.seed}: {result.status}, val_acc {result.final_val_acc:.2%}, test_acc {test_acc:.2%}, "
        f"{params:,} params, {result.train_time_s:.0f} s, {result.images_per_s:,.0f} img/s -> {run.folder}"
        + (f" ({result.reason})" if result.reason else "")
    )
