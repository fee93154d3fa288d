"""``resnet-search export-model``: a model folder's network as TorchScript (``model.pt``) or ONNX
(``model.onnx``), checked before it is reported done: the export is loaded again and run on a
batch, and its outputs must match the eager model's.

The exported network is the folder's module alone: it takes normalised float32 images
``N x C x H x W`` (any batch size) and returns logits; ``model.json`` (classes, input size,
mean and std) travels inside the file (TorchScript's extra files, ONNX metadata). Test-time
augmentation of the recipe is not part of it. ONNX needs the ``[onnx]`` extra (onnxscript
for torch's exporter, onnxruntime for the check).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from search.config import UserError
from search.train.model_folder import CONFIG_FILE, INFO_FILE, ModelFolder, build_trained, open_model_folder

FORMATS = {"torchscript": "model.pt", "onnx": "model.onnx"}
CHECK_BATCH = 8  # the export traces one batch size and is checked on another (batch size is dynamic)
EXPORT_BATCH = 2
RELATIVE_TOLERANCE = 1e-4  # of the largest logit: float32 kernels differ in their last bits
ONNX_EXTRA = "pip install 'resnet-search[onnx]'"


@dataclass(frozen=True)
class ExportCheck:
    """An export and its check: the largest absolute difference from the eager model's logits
    on a batch of ``batch`` images (None when no runtime could run the file), and what ran it."""

    path: Path
    format: str
    max_abs_diff: float | None
    tolerance: float
    checked_with: str
    batch: int

    def line(self) -> str:
        if self.max_abs_diff is None:
            return f"{self.path}: written; {self.checked_with}"
        return (
            f"{self.path}: max abs diff {self.max_abs_diff:.2e} from the eager model on a batch of "
            f"{self.batch} (tolerance {self.tolerance:.1e}, {self.checked_with})"
        )


def export_model(path: str | Path, *, format: str, out: str | Path | None = None) -> ExportCheck:
    """Export a model folder's network and check the export against the eager model.

    Args:
        path: The model folder.
        format: ``torchscript`` or ``onnx``.
        out: The file to write; default ``model.pt`` / ``model.onnx`` in the folder.

    Returns:
        The check, once it passed.

    Raises:
        UserError: Not a model folder, an unknown format, ONNX without its extra, or an
            export whose outputs differ from the eager model's (the file is removed).
    """
    if format not in FORMATS:
        raise UserError(f"--format {format!r}: allowed: {', '.join(FORMATS)}")
    folder = open_model_folder(path)
    module = build_trained(folder, "cpu")
    target = Path(out) if out is not None else folder.path / FORMATS[format]
    target.parent.mkdir(parents=True, exist_ok=True)
    inputs = _batch(folder, CHECK_BATCH, seed=1)
    with torch.inference_mode():
        expected = _logits(module(inputs))
    actual: torch.Tensor | None
    if format == "torchscript":
        actual, checked_with = _torchscript(module, folder, target, inputs)
    else:
        actual, checked_with = _onnx(module, folder, target, inputs)
    tolerance = RELATIVE_TOLERANCE * max(1.0, float(expected.abs().max()))
    if actual is None:
        return ExportCheck(target, format, None, tolerance, checked_with, CHECK_BATCH)
    diff = float((actual - expected).abs().max())
    if not diff <= tolerance:  # also catches NaN
        target.unlink(missing_ok=True)
        raise UserError(
            f"{target}: the {format} export's outputs differ from the eager model's by {diff:.3g} "
            f"(tolerance {tolerance:.1e}); the file was removed"
        )
    return ExportCheck(target, format, diff, tolerance, checked_with, CHECK_BATCH)


def _batch(folder: ModelFolder, n: int, seed: int) -> torch.Tensor:
    """``n`` seeded random images, normalised as the model's inputs are (float32, contiguous)."""
    generator = torch.Generator().manual_seed(seed)
    size = folder.input_size
    pixels = torch.randint(0, 256, (n, folder.in_channels, size, size), generator=generator, dtype=torch.uint8)
    mean = torch.tensor(folder.mean).view(1, -1, 1, 1)
    std = torch.tensor(folder.std).view(1, -1, 1, 1)
    return ((pixels.float() / 255 - mean) / std).contiguous()


def _logits(out: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    return (out[0] if isinstance(out, tuple) else out).float()


def _torchscript(
    module: nn.Module, folder: ModelFolder, target: Path, inputs: torch.Tensor
) -> tuple[torch.Tensor, str]:
    """Trace, save with ``model.json`` inside, load back and run on ``inputs``."""
    example = _batch(folder, EXPORT_BATCH, seed=0)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch 2.14 marks TorchScript deprecated; it still saves and loads
        traced = torch.jit.trace(module, example, check_trace=False)
        extra = {INFO_FILE: (folder.path / INFO_FILE).read_text(encoding="utf-8")}
        torch.jit.save(traced, str(target), _extra_files=extra)
        loaded = torch.jit.load(str(target), map_location="cpu")
        with torch.inference_mode():
            actual = _logits(loaded(inputs))
    return actual, f"torch.jit.load, torch {torch.__version__}"


def _onnx(
    module: nn.Module, folder: ModelFolder, target: Path, inputs: torch.Tensor
) -> tuple[torch.Tensor | None, str]:
    """Export with torch's exporter (dynamic batch), add ``model.json`` as metadata, run it in
    onnxruntime; without onnxruntime the file is only checked by ``onnx.checker``."""
    try:
        import onnx
        import onnxscript  # noqa: F401 - torch's exporter needs it; imported here to fail with our message
    except ImportError as error:
        raise UserError(f"ONNX export needs {error.name}: {ONNX_EXTRA}") from None
    example = _batch(folder, EXPORT_BATCH, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(target),
            dynamo=True,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )
    proto = onnx.load(str(target))
    info = json.loads((folder.path / INFO_FILE).read_text(encoding="utf-8"))
    config = (folder.path / CONFIG_FILE).read_text(encoding="utf-8")  # evaluate and predict read it back
    for key, value in (
        ("model.json", json.dumps(info)),
        ("classes", json.dumps(info["classes"])),
        (CONFIG_FILE, config),
    ):
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(target))
    onnx.checker.check_model(str(target))
    try:
        import onnxruntime
    except ImportError:
        return None, f"structure checked with onnx.checker; outputs not compared (no onnxruntime: {ONNX_EXTRA})"
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"images": inputs.numpy()})
    return torch.from_numpy(logits).float(), f"onnxruntime {onnxruntime.__version__}"
