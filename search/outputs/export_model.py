"""``resnet-search export-model``: a model folder's network as TorchScript (``model.pt``) or ONNX
(``model.onnx``), checked before it is reported done: the export is loaded again and run on a
batch, and its outputs must match the eager model's.

The exported network is the folder's module alone: it takes normalised float32 images
``N x C x H x W`` (any batch size) and returns logits; ``model.json`` (classes, input size,
mean and std) travels inside the file (TorchScript's extra files, ONNX metadata). The file is
made and checked in memory, then written atomically: a failed check or a full disk leaves
nothing behind. An ONNX export is one self-contained file (one file holds under 2 GiB; a
larger model is refused). Test-time augmentation of the recipe is not part of it. ONNX needs
the ``[onnx]`` extra (onnxscript for torch's exporter, onnxruntime for the check).
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search.config import UserError
from search.config.files import check_output_file, check_output_folder, write_bytes
from search.train.model_folder import CONFIG_FILE, INFO_FILE, ModelFolder, build_trained, open_model_folder

FORMATS = {"torchscript": "model.pt", "onnx": "model.onnx"}
CHECK_BATCH = 8  # the export traces one batch size and is checked on another (batch size is dynamic)
EXPORT_BATCH = 2
RELATIVE_TOLERANCE = 1e-4  # of the largest logit: float32 kernels differ in their last bits
ONNX_EXTRA = "pip install 'resnet-search[onnx]'"
ONNX_MAX_BYTES = 2**31  # protobuf's limit on one message: larger models need external data files


@dataclass(frozen=True)
class ExportCheck:
    """An export and its check: the largest absolute difference from the eager model's logits
    on a batch of ``batch`` images (None when no runtime could run the file), and what ran it.
    ``files`` are every file written (one: the model file, ``path``)."""

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

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.path,)

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": [str(f) for f in self.files],
            "format": self.format,
            "max_abs_diff": self.max_abs_diff,
            "tolerance": self.tolerance,
            "checked_with": self.checked_with,
            "batch": self.batch,
        }


def export_model(path: str | Path, *, format: str, out_dir: str | Path | None = None) -> ExportCheck:
    """Export a model folder's network and check the export against the eager model.

    The export is made and checked in memory and written once it passed, in one file (no
    ``.onnx.data`` beside it), atomically: whole or not at all.

    Args:
        path: The model folder.
        format: ``torchscript`` or ``onnx``.
        out_dir: The folder to write ``model.pt`` / ``model.onnx`` in; default the model folder.

    Returns:
        The check, once it passed.

    Raises:
        UserError: ``out_dir`` cannot be written (checked first), not a model folder, an unknown
            format, ONNX without its extra, an export whose outputs differ from the eager
            model's, or a failed write (a full disk): nothing is written then.
    """
    if format not in FORMATS:
        raise UserError(f"--format {format!r}: allowed: {', '.join(FORMATS)}")
    given = check_output_folder(out_dir) if out_dir is not None else None
    folder = open_model_folder(path)
    target = check_output_file((given or folder.path) / FORMATS[format], flag="")
    module = build_trained(folder, "cpu")
    inputs = _batch(folder, CHECK_BATCH, seed=1)
    with torch.inference_mode():
        expected = _logits(module(inputs))
    exported = _torchscript(module, folder, inputs) if format == "torchscript" else _onnx(module, folder, inputs)
    tolerance = RELATIVE_TOLERANCE * max(1.0, float(expected.abs().max()))
    diff = None if exported.logits is None else float((exported.logits - expected).abs().max())
    if diff is not None and not diff <= tolerance:  # also catches NaN
        raise UserError(
            f"{target}: the {format} export's outputs differ from the eager model's by {diff:.3g} "
            f"(tolerance {tolerance:.1e}); nothing was written"
        )
    write_bytes(target, exported.data)
    # The file holds its weights: an earlier export's ``.onnx.data`` beside it is stale.
    target.with_name(target.name + ".data").unlink(missing_ok=True)
    return ExportCheck(target, format, diff, tolerance, exported.checked_with, CHECK_BATCH)


@dataclass(frozen=True)
class _Export:
    """An export in memory: the file's bytes, its logits on the check batch (None when no
    runtime could run it), and what ran it."""

    data: bytes
    logits: torch.Tensor | None
    checked_with: str


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


def _torchscript(module: nn.Module, folder: ModelFolder, inputs: torch.Tensor) -> _Export:
    """Trace, save with ``model.json`` inside (to memory: torch aborts the process on a failed
    file write), load back and run on ``inputs``."""
    example = _batch(folder, EXPORT_BATCH, seed=0)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch 2.14 marks TorchScript deprecated; it still saves and loads
        traced = torch.jit.trace(module, example, check_trace=False)
        extra = {INFO_FILE: json.dumps(folder.info.as_dict(), indent=2)}
        torch.jit.save(traced, buffer, _extra_files=extra)
        loaded = torch.jit.load(io.BytesIO(buffer.getvalue()), map_location="cpu")
        with torch.inference_mode():
            actual = _logits(loaded(inputs))
    return _Export(buffer.getvalue(), actual, f"torch.jit.load, torch {torch.__version__}")


def _onnx(module: nn.Module, folder: ModelFolder, inputs: torch.Tensor) -> _Export:
    """Export with torch's exporter (dynamic batch) to memory, add ``model.json`` and ``config.yaml``
    as metadata, run it in onnxruntime; without onnxruntime the model is only checked by
    ``onnx.checker``."""
    try:
        import onnx
        import onnxscript  # noqa: F401 - torch's exporter needs it; imported here to fail with our message
    except ImportError as error:
        raise UserError(f"ONNX export needs {error.name}: {ONNX_EXTRA}") from None
    example = _batch(folder, EXPORT_BATCH, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (example,),
            None,  # in memory: a file would bring a .onnx.data file of the weights beside it
            dynamo=True,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )
    assert program is not None, "the dynamo exporter returns its program"
    proto = program.model_proto
    info = folder.info.as_dict()
    config = (folder.path / CONFIG_FILE).read_text(encoding="utf-8")  # evaluate and predict read it back
    for key, value in (
        (INFO_FILE, json.dumps(info)),
        ("classes", json.dumps(info["classes"])),
        (CONFIG_FILE, config),
    ):
        proto.metadata_props.add(key=key, value=value)
    if proto.ByteSize() >= ONNX_MAX_BYTES:
        raise UserError(
            f"{folder.path}: the ONNX model would be {proto.ByteSize():,} bytes; one ONNX file holds under 2 GiB"
        )
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    try:
        import onnxruntime
    except ImportError:
        return _Export(
            data, None, f"structure checked with onnx.checker; outputs not compared (no onnxruntime: {ONNX_EXTRA})"
        )
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"images": inputs.numpy()})
    return _Export(data, torch.from_numpy(logits).float(), f"onnxruntime {onnxruntime.__version__}")
