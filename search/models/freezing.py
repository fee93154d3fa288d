"""Freeze strategies: which parameters of a model stay trainable under ``freeze``.

One vocabulary for both model kinds (seed 004's fine-tuning strategies): ``none`` trains
everything, ``all_but_last_stage`` the last stage and the head, ``all_but_head`` only the
head (a linear probe). The trainable part is named by parameter-name prefixes, which
:func:`search.budget.fast_count` mirrors when it counts trainable parameters.

Turning gradients off does not freeze a BatchNorm layer: in training mode it normalises
with the batch's statistics and moves its running statistics towards them, so a "frozen"
backbone would still drift to the new data. With ``freeze_batchnorm`` (the default) the
BatchNorm layers of the frozen part stay in eval mode whatever ``model.train()`` says
(:func:`hold_frozen_batchnorm`); their parameter and buffer names are unchanged, so
weights load and count as before.
"""

from __future__ import annotations

from torch import nn

from search.config import ModelConfig, ResNetConfig, TorchvisionResNetConfig
from search.models.torchvision_resnet import TRAINABLE_PREFIXES

__all__ = ["trainable_prefixes", "apply_freeze", "hold_frozen_batchnorm", "held_batchnorms"]

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
    turns gradients off. The BatchNorm layers of the frozen part are held in eval mode
    apart from this (:func:`hold_frozen_batchnorm`).
    """
    prefixes = trainable_prefixes(config)
    if prefixes is None:
        return
    for name, param in model.named_parameters():
        if not name.startswith(prefixes):
            param.requires_grad_(False)


class FrozenBatchNorm1d(nn.BatchNorm1d):
    """A BatchNorm1d that stays in eval mode: it normalises with its running statistics and
    never updates them, whatever ``train()`` asks of the model around it."""

    def train(self, mode: bool = True) -> FrozenBatchNorm1d:
        return super().train(False)


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d that stays in eval mode (see :class:`FrozenBatchNorm1d`)."""

    def train(self, mode: bool = True) -> FrozenBatchNorm2d:
        return super().train(False)


_HELD: dict[type[nn.Module], type[nn.Module]] = {nn.BatchNorm1d: FrozenBatchNorm1d, nn.BatchNorm2d: FrozenBatchNorm2d}


def hold_frozen_batchnorm(model: nn.Module, config: ModelConfig) -> int:
    """Keep the BatchNorm layers outside the trainable part of ``config.freeze`` in eval mode,
    when ``config.freeze_batchnorm`` asks for it.

    Each such layer becomes its frozen subclass in place (same tensors, same state-dict
    names), so the hold survives ``model.train()``, copies (the EMA's) and compilation.

    Returns:
        How many BatchNorm layers are held.
    """
    prefixes = trainable_prefixes(config)
    if prefixes is None or not config.freeze_batchnorm:
        return 0
    held = 0
    for name, module in model.named_modules():
        frozen_class = _HELD.get(type(module))
        if frozen_class is not None and not f"{name}.".startswith(prefixes):
            module.__class__ = frozen_class
            module.eval()
            held += 1
    return held


def held_batchnorms(model: nn.Module) -> int:
    """How many BatchNorm layers of ``model`` :func:`hold_frozen_batchnorm` holds in eval mode."""
    return sum(isinstance(module, tuple(_HELD.values())) for module in model.modules())
