"""``export-model --format onnx`` writes one self-contained file for a model under 2 GB (and
names every file it writes): the file alone, copied to another folder, loads in onnxruntime and
gives the model's logits. Weights past the limit go to ``model.onnx.data``, named beside it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from search.config import UserError
from search.outputs import export_model as exporting
from search.outputs.model import load_model


def cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "search.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def logits_of(onnx_file: Path, inputs: torch.Tensor) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"images": inputs.numpy()})
    return logits


def eager_logits(model_dir: Path, inputs: torch.Tensor) -> np.ndarray:
    model = load_model(model_dir, "cpu")
    with torch.inference_mode():
        return model.module(inputs.contiguous(memory_format=torch.channels_last)).float().numpy()


def test_the_onnx_export_is_one_file_that_loads_alone(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    out.mkdir()
    (out / "model.onnx.data").write_bytes(b"an earlier export's weights")  # stale: not the new export's
    exported = cli(["export-model", str(model_dir), "--format", "onnx", "--out", str(out), "--json"], tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)["files"] == [str(out / "model.onnx")]
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx"], "every file written is named"

    alone = tmp_path / "elsewhere"
    alone.mkdir()
    shutil.copyfile(out / "model.onnx", alone / "model.onnx")
    inputs = torch.randn(5, 3, 32, 32)
    assert np.abs(logits_of(alone / "model.onnx", inputs) - eager_logits(model_dir, inputs)).max() < 1e-4


def test_a_model_past_one_files_limit_is_one_line_and_writes_nothing(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exporting, "ONNX_MAX_BYTES", 1024)  # this small model counts as one over 2 GiB
    with pytest.raises(UserError, match="one ONNX file holds under 2 GiB"):
        exporting.export_model(model_dir, format="onnx", out_dir=tmp_path / "big")
    assert not (tmp_path / "big").exists() or not list((tmp_path / "big").iterdir())
