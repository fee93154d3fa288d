"""Freeze strategies: which parameters of a model stay trainable under ``freeze``.

One vocabulary for both model kinds (seed 004's fine-tuning strategies): ``none`` trains
everything, ``all_but_last_stage`` the last stage and the head, ``all_but_head`` only the
head (a linear probe). The trainable part is named by parameter-name prefixes, which
:func:`search.budget.fast_count` mirrors when it counts trainable parameters.
"""

from __future__ import annotations

from torch import nn

from search.config import ResNetConfig, TorchvisionResNetConfig
from search.models.torchvision_resnet import TRAINABLE_PREFIXES

__all__ = ["trainable_prefixes", "apply_freeze"]

# What follows the last stage of our ResNet: the final pre-activation BatchNorm, the head,
# and the auxiliary head (a head too: frozen, its loss would only add noise).
_RESNET_HEAD = ("final_act.", "head.", "aux_head.")


def trainable_prefixes(config: ResNetConfig | TorchvisionResNetConfig) -> tuple[str, ...] | None:
    """The parameter-name prefixes that stay trainable under ``config.freeze``; None: all of them."""
    if config.freeze == "none":
        return None
    if isinstance(config, TorchvisionResNetConfig):
        return TRAINABLE_PREFIXES[config.freeze]
    if config.freeze == "all_but_last_stage":
        return (f"stages.{len(config.stages) - 1}.", *_RESNET_HEAD)
    return _RESNET_HEAD


def apply_freeze(model: nn.Module, config: ResNetConfig | TorchvisionResNetConfig) -> None:
    """Turn off the gradients of every parameter outside the strategy's trainable part.

    Parameters already frozen (``batchnorm.frozen_scale``) stay frozen: this only ever
    turns gradients off. BatchNorm running statistics of frozen layers still update in
    training mode.
    """
    prefixes = trainable_prefixes(config)
    if prefixes is None:
        return
    for name, param in model.named_parameters():
        if not name.startswith(prefixes):
            param.requires_grad_(False)
