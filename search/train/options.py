"""How one training run goes besides its config and data, as one object: :class:`TrainOptions`
(where it trains, who hears of each epoch, its checkpoint, what it trains and is tested on).
:func:`~search.train.loop.train` takes it in place of loose parameters.

:class:`SeedOptions` does the same for the commands that train a fixed config once per seed
(``train``: :func:`~search.train.seeds.train_spec`; ``retrain``:
:func:`~search.outputs.retrain.retrain`): their shared flags, as one object."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from search.config import Rung
from search.data import TensorSplit
from search.train.result import EpochMetrics


@dataclass(frozen=True)
class TrainOptions:
    """The options of one :func:`~search.train.loop.train` run; the defaults train on the CPU,
    silently, without a checkpoint, on ``data.train``.

    Attributes:
        device: Where to train (``"cuda"``, ``"cuda:1"``, ``"cpu"``).
        callback: Called with each epoch's metrics; returning True stops the run
            (status ``stopped``). Exceptions it raises (e.g. a pruning signal) propagate.
        checkpoint_path: If given, the full training state is written there atomically
            after every epoch (not after a non-finite one).
        resume: Continue from ``checkpoint_path`` at the epoch after the saved one; a
            missing file starts afresh. The result equals an uninterrupted run's.
        evaluate_test: Evaluate the final weights on the test split.
        train_split: Trains on this instead of ``data.train`` (final retraining on
            train+val; the per-epoch validation is then not held out).
        log: Receives the line on weights loaded from ``model.init_from``.
        rungs: ``study.pruner.rungs``: the callback gets a report at each (within an epoch
            too); the steps up to one train at its ``image_size`` (:mod:`.fidelity`).
    """

    device: str | torch.device = "cpu"
    callback: Callable[[EpochMetrics], bool | None] | None = None
    checkpoint_path: Path | None = None
    resume: bool = False
    evaluate_test: bool = False
    train_split: TensorSplit | None = None
    log: Callable[[str], None] | None = None
    rungs: tuple[Rung, ...] = ()


@dataclass(frozen=True)
class SeedOptions:
    """The flags that ``train`` and ``retrain`` share: where the data is, which seeds train for
    how long, where the model folders go, on which device, and who hears of each epoch. The
    defaults find the data where the spec (or the study) says, train each config's own
    ``train.seed`` for its ``train.epochs`` on CUDA when there is one, and print.

    Attributes:
        data_dir: Where to look for the dataset (beats the data a study recorded, and
            ``data.root``; see :func:`search.data.load_dataset`).
        download: Whether a known dataset found nowhere may be downloaded.
        epochs: Overrides ``train.epochs``.
        seeds: Seeds to train with (``train.seed``), one run each; default the config's own.
        out_dir: Output folder; default ``runs/<study name>`` (``train``) or
            ``runs/<study>/retrain`` (``retrain``).
        device: ``cuda`` or ``cpu``; default CUDA when available.
        log: Receives one progress line per epoch.
    """

    data_dir: str | Path | None = None
    download: bool = True
    epochs: int | None = None
    seeds: Sequence[int] | None = None
    out_dir: str | Path | None = None
    device: str | None = None
    log: Callable[[str], None] = print
