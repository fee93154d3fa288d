"""torchvision's ImageNet ResNets from a :class:`~search.config.model_configs.TorchvisionResNetConfig`.

Pretrained weights come from a local file or the torch hub cache only: nothing is ever
downloaded (trials run on machines that may have no network, and a silent 100 MB
download per trial would be worse than a clear error).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor

from search.config import TorchvisionResNetConfig, UserError

__all__ = ["build_torchvision_resnet", "load_weights", "freeze", "weights_file"]

# Parameters that stay trainable under each freeze strategy, by name prefix.
TRAINABLE_PREFIXES: dict[str, tuple[str, ...] | None] = {
    "none": None,  # everything
    "all_but_last_stage": ("layer4.", "fc."),
    "all_but_head": ("fc.",),
}


def build_torchvision_resnet(config: TorchvisionResNetConfig) -> nn.Module:
    """torchvision's ``config.name`` with ``num_classes`` outputs, weights loaded, layers frozen.

    Raises:
        UserError: The weights cannot be found, read, or do not fit the architecture.
    """
    import torchvision  # here, not at the top: 2 s of every worker's start-up, for our own ResNet too

    model = getattr(torchvision.models, config.name)(weights=None, num_classes=config.num_classes)
    if config.weights is not None:
        load_weights(model, config)
    if config.dropout > 0:
        # Dropout goes after the pooling rather than into ``fc`` so that the state-dict
        # keys stay torchvision's (``fc.weight``): pretrained files keep loading.
        model.avgpool = nn.Sequential(model.avgpool, nn.Dropout(config.dropout))
    freeze(model, config.freeze)
    return model


def freeze(model: nn.Module, strategy: str) -> None:
    """Set ``requires_grad=False`` on every parameter outside the strategy's trainable part.

    BatchNorm running statistics of frozen layers still update in training mode; put
    those layers in eval mode too if they must stay fixed.
    """
    prefixes = TRAINABLE_PREFIXES[strategy]
    if prefixes is None:
        return
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(prefixes))


def weights_file(config: TorchvisionResNetConfig) -> Path:
    """The file that ``config.weights`` names: a path, or a weights enum member in the hub cache.

    Raises:
        UserError: Neither an existing file nor a cached member of the architecture's weights enum.
    """
    assert config.weights is not None
    path = Path(config.weights).expanduser()
    if path.is_file():
        return path
    import torchvision

    enum = torchvision.models.get_model_weights(config.name)
    member = enum.__members__.get(config.weights)
    if member is None:
        raise UserError(
            f"weights {config.weights!r}: no such file, and not one of {enum.__name__} ({', '.join(enum.__members__)})"
        )
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(member.url)
    if not cached.is_file():
        raise UserError(
            f"weights {enum.__name__}.{config.weights} not found at {cached} "
            f"(never downloaded: put the file from {member.url} there, or give a path)"
        )
    return cached


def load_weights(model: nn.Module, config: TorchvisionResNetConfig) -> None:
    """Load ``config.weights`` into ``model``; ``fc`` stays fresh when its shape differs.

    Raises:
        UserError: The file cannot be read, or its keys or shapes do not fit the model.
    """
    path = weights_file(config)
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:  # unpickling raises many types; all mean "not a state dict"
        raise UserError(f"cannot read weights {path}: {_reason(error)}") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"weights {path}: not a state dict (a mapping of names to tensors)")

    expected = model.state_dict()
    # ImageNet weights into a model for other classes: keep everything but the classifier,
    # which stays freshly initialised (so does it when the file has none).
    if any(k.startswith("fc.") and k in expected and v.shape != expected[k].shape for k, v in state.items()):
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    fresh_fc = not any(k.startswith("fc.") for k in state)
    missing = [k for k in expected if k not in state and not (fresh_fc and k.startswith("fc."))]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    problems = (
        [f"missing {k}" for k in missing[:3]]
        + [f"unexpected {k}" for k in unexpected[:3]]
        + [f"{k} is {tuple(state[k].shape)}, expected {tuple(expected[k].shape)}" for k in wrong_shape[:3]]
    )
    if problems:
        raise UserError(f"weights {path} do not fit {config.name}: {'; '.join(problems)}")
    model.load_state_dict(state, strict=False)


def _reason(error: Exception) -> str:
    """One line on why ``torch.load`` failed; for a pickle that ``weights_only`` refuses (one that
    would run code), its own explanation, not torch's advice on how to load it unsafely."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    refusal = [line for line in lines if line.startswith("WeightsUnpickler error:")]
    if refusal:
        return f"refused by torch.load(weights_only=True): {refusal[0].removeprefix('WeightsUnpickler error:').strip()}"
    return lines[0] if lines else type(error).__name__
