"""A model folder: one layout wherever a trained model comes out (``train``, ``retrain``, the
best trials of ``run``), which carries everything needed to use the model correctly.

- ``model.safetensors``: the weights (a state dict; loading it runs no code, unlike a pickle).
- ``config.yaml``: the model's fixed spec; ``resnet-search train config.yaml`` trains it again.
- ``model.json``: what using it needs and where it came from (:data:`MODEL_SCHEMA_VERSION`):
  classes in order, input size and channels, normalisation, params and FLOPs, val and test
  accuracy, how it was evaluated, the data's record, study, trial, seed, versions.
- ``metrics.json``, ``history.csv``, ``curves.html`` (:func:`~search.train.run_files.write_outputs`)
  and a ``README.md`` model card (:mod:`~search.train.model_card`).

Reading needs no study, no Ray and no dataset: a folder copied to another machine loads.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import platform
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from torch import nn

from search._version import __version__
from search.budget import fast_count
from search.config import (
    InvalidValue,
    ModelConfig,
    SpecError,
    TorchvisionResNetConfig,
    TrialConfig,
    UserError,
    fixed_document,
    load_spec,
    to_plain,
)
from search.config.errors import one_line
from search.config.files import write_bytes
from search.config.schema import Spec
from search.data import ImageDataset
from search.data.fingerprint import DataRecord
from search.data.fit import PIXEL_NAMES, RESIZE_TEXTS
from search.models import build_model
from search.models.geometry import check_fits
from search.train.epoch import BatchFormat
from search.train.model_card import model_card
from search.train.model_info import (
    FORMULA,
    INFO_FILE,
    MODEL_SCHEMA_VERSION,
    WEIGHTS_FILE,
    DataInfo,
    Evaluated,
    InputInfo,
    ModelInfo,
    Normalization,
    WeightsInfo,
    checked_document,
    read_model_info,
)
from search.train.recipe import cpu_channels_last_is_safe, resolve_amp_dtype, resolve_channels_last
from search.train.result import TrainResult
from search.train.run_files import write_outputs, write_text

__all__ = [
    "CARD_FILE",
    "CONFIG_FILE",
    "INFO_FILE",
    "MODEL_SCHEMA_VERSION",
    "WEIGHTS_FILE",
    "ModelFolder",
    "ModelSource",
    "build_trained",
    "check_fit",
    "check_outputs",
    "eval_format",
    "open_model_folder",
    "read_weights",
    "save_weights",
    "write_model_folder",
    "FolderContents",
    "write_run",
]
CONFIG_FILE = "config.yaml"
CARD_FILE = "README.md"


@dataclass(frozen=True)
class ModelSource:
    """Where a trained model came from: its study and trial (None for ``train``), the split it
    trained on (``train``, or ``train+val`` for a final retraining), the data's record."""

    study: str | None = None
    trial: int | None = None
    trained_on: Literal["train", "train+val"] = "train"
    data: DataRecord | None = None


@dataclass(frozen=True)
class ModelFolder:
    """A model folder as read back and checked: its path, ``model.json`` and the fixed spec of
    ``config.yaml`` (see :func:`open_model_folder`)."""

    path: Path
    info: ModelInfo
    spec: Spec

    @property
    def trial(self) -> TrialConfig:
        return self.spec.fixed()

    @property
    def classes(self) -> tuple[str, ...]:
        return self.info.classes

    @property
    def input_size(self) -> int:
        return self.info.input.size

    @property
    def in_channels(self) -> int:
        return self.info.input.channels

    @property
    def mean(self) -> tuple[float, ...]:
        return self.info.normalization.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.info.normalization.std

    @property
    def data(self) -> DataRecord | None:
        return self.info.data.record() if self.info.data is not None else None


@dataclass(frozen=True)
class FolderContents:
    """What a model folder records besides the weights.

    Attributes:
        spec: The spec the config came from (its data, study, budget and resources sections
            go into ``config.yaml``).
        trial: The config the model trained with (this seed's).
        data: The data it trained on: classes, image size, mean and std.
        source: Study, trial, training split and the data's record.
        device: Where it trained; evaluation there used the precision ``model.json`` records.
    """

    spec: Spec
    trial: TrialConfig
    data: ImageDataset
    source: ModelSource
    device: str | torch.device


def write_model_folder(folder: str | Path, result: TrainResult, contents: FolderContents) -> Path:
    """Write a trained model's folder (see the module docstring); files are replaced atomically.

    Args:
        folder: The folder (made if missing).
        result: The finished run; its ``model`` holds the weights.
        contents: The config, data, source and device it records.

    Returns:
        The folder.
    """
    assert result.model is not None, "a finished run holds its model"
    folder = Path(folder)
    spec, trial, data, source = contents.spec, contents.trial, contents.data, contents.source
    counts = fast_count(trial.model, data.image_size)
    write_outputs(result, folder, config_dict=to_plain(trial), params=counts.params)
    weights = folder / WEIGHTS_FILE
    save_weights(result.model, weights)
    provenance = {"study": source.study, "trial": source.trial, "seed": trial.train.seed}
    document = fixed_document(spec, trial, provenance)
    write_text(folder / CONFIG_FILE, yaml.safe_dump(document, sort_keys=False))
    info = _info(result, contents, torch.device(contents.device), counts, _sha256(weights))
    write_text(folder / INFO_FILE, checked_document(info))
    write_text(folder / CARD_FILE, model_card(folder, info, trial))
    return folder


def write_run(folder: str | Path, result: TrainResult, contents: FolderContents) -> None:
    """What one finished training run leaves: its model folder, or, when it diverged (its
    weights make no model), its metrics, history, curves and ``config.yaml`` only.

    Args: as :func:`write_model_folder`.
    """
    if result.status != "nan":
        write_model_folder(folder, result, contents)
        return
    folder = Path(folder)
    trial = contents.trial
    params = fast_count(trial.model, contents.data.image_size).params
    write_outputs(result, folder, config_dict=to_plain(trial), params=params)
    write_text(folder / CONFIG_FILE, yaml.safe_dump(fixed_document(contents.spec, trial), sort_keys=False))


def save_weights(model: nn.Module, path: Path) -> None:
    """The state dict as safetensors, on the CPU and contiguous (channels_last tensors are not)."""
    from safetensors.torch import save

    state = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
    write_bytes(path, save(state, metadata={"format": "pt", "resnet-search": __version__}))


def _info(
    result: TrainResult, contents: FolderContents, device: torch.device, counts: Any, weights_sha256: str
) -> ModelInfo:
    """``model.json``'s content (see the module docstring); its ``input`` says how the data was
    decoded and fitted, so that ``predict`` does the same."""
    trial, data, source = contents.trial, contents.data, contents.source
    amp = resolve_amp_dtype(trial.train, device)
    return ModelInfo(
        schema_version=MODEL_SCHEMA_VERSION,
        classes=tuple(data.classes),
        input=InputInfo(
            channels=_in_channels(trial),
            size=data.image_size,
            pixels=PIXEL_NAMES[data.channels],  # type: ignore[arg-type]
            resize=RESIZE_TEXTS[contents.spec.data.resize_mode],
        ),
        normalization=Normalization(mean=tuple(data.mean), std=tuple(data.std), formula=FORMULA),
        params=counts.params,
        trainable_params=counts.trainable_params,
        flops=counts.flops,
        val_acc=_finite(result.final_val_acc),
        test_acc=_finite(result.test_acc),
        trained_on=source.trained_on,
        epochs=result.epochs_run,
        evaluated=Evaluated(device=device.type, precision="bf16" if amp is not None else "fp32"),
        data=DataInfo.of(source.data) if source.data is not None else None,
        study=source.study,
        trial=source.trial,
        seed=trial.train.seed,
        weights=WeightsInfo(file=WEIGHTS_FILE, sha256=weights_sha256),
        versions=_versions(),
        created=dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    )


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
    """Read and check a model folder: ``model.json`` (:func:`~search.train.model_info.read_model_info`),
    ``config.yaml`` (a fixed spec), that they agree (one class name per output of the model,
    its input channels, an input size the model takes), and that ``model.safetensors`` is
    the file ``model.json`` recorded (its SHA-256). The tensors are read on load
    (:func:`build_trained`), where their names, shapes and dtypes are checked.

    Raises:
        UserError: ``path`` is not a model folder, or one of its files is wrong (one line
            naming the file, the key and what is allowed).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"{folder}: not a model folder (no such folder); {_EXPECTED}")
    missing = [name for name in (INFO_FILE, CONFIG_FILE, WEIGHTS_FILE) if not (folder / name).is_file()]
    if missing:
        raise UserError(f"{folder}: not a model folder (no {', '.join(missing)}); {_EXPECTED}")
    info = read_model_info(folder / INFO_FILE)
    try:
        spec = load_spec(folder / CONFIG_FILE)
        trial = spec.fixed()
    except SpecError as error:
        raise UserError(f"{folder}: not a model folder ({error})") from None
    _check_agrees(folder / INFO_FILE, info, trial)
    _check_checksum(folder / WEIGHTS_FILE, info.weights.sha256)
    return ModelFolder(folder, info, spec)


def _check_agrees(source: Path, info: ModelInfo, trial: TrialConfig) -> None:
    """``model.json`` describes the model of ``config.yaml``: as many classes as outputs, its
    input channels, and an input size its layers take."""
    outputs = trial.model.num_classes
    if len(info.classes) != outputs:
        raise UserError(
            f"{source}: classes: {len(info.classes)} names, but the model of {CONFIG_FILE} has {outputs} "
            "outputs (model.num_classes): one name per output, in order"
        )
    if info.input.channels != _in_channels(trial):
        raise UserError(
            f"{source}: input.channels: {info.input.channels}, but the model of {CONFIG_FILE} takes "
            f"{_in_channels(trial)} (model.in_channels)"
        )
    try:
        check_fits(trial, info.input.size)
    except InvalidValue as error:
        raise UserError(
            f"{source}: input.size: {info.input.size} does not fit the model of {CONFIG_FILE} "
            f"({error.key}: {error.message})"
        ) from None


def _check_checksum(path: Path, recorded: str) -> None:
    """Refuse weights that are not the bytes ``model.json`` recorded: a changed byte or header."""
    try:
        actual = _sha256(path)
    except OSError as error:
        raise UserError(f"{path}: cannot be read ({error.strerror or error})") from None
    if actual != recorded:
        _check_readable(path)  # a truncated file says so rather than only that its checksum differs
        raise UserError(
            f"{path}: SHA-256 {actual[:12]}... differs from the {recorded[:12]}... that {INFO_FILE} records "
            "(weights.sha256): the file changed after it was written; copy the folder again"
        )


_EXPECTED = f"a model folder holds {WEIGHTS_FILE}, {CONFIG_FILE} and {INFO_FILE} (train, retrain and run write them)"


def _check_readable(path: Path) -> None:
    """Raises UserError when ``path`` is not a whole safetensors file (its header is read, not its tensors)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu"):
            pass
    except (SafetensorError, OSError) as error:
        raise UserError(one_line(f"{path}: truncated or not a safetensors file ({error})")) from None


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
        raise UserError(one_line(f"{path}: truncated or not a safetensors file ({error})")) from None


def check_fit(state: dict[str, torch.Tensor], model: nn.Module, path: Path) -> None:
    """Refuse weights whose names, shapes or dtypes differ from the model's, or that hold a NaN
    or an infinity, naming the first tensor that does. A dtype is checked as well as the
    shape: a header that claims another dtype of the same size loads, and computes nonsense.

    Raises:
        UserError: A tensor is missing, unexpected, of another shape or dtype, or not finite.
    """
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in state:
            raise UserError(f"{path}: does not fit the model of {CONFIG_FILE}: no tensor {name}")
        theirs = state[name]
        if tuple(theirs.shape) != tuple(tensor.shape):
            raise UserError(
                f"{path}: does not fit the model of {CONFIG_FILE}: {name} is {tuple(theirs.shape)} "
                f"in the file, {tuple(tensor.shape)} in the model"
            )
        if theirs.dtype != tensor.dtype:
            raise UserError(
                f"{path}: does not fit the model of {CONFIG_FILE}: {name} is {_dtype(theirs)} in the file, "
                f"{_dtype(tensor)} in the model"
            )
        if theirs.is_floating_point() and not bool(torch.isfinite(theirs).all()):
            raise UserError(f"{path}: {name} holds NaN or infinite values: these weights cannot predict")
    unexpected = [name for name in state if name not in expected]
    if unexpected:
        raise UserError(f"{path}: does not fit the model of {CONFIG_FILE}: unexpected tensor {unexpected[0]}")


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def build_trained(folder: ModelFolder, device: str | torch.device = "cpu") -> nn.Module:
    """The folder's model with its trained weights, in eval mode on ``device``.

    Pretrained weights and ``init_from`` of the config are not loaded: the folder's own
    weights replace them.

    Raises:
        UserError: The weights are truncated, do not fit the config, or make a model whose
            outputs are not finite (:func:`check_outputs`).
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
    model = model.to(device).eval()
    check_outputs(model, folder, torch.device(device))
    return model


def check_outputs(model: nn.Module, folder: ModelFolder, device: torch.device) -> None:
    """Refuse a model whose logits are not finite on a probe batch: black, white and noise
    images, normalised as ``model.json`` says. Finite weights can still overflow (a weight
    edited to 1e38 and its checksum recorded again): this is one line instead of a
    prediction of probability NaN.

    Raises:
        UserError: A logit of the probe is NaN or infinite.
    """
    side, channels = folder.input_size, folder.in_channels
    generator = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (1, channels, side, side), generator=generator, dtype=torch.uint8)
    pixels = torch.cat([torch.zeros_like(noise), torch.full_like(noise, 255), noise]).float()
    mean = torch.tensor(folder.mean).view(1, -1, 1, 1)
    std = torch.tensor(folder.std).view(1, -1, 1, 1)
    with torch.inference_mode():
        out = model(((pixels / 255 - mean) / std).to(device))
    logits = out[0] if isinstance(out, tuple) else out
    if not bool(torch.isfinite(logits).all()):
        raise UserError(
            f"{folder.path / WEIGHTS_FILE}: the model's outputs are not finite on a probe batch (black, white "
            f"and noise images normalised as {INFO_FILE} says): these weights and this normalisation cannot predict"
        )


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
