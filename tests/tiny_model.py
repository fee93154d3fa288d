"""A tiny model folder made by ``resnet-search train`` (a subprocess, on CPU, a few seconds), and
the CLI as a subprocess: for the tests of what ``predict``, ``evaluate``, ``export-model`` and
``report`` take in and write out."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

FIXED = """
study: {name: tiny}
data: {dataset: imagefolder, val_fraction: 0.25}
model:
  num_classes: 3
  stem: {width: 8}
  stages: [{blocks: 1, width: 8}, {blocks: 1, width: 16}]
train: {epochs: 2, batch_size: 8, optimizer: {name: sgd, lr: 0.05}}
"""


def cli(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600, **popen: Any
) -> subprocess.CompletedProcess:
    """``python -m search.cli ARGS`` in ``cwd``, output captured as text; ``env`` added to ours."""
    return subprocess.run(
        [sys.executable, "-m", "search.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        **popen,
    )


def train_tiny_model(root: Path, images: Path, cache: Path) -> Path:
    """``root/model``, trained on a copy of ``images`` (kept at ``root/data``, where ``evaluate``
    finds it again), with the data cache ``cache``."""
    root.mkdir(parents=True, exist_ok=True)
    data = Path(shutil.copytree(images, root / "data"))
    (root / "fixed.yaml").write_text(FIXED)
    args = ["train", "fixed.yaml", "--data-dir", str(data), "--out", "model", "--device", "cpu"]
    result = cli(args, root, {"RESNET_SEARCH_CACHE": str(cache)})
    assert result.returncode == 0, result.stderr
    return root / "model"
