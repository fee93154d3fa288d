"""A config in words: one line for its architecture, one for its recipe (the trial notes of
optuna-dashboard and the model card of a model folder both show them)."""

from __future__ import annotations

from search.config.model_configs import ModelConfig, ResNetConfig
from search.config.schema import TrialConfig

__all__ = ["architecture_line", "format_flops", "freeze_line", "recipe_line"]


def architecture_line(config: TrialConfig, params: int | None, flops: int | None) -> str:
    """One line: stages, blocks, widths, block type, SE, parameters and FLOPs."""
    model = config.model
    if isinstance(model, ResNetConfig):
        se = "no SE" if model.se.name == "none" else f"SE {model.se.name} 1/{model.se.ratio}"
        shape = (
            f"{len(model.stages)} stages, blocks {'-'.join(str(s.blocks) for s in model.stages)}, "
            f"widths {'/'.join(str(s.width) for s in model.stages)}, stem {model.stem.width}, "
            f"{model.block}{' preact' if model.preact else ''}, {se}"
        )
    else:
        shape = f"{model.name}, freeze {model.freeze}, weights {model.weights or 'none'}"
    size = [f"{params:,} params" if params is not None else None, f"{format_flops(flops)}" if flops else None]
    return ", ".join([shape, *[s for s in size if s]])


def freeze_line(model: ModelConfig) -> str | None:
    """What stayed fixed while the model trained (``freeze``, ``freeze_batchnorm``); None when nothing did."""
    if model.freeze == "none":
        return None
    trains = "only the head" if model.freeze == "all_but_head" else "only the last stage and the head"
    stats = (
        "BatchNorm running statistics of the frozen layers kept as loaded"
        if model.freeze_batchnorm
        else "BatchNorm running statistics of the frozen layers updated on the new data (freeze_batchnorm: false)"
    )
    start = f"started from {model.init_from}, " if model.init_from else ""
    return f"{start}freeze {model.freeze}: {trains} trained; {stats}"


def recipe_line(config: TrialConfig) -> str:
    """One line: optimizer and LR, schedule, batch size, epochs."""
    t = config.train
    return (
        f"{t.optimizer.name} lr {t.optimizer.lr:.3g} wd {t.optimizer.weight_decay:.2g}, {t.scheduler.name}, "
        f"batch {t.batch_size}, {t.epochs} epochs"
    )


def format_flops(flops: int | None) -> str:
    """``2396208`` -> ``2.4 MFLOPs``."""
    if flops is None:
        return "-"
    for unit, scale in (("GFLOPs", 1e9), ("MFLOPs", 1e6), ("kFLOPs", 1e3)):
        if flops >= scale:
            return f"{flops / scale:.3g} {unit}"
    return f"{flops} FLOPs"
