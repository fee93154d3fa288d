"""An exported ``.onnx`` file as a model: ``predict`` and ``evaluate`` take it as they take a
model folder. The file carries what using it needs as metadata (``model.json``: classes,
input size, normalisation, the data's record; ``config.yaml``: the recipe's test-time views
and the data's split), and onnxruntime runs it on the CPU behind a torch module, so that
preprocessing, test-time views and evaluation are the model folder's own code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from search.config import SpecError, UserError, parse_spec
from search.config.errors import one_line
from search.train.model_folder import CONFIG_FILE, INFO_FILE, ModelFolder
from search.train.model_info import parse_model_info

ONNX_EXTRA = "pip install 'resnet-search[onnx]'"


class OnnxModule(nn.Module):
    """An onnxruntime session as a torch module: float32 images in, logits out (on the CPU)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        try:
            import onnxruntime
        except ImportError:
            raise UserError(f"{path}: running an ONNX model needs onnxruntime: {ONNX_EXTRA}") from None
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own types for every kind of bad file
            raise UserError(f"{path}: onnxruntime cannot load it ({str(error).splitlines()[0]})") from None
        self.input = self.session.get_inputs()[0].name

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch = np.ascontiguousarray(images.detach().float().cpu().numpy())
        (logits,) = self.session.run(None, {self.input: batch})
        return torch.from_numpy(logits)


def onnx_folder(path: Path) -> ModelFolder:
    """The model folder an ``.onnx`` file stands for, from its metadata.

    Raises:
        UserError: Not an ONNX file, or one without our ``model.json`` and ``config.yaml``
            metadata (exported by ``resnet-search export-model``), or with unreadable metadata.
    """
    try:
        import onnx
    except ImportError:
        raise UserError(f"{path}: reading an ONNX model needs onnx: {ONNX_EXTRA}") from None
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf's DecodeError and friends: not an ONNX file
        raise UserError(f"{path}: not an ONNX model ({type(error).__name__})") from None
    metadata = {prop.key: prop.value for prop in proto.metadata_props}
    missing = [key for key in (INFO_FILE, CONFIG_FILE) if key not in metadata]
    if missing:
        raise UserError(
            f"{path}: no {' or '.join(missing)} in its metadata: not exported by this resnet-search "
            "(resnet-search export-model MODEL_DIR --format onnx writes one)"
        )
    try:
        raw = json.loads(metadata[INFO_FILE])
    except (ValueError, RecursionError) as error:
        raise UserError(one_line(f"{path}: its {INFO_FILE} metadata is not readable JSON ({error})")) from None
    info = parse_model_info(raw, f"{path}: its {INFO_FILE} metadata")
    try:
        spec = parse_spec(metadata[CONFIG_FILE], f"{path}:{CONFIG_FILE}")
        spec.fixed()
    except SpecError as error:
        raise UserError(one_line(f"{path}: its {CONFIG_FILE} metadata is not a fixed spec ({error})")) from None
    return ModelFolder(path, info, spec)


def open_onnx(path: str | Path, device: str | torch.device | None = None) -> tuple[ModelFolder, OnnxModule]:
    """An ``.onnx`` file exported by ``export-model``: the model folder it stands for, and the
    module that runs it (:func:`search.outputs.model.load_model` makes them a model).

    Raises:
        UserError: see :func:`onnx_folder`; ``device`` other than the CPU.
    """
    path = Path(path)
    if device is not None and torch.device(device).type != "cpu":
        raise UserError(f"{path}: an ONNX model runs on the cpu here (onnxruntime), not on {device}")
    return onnx_folder(path), OnnxModule(path)
