"""Starting a training run from a model folder (``model.init_from``, ``train --init``).

The folder's weights go into the freshly built model; a classifier for another number of
classes keeps its fresh initialisation (transfer to a new task), and the line this returns
says so. The freeze strategy of the config has already been applied by the builder.

A folder is checked in full before anything trains (:func:`check_init`): its files, the
weights' checksum, names, shapes and dtypes. Against the data (:func:`check_init_fits`): a
head that would be loaded as it is must have been trained on the data's classes, in the
same order, and the folder's input size must be the data's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from search.config import ModelConfig, UserError
from search.models.freezing import held_batchnorms
from search.train.model_folder import (
    WEIGHTS_FILE,
    ModelFolder,
    build_trained,
    check_fit,
    open_model_folder,
    read_weights,
)


def resolve_init(config: ModelConfig, base: str | Path | None) -> ModelConfig:
    """``config`` with a relative ``init_from`` made absolute against ``base`` (the driver's folder,
    for trials that Ray runs in folders of their own); unchanged without one."""
    from dataclasses import replace

    if config.init_from is None or base is None or Path(config.init_from).is_absolute():
        return config
    return replace(config, init_from=str(Path(base) / config.init_from))


def check_init(config: ModelConfig) -> None:
    """Refuse an ``init_from`` that is not a sound model folder, before anything trains: its
    files are read and checked, and its weights loaded into its own model.

    Raises:
        UserError: The folder is missing, not a model folder, or damaged (the message says which file).
    """
    if config.init_from is not None:
        try:
            build_trained(open_model_folder(config.init_from))
        except UserError as error:
            raise UserError(f"model.init_from: {error}") from None


def check_fits_data(config: ModelConfig, classes: Sequence[str], image_size: int) -> None:
    """Refuse a model config that cannot train on the data: what would otherwise fail every
    trial of a run, or a training after its data is loaded.

    Args:
        config: The model config.
        classes: The data's classes, in label order.
        image_size: The data's image side.

    Raises:
        UserError: ``num_classes`` is not the data's class count (:func:`check_num_classes`),
            or the ``init_from`` folder's head would be kept (as many classes as
            ``num_classes``) but was trained on other classes or another order, or its
            input size is not the data's.
    """
    check_num_classes(config, classes)
    if config.init_from is not None:
        _check_fits_data(open_model_folder(config.init_from), config, tuple(classes), image_size)


def check_channels(config: ModelConfig, channels: int) -> None:
    """Raises UserError when the model takes another number of channels than the images have."""
    takes = getattr(config, "in_channels", 3)  # torchvision's ResNets take RGB
    if takes != channels:
        what = {1: "grayscale (1 channel)", 3: "RGB (3 channels)"}.get(channels, f"{channels}-channel")
        fix = f"set model.in_channels: {channels}" if hasattr(config, "in_channels") else "use name: resnet"
        raise UserError(
            f"model.in_channels: {takes}, but the images are decoded as {what} (data.channels): {fix}, "
            f"or data.channels: {takes}"
        )


def check_num_classes(config: ModelConfig, classes: Sequence[str]) -> None:
    """Raises UserError when the model's head has another width than the data has classes."""
    if config.num_classes != len(classes):
        raise UserError(
            f"model.num_classes: {config.num_classes}, but the data has {len(classes)} classes "
            f"({_names(tuple(classes))}): set model.num_classes: {len(classes)}"
        )


def _check_fits_data(folder: ModelFolder, config: ModelConfig, classes: tuple[str, ...], image_size: int) -> None:
    where = f"model.init_from {folder.path}"
    if len(folder.classes) == config.num_classes and folder.classes != classes:
        raise UserError(
            f"{where}: its head classifies {_names(folder.classes)}, the data has {_names(classes)}: the same "
            "number of classes, so the head would be kept, mapping each output to another class; "
            "start from a folder trained on these classes in this order"
        )
    if folder.input_size != image_size:
        raise UserError(
            f"{where}: takes {folder.input_size}x{folder.input_size} images, the data's are "
            f"{image_size}x{image_size}: set data.image_size: {folder.input_size}, or start from a folder of "
            f"{image_size}px images"
        )


def _names(classes: tuple[str, ...]) -> str:
    shown = ", ".join(classes[:8])
    return shown + (f", ... ({len(classes)})" if len(classes) > 8 else "")


def load_init_weights(model: nn.Module, config: ModelConfig, classes: Sequence[str], image_size: int) -> str:
    """Load the weights of ``config.init_from``'s model folder into ``model``.

    Tensors of the classifier whose first dimension is the folder's class count where the
    model's is ``config.num_classes`` (another task) stay as initialised.

    Args:
        model: Freshly built for ``config`` (freeze applied), on any device.
        config: Its config; ``init_from`` names the folder.
        classes: The classes of the data it will train on, in label order.
        image_size: The side of the data's images.

    Returns:
        One line: what was loaded, what was re-initialised, what trains, what stays frozen.

    Raises:
        UserError: Not a model folder, damaged weights, weights of another architecture
            (the first tensor that does not fit is named), or a folder that does not fit
            the data (see :func:`check_fits_data`).
    """
    assert config.init_from is not None
    folder = open_model_folder(config.init_from)
    _check_fits_data(folder, config, tuple(classes), image_size)
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
    line += f"; freeze {config.freeze}: {trainable:,} of {total:,} parameters train"
    held = held_batchnorms(model)
    if held:
        line += f"; {held} BatchNorm layers of the frozen part keep their running statistics"
    elif config.freeze != "none":
        line += "; BatchNorm running statistics of the frozen part follow the new data (freeze_batchnorm: false)"
    return line


def _is_new_head(tensor: torch.Tensor, expected: torch.Tensor | None, theirs: int, ours: int) -> bool:
    """A classifier weight or bias sized for the folder's classes where the model has others."""
    if expected is None or tensor.shape == expected.shape or theirs == ours:
        return False
    return tensor.shape[0] == theirs and expected.shape[0] == ours and tensor.shape[1:] == expected.shape[1:]
