"""A model folder: one layout wherever a trained model comes out (``train``, ``retrain``, the
best trials of ``run``), which carries everything needed to use the model correctly.

- ``model.safetensors``: the weights (a state dict; loading it runs no code, unlike a pickle).
- ``config.yaml``: the model's fixed spec; ``resnet-search train config.yaml`` trains it again.
- ``model.json``: what using it needs and where it came from (:data:`MODEL_SCHEMA_VERSION`):
  classes in order, input size and channels, normalisation, params and FLOPs, val and test
  accuracy, how it was evaluated, the data's record, study, trial, seed, versions.
- ``metrics.json``, ``history.csv``, ``curves.html`` (:func:`~search.train.outputs.write_outputs`)
  and a ``README.md`` model card (:mod:`~search.train.model_card`).

Reading needs no study, no Ray and no dataset: a folder copied to another machine loads.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import platform
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from search._version import __version__
from search.budget import fast_count
from search.config import (
    ModelConfig,
    SpecError,
    TorchvisionResNetConfig,
    TrialConfig,
    UserError,
    fixed_document,
    load_spec,
    to_plain,
)
from search.config.schema import Spec
from search.data import ImageDataset
from search.data.fingerprint import DataRecord
from search.models import build_model
from search.train.epoch import BatchFormat
from search.train.model_card import model_card
from search.train.outputs import write_outputs, write_text
from search.train.recipe import cpu_channels_last_is_safe, resolve_amp_dtype, resolve_channels_last
from search.train.result import TrainResult

MODEL_SCHEMA_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
INFO_FILE = "model.json"
CARD_FILE = "README.md"
RESIZE = "shorter side to the input size, then a centre crop (Pillow bicubic, antialiased)"


@dataclass(frozen=True)
class ModelSource:
    """Where a trained model came from: its study and trial (None for ``train``), the split it
    trained on (``train``, or ``train+val`` for a final retraining), the data's record."""

    study: str | None = None
    trial: int | None = None
    trained_on: str = "train"
    data: DataRecord | None = None


@dataclass(frozen=True)
class ModelFolder:
    """A model folder as read back: its path, ``model.json`` and the fixed spec of ``config.yaml``."""

    path: Path
    info: dict[str, Any]
    spec: Spec

    @property
    def trial(self) -> TrialConfig:
        return self.spec.fixed()

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.info["classes"])

    @property
    def input_size(self) -> int:
        return int(self.info["input"]["size"])

    @property
    def in_channels(self) -> int:
        return int(self.info["input"]["channels"])

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.info["normalization"]["mean"])

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.info["normalization"]["std"])

    @property
    def data(self) -> DataRecord | None:
        return DataRecord.from_dict(self.info.get("data"))


def write_model_folder(
    folder: str | Path,
    result: TrainResult,
    *,
    spec: Spec,
    trial: TrialConfig,
    data: ImageDataset,
    source: ModelSource,
    device: str | torch.device,
) -> Path:
    """Write a trained model's folder (see the module docstring); files are replaced atomically.

    Args:
        folder: The folder (made if missing).
        result: The finished run; its ``model`` holds the weights.
        spec: The spec the config came from (its data, study, budget and resources sections
            go into ``config.yaml``).
        trial: The config the model trained with (this seed's).
        data: The data it trained on: classes, image size, mean and std.
        source: Study, trial, training split and the data's record.
        device: Where it trained; evaluation there used the precision ``model.json`` records.

    Returns:
        The folder.
    """
    assert result.model is not None, "a finished run holds its model"
    folder = Path(folder)
    counts = fast_count(trial.model, data.image_size)
    write_outputs(result, folder, config_dict=to_plain(trial), params=counts.params)
    weights = folder / WEIGHTS_FILE
    save_weights(result.model, weights)
    provenance = {"study": source.study, "trial": source.trial, "seed": trial.train.seed}
    document = fixed_document(spec, trial, provenance)
    write_text(folder / CONFIG_FILE, yaml.safe_dump(document, sort_keys=False))
    info = _info(result, trial, data, source, torch.device(device), counts, _sha256(weights))
    write_text(folder / INFO_FILE, json.dumps(info, indent=2) + "\n")
    write_text(folder / CARD_FILE, model_card(folder, info, trial))
    return folder


def write_run(
    folder: str | Path,
    result: TrainResult,
    *,
    spec: Spec,
    trial: TrialConfig,
    data: ImageDataset,
    source: ModelSource,
    device: str | torch.device,
) -> None:
    """What one finished training run leaves: its model folder, or, when it diverged (its
    weights make no model), its metrics, history, curves and ``config.yaml`` only.

    Args: as :func:`write_model_folder`.
    """
    if result.status != "nan":
        write_model_folder(folder, result, spec=spec, trial=trial, data=data, source=source, device=device)
        return
    folder = Path(folder)
    params = fast_count(trial.model, data.image_size).params
    write_outputs(result, folder, config_dict=to_plain(trial), params=params)
    write_text(folder / CONFIG_FILE, yaml.safe_dump(fixed_document(spec, trial), sort_keys=False))


def save_weights(model: nn.Module, path: Path) -> None:
    """The state dict as safetensors, on the CPU and contiguous (channels_last tensors are not)."""
    from safetensors.torch import save_file

    state = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "resnet-search": __version__})
    os.replace(tmp, path)


def _info(
    result: TrainResult,
    trial: TrialConfig,
    data: ImageDataset,
    source: ModelSource,
    device: torch.device,
    counts: Any,
    weights_sha256: str,
) -> dict[str, Any]:
    """``model.json``'s content (see the module docstring)."""
    amp = resolve_amp_dtype(trial.train, device)
    return {
        "schema_version": MODEL_SCHEMA_VERSION,
        "classes": list(data.classes),
        "input": {"channels": _in_channels(trial), "size": data.image_size, "pixels": "RGB", "resize": RESIZE},
        "normalization": {"mean": list(data.mean), "std": list(data.std), "formula": "(pixel / 255 - mean) / std"},
        "params": counts.params,
        "trainable_params": counts.trainable_params,
        "flops": counts.flops,
        "val_acc": _finite(result.final_val_acc),
        "test_acc": _finite(result.test_acc),
        "trained_on": source.trained_on,
        "epochs": result.epochs_run,
        "evaluated": {"device": device.type, "precision": "bf16" if amp is not None else "fp32"},
        "data": source.data.as_dict() if source.data is not None else None,
        "study": source.study,
        "trial": source.trial,
        "seed": trial.train.seed,
        "weights": {"file": WEIGHTS_FILE, "sha256": weights_sha256},
        "versions": _versions(),
        "created": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def _in_channels(trial: TrialConfig) -> int:
    return int(getattr(trial.model, "in_channels", 3))


def _finite(value: float | None) -> float | None:
    return value if value is not None and value == value and abs(value) != float("inf") else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"resnet-search": __version__, "python": platform.python_version()}
    for package in ("torch", "torchvision", "safetensors"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


# --------------------------------------------------------------------------- reading


def open_model_folder(path: str | Path) -> ModelFolder:
    """Read a model folder's ``model.json`` and ``config.yaml`` (the weights are read on load).

    Raises:
        UserError: ``path`` is not a model folder (a file missing, ``model.json`` unreadable
            or of a newer schema, ``config.yaml`` not a fixed spec).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"{folder}: not a model folder (no such folder); {_EXPECTED}")
    missing = [name for name in (INFO_FILE, CONFIG_FILE, WEIGHTS_FILE) if not (folder / name).is_file()]
    if missing:
        raise UserError(f"{folder}: not a model folder (no {', '.join(missing)}); {_EXPECTED}")
    try:
        info = json.loads((folder / INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"{folder / INFO_FILE}: not readable JSON ({error})") from None
    version = info.get("schema_version") if isinstance(info, dict) else None
    if not isinstance(version, int) or version < 1:
        raise UserError(f"{folder / INFO_FILE}: no schema_version: not a resnet-search model.json")
    if version > MODEL_SCHEMA_VERSION:
        raise UserError(
            f"{folder / INFO_FILE}: schema version {version}, newer than this resnet-search's "
            f"{MODEL_SCHEMA_VERSION}: upgrade resnet-search to read it"
        )
    try:
        spec = load_spec(folder / CONFIG_FILE)
        spec.fixed()
    except SpecError as error:
        raise UserError(f"{folder}: not a model folder ({error})") from None
    return ModelFolder(folder, info, spec)


_EXPECTED = f"a model folder holds {WEIGHTS_FILE}, {CONFIG_FILE} and {INFO_FILE} (train, retrain and run write them)"


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, on the CPU.

    Raises:
        UserError: The file is truncated or not a safetensors file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as error:
        raise UserError(f"{path}: truncated or not a safetensors file ({error})") from None


def check_fit(state: dict[str, torch.Tensor], model: nn.Module, path: Path) -> None:
    """Refuse weights whose names or shapes differ from the model's, naming the first that does.

    Raises:
        UserError: A tensor is missing, unexpected or of another shape.
    """
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in state:
            raise UserError(f"{path}: does not fit the model of config.yaml: no tensor {name}")
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise UserError(
                f"{path}: does not fit the model of config.yaml: {name} is {tuple(state[name].shape)} "
                f"in the file, {tuple(tensor.shape)} in the model"
            )
    unexpected = [name for name in state if name not in expected]
    if unexpected:
        raise UserError(f"{path}: does not fit the model of config.yaml: unexpected tensor {unexpected[0]}")


def build_trained(folder: ModelFolder, device: str | torch.device = "cpu") -> nn.Module:
    """The folder's model with its trained weights, in eval mode on ``device``.

    Pretrained weights and ``init_from`` of the config are not loaded: the folder's own
    weights replace them.

    Raises:
        UserError: The weights are truncated or do not fit the config.
    """
    trial = folder.trial
    model_config: ModelConfig = replace(trial.model, init_from=None)
    if isinstance(model_config, TorchvisionResNetConfig):
        model_config = replace(model_config, weights=None)
    model = build_model(model_config, folder.input_size)
    path = folder.path / WEIGHTS_FILE
    state = read_weights(path)
    check_fit(state, model, path)
    model.load_state_dict(state)
    return model.to(device).eval()


def eval_format(trial: TrialConfig, model: nn.Module, folder: ModelFolder, device: torch.device) -> BatchFormat:
    """How batches enter ``model`` for evaluation, as in the training loop (``_set_up``): the same
    memory format and autocast on the same device, so accuracy is reproduced to the image.
    ``model`` is converted to channels_last where the loop would have."""
    cfg = trial.train
    channels_last = resolve_channels_last(cfg, device) and (device.type != "cpu" or cpu_channels_last_is_safe(model))
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return BatchFormat(
        device=device,
        mean=torch.tensor(folder.mean, dtype=torch.float32, device=device),
        std=torch.tensor(folder.std, dtype=torch.float32, device=device),
        channels_last=channels_last,
        amp_dtype=resolve_amp_dtype(cfg, device),
    )
