"""Starting a training run from a model folder (``model.init_from``, ``train --init``).

The folder's weights go into the freshly built model; a classifier for another number of
classes keeps its fresh initialisation (transfer to a new task), and the line this returns
says so. The freeze strategy of the config has already been applied by the builder.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from search.config import ModelConfig, UserError
from search.train.model_folder import WEIGHTS_FILE, check_fit, open_model_folder, read_weights


def resolve_init(config: ModelConfig, base: str | Path | None) -> ModelConfig:
    """``config`` with a relative ``init_from`` made absolute against ``base`` (the driver's folder,
    for trials that Ray runs in folders of their own); unchanged without one."""
    from dataclasses import replace

    if config.init_from is None or base is None or Path(config.init_from).is_absolute():
        return config
    return replace(config, init_from=str(Path(base) / config.init_from))


def check_init(config: ModelConfig) -> None:
    """Refuse an ``init_from`` that is not a model folder, before anything trains.

    Raises:
        UserError: The folder is missing or not a model folder (the message says which file).
    """
    if config.init_from is not None:
        try:
            open_model_folder(config.init_from)
        except UserError as error:
            raise UserError(f"model.init_from: {error}") from None


def load_init_weights(model: nn.Module, config: ModelConfig) -> str:
    """Load the weights of ``config.init_from``'s model folder into ``model``.

    Tensors of the classifier whose first dimension is the folder's class count where the
    model's is ``config.num_classes`` (another task) stay as initialised.

    Args:
        model: Freshly built for ``config`` (freeze applied), on any device.
        config: Its config; ``init_from`` names the folder.

    Returns:
        One line: what was loaded, what was re-initialised, what trains.

    Raises:
        UserError: Not a model folder, truncated weights, or weights of another architecture
            (the first tensor that does not fit is named).
    """
    assert config.init_from is not None
    folder = open_model_folder(config.init_from)
    path = folder.path / WEIGHTS_FILE
    state = read_weights(path)
    expected = model.state_dict()
    theirs, ours = len(folder.classes), config.num_classes
    fresh = [name for name in expected if name in state and _is_new_head(state[name], expected[name], theirs, ours)]
    check_fit({**state, **{name: expected[name] for name in fresh}}, model, path)
    loaded = {name: tensor for name, tensor in state.items() if name not in fresh}
    with torch.no_grad():
        model.load_state_dict(loaded, strict=False)  # check_fit has made sure only ``fresh`` is left out
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    line = f"init_from {folder.path}: {len(loaded)} tensors loaded"
    if fresh:
        line += f"; head re-initialised for {ours} classes (the folder's model has {theirs}): {', '.join(fresh)}"
    return line + f"; freeze {config.freeze}: {trainable:,} of {total:,} parameters train"


def _is_new_head(tensor: torch.Tensor, expected: torch.Tensor | None, theirs: int, ours: int) -> bool:
    """A classifier weight or bias sized for the folder's classes where the model has others."""
    if expected is None or tensor.shape == expected.shape or theirs == ours:
        return False
    return tensor.shape[0] == theirs and expected.shape[0] == ours and tensor.shape[1:] == expected.shape[1:]
