"""Training: one trial's model on one dataset, in one straight loop (airbench style).

:func:`train` returns a :class:`TrainResult`; :func:`write_outputs` writes it to a folder
(``metrics.json``, ``history.csv``, ``curves.html``); :class:`ProgressPrinter` is a
callback that prints one line per epoch; :func:`train_spec` is the ``train`` command.

The modules, each importing only those above it:

- :mod:`~search.train.result`: :class:`EpochMetrics`, :class:`TrainResult`.
- :mod:`~search.train.recipe`: optimizer, LR schedule, precision and memory format.
- :mod:`~search.train.ema`: :class:`WeightEma`, the moving average of the weights.
- :mod:`~search.train.whiten`: :func:`whiten_stem`, the stem initialised from the data.
- :mod:`~search.train.state`: :class:`TrainState` between epochs, and its checkpoint file.
- :mod:`~search.train.class_metrics`: balanced accuracy, macro-F1, per-class scores.
- :mod:`~search.train.balance`: class weights and the class-balanced batch order.
- :mod:`~search.train.step`: the training step, eager or replayed as a CUDA graph.
- :mod:`~search.train.epoch`: one training epoch, one evaluation (with test-time views).
- :mod:`~search.train.loop`: :func:`train`, the loop over epochs, with its :class:`TrainOptions`
  (:mod:`~search.train.options`).
- :mod:`~search.train.run_files`, :mod:`~search.train.epoch_lines`: files and epoch callbacks.
- :mod:`~search.train.seeds`: :func:`train_spec`, one seed's run (:func:`train_seed`).
"""

from search.train.ema import WeightEma
from search.train.epoch import (
    BatchFormat,
    EpochPart,
    EvalSetup,
    Evaluation,
    TrainedEpoch,
    evaluate,
    train_epoch,
    tta_views,
)
from search.train.epoch_lines import ProgressPrinter, chain_callbacks
from search.train.loop import train
from search.train.options import SeedOptions, TrainOptions
from search.train.recipe import (
    CHANNELS_LAST_ON_CPU,
    build_optimizer,
    build_scheduler,
    cpu_channels_last_is_safe,
    lr_factor,
    param_groups,
    resolve_amp_dtype,
    resolve_channels_last,
    scaled_lr,
)
from search.train.result import EpochMetrics, Status, TrainResult
from search.train.run_files import write_outputs
from search.train.seeds import train_spec
from search.train.state import CHECKPOINT_VERSION, RunId, TrainState
from search.train.step import GraphedStep, StepOutput, TrainStep, step_class
from search.train.whiten import whiten_stem

__all__ = [
    "CHANNELS_LAST_ON_CPU",
    "CHECKPOINT_VERSION",
    "BatchFormat",
    "EpochMetrics",
    "EpochPart",
    "EvalSetup",
    "Evaluation",
    "GraphedStep",
    "ProgressPrinter",
    "RunId",
    "SeedOptions",
    "Status",
    "StepOutput",
    "TrainResult",
    "TrainState",
    "TrainStep",
    "TrainedEpoch",
    "WeightEma",
    "build_optimizer",
    "build_scheduler",
    "chain_callbacks",
    "cpu_channels_last_is_safe",
    "evaluate",
    "lr_factor",
    "step_class",
    "param_groups",
    "resolve_amp_dtype",
    "resolve_channels_last",
    "scaled_lr",
    "train",
    "TrainOptions",
    "train_epoch",
    "train_spec",
    "tta_views",
    "whiten_stem",
    "write_outputs",
]
