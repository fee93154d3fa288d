"""``resnet-search export-model MODEL_DIR --format onnx --quantize int8``: post-training static
quantization of the checked ONNX export, and what it costs and gains.

onnxruntime's ``quantize_static`` (QDQ, int8 weights per channel, int8 activations) is
calibrated on ``--calibration`` training images of the model folder's recorded data (a seeded
draw, normalised as the model's inputs are). Then the int8 file and its fp32 source are both
evaluated on the test split, by ``evaluate``'s own code (the recipe's test-time views
included), and timed on this machine as the folder's ``budget.latency`` says (its defaults:
one thread, batch 1). ``model.json`` and the model card record both, with the machine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from search.budget.latency import LatencyMeasurement, quantize_onnx, time_onnx
from search.config import UserError
from search.data.fingerprint import load_recorded
from search.outputs.evaluate import ModelEvaluation, evaluate_model
from search.train.model_card import model_card
from search.train.model_folder import CARD_FILE, INFO_FILE, ModelFolder, open_model_folder
from search.train.model_info import checked_document, parse_model_info
from search.train.run_files import write_text

QUANTIZATIONS = ("int8",)
DEFAULT_CALIBRATION = 256
CALIBRATION_BATCH = 32
DEPLOYMENT = "deployment"  # model.json's key for the exports' accuracy and latency


@dataclass(frozen=True)
class Quantized:
    """An int8 export against its fp32 source: test accuracy and latency of each."""

    fp32: Path
    int8: Path
    calibration: int
    fp32_eval: ModelEvaluation
    int8_eval: ModelEvaluation
    fp32_latency: LatencyMeasurement
    int8_latency: LatencyMeasurement

    def lines(self) -> list[str]:
        points = (self.int8_eval.accuracy - self.fp32_eval.accuracy) * 100
        speedup = self.fp32_latency.median_ms / self.int8_latency.median_ms
        return [
            f"{self.int8}: int8, calibrated on {self.calibration:,} training images "
            f"({self.int8.stat().st_size / 2**20:.2f} MiB, fp32 {self.fp32.stat().st_size / 2**20:.2f} MiB)",
            f"test accuracy: int8 {self.int8_eval.accuracy:.2%}, fp32 {self.fp32_eval.accuracy:.2%} "
            f"({points:+.2f} points; {self.int8_eval.images:,} images of {self.int8_eval.data})",
            f"latency: int8 {self.int8_latency.line()}",
            f"latency: fp32 {self.fp32_latency.line()} (int8 {speedup:.2f}x as fast)",
        ]

    def record(self, path: Path) -> dict[str, Any]:
        def entry(file: Path, evaluation: ModelEvaluation, latency: LatencyMeasurement) -> dict[str, Any]:
            name = file.name if file.parent == path else str(file)
            return {
                "file": name,
                "bytes": file.stat().st_size,
                "test_acc": evaluation.accuracy,
                "test_images": evaluation.images,
                "latency": latency.as_dict(),
            }

        return {
            "fp32": {**entry(self.fp32, self.fp32_eval, self.fp32_latency), "calibration_images": None},
            "int8": {**entry(self.int8, self.int8_eval, self.int8_latency), "calibration_images": self.calibration},
        }


def quantize_model(
    path: str | Path,
    onnx_file: str | Path,
    *,
    quantize: str = "int8",
    calibration: int = DEFAULT_CALIBRATION,
    data_dir: str | Path | None = None,
    download: bool = False,
    log: Callable[[str], None] = print,
) -> Quantized:
    """Quantize a model folder's checked fp32 ONNX export; evaluate and time both; record them.

    Args:
        path: The model folder.
        onnx_file: Its fp32 ONNX export (``export-model --format onnx`` wrote and checked it).
        quantize: ``int8``.
        calibration: Training images to calibrate on (at most the training split's).
        data_dir: Other data (beats the folder's recorded data), for calibration and test.
        download: Whether a known dataset found nowhere may be downloaded.
        log: Receives what the data loading says.

    Raises:
        UserError: Another quantization, the folder's data gone or changed, an empty split.
    """
    if quantize not in QUANTIZATIONS:
        raise UserError(f"--quantize {quantize!r}: allowed: {', '.join(QUANTIZATIONS)}")
    folder = open_model_folder(path)
    fp32 = Path(onnx_file)
    batches = _calibration_batches(folder, calibration, data_dir, download, log)
    int8 = quantize_onnx(fp32, fp32.with_name(f"{fp32.stem}.int8.onnx"), batches)
    _copy_metadata(fp32, int8)
    fp32_eval, _ = evaluate_model(fp32, data_dir=data_dir, download=download, device="cpu", log=log)
    int8_eval, _ = evaluate_model(int8, data_dir=data_dir, download=download, device="cpu", log=log)
    settings = replace(folder.spec.budget.latency_settings, runtime="onnxruntime", device="cpu", image_size=None)
    size, channels = folder.input_size, folder.in_channels
    result = Quantized(
        fp32,
        int8,
        sum(len(b) for b in batches),
        fp32_eval,
        int8_eval,
        time_onnx(fp32, size, channels, replace(settings, precision="fp32")),
        time_onnx(int8, size, channels, replace(settings, precision="int8")),
    )
    _record(folder, result)
    return result


def _calibration_batches(
    folder: ModelFolder, count: int, data_dir: str | Path | None, download: bool, log: Callable[[str], None]
) -> list[np.ndarray]:
    """``count`` training images (a seeded draw), normalised as the model's inputs, in batches."""
    owner = f"model {folder.path}"
    data, record = load_recorded(folder.spec.data, folder.data, data_dir, owner=owner, download=download, log=log)
    train = data.train
    if len(train) == 0:
        raise UserError(f"{record.location}: the training split is empty: nothing to calibrate on")
    # Only the drawn rows are read: the training set may be larger than memory.
    chosen = train.read(torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:count])
    mean = torch.tensor(folder.mean).view(1, -1, 1, 1)
    std = torch.tensor(folder.std).view(1, -1, 1, 1)
    normalised = ((chosen.float() / 255 - mean) / std).contiguous()
    return [batch.numpy() for batch in normalised.split(CALIBRATION_BATCH)]


def _copy_metadata(source: Path, target: Path) -> None:
    """The int8 file carries the fp32 file's ``model.json`` and ``config.yaml`` (predict and evaluate read them)."""
    import onnx

    proto = onnx.load(str(target))
    del proto.metadata_props[:]
    proto.metadata_props.extend(onnx.load(str(source), load_external_data=False).metadata_props)
    onnx.save(proto, str(target))


def _record(folder: ModelFolder, result: Quantized) -> None:
    """``model.json``'s ``deployment`` entry and the model card, rewritten with the figures;
    the entry is read back as a reader reads it before it is written."""
    document = {**folder.info.as_dict(), DEPLOYMENT: result.record(folder.path)}
    info = parse_model_info(document, f"{folder.path / INFO_FILE} (being written)")
    write_text(folder.path / INFO_FILE, checked_document(info))
    write_text(folder.path / CARD_FILE, model_card(folder.path, info, folder.trial))
