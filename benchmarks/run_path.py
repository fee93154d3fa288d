"""The path of one ``resnet-search run`` through the package, in the driver: how many of our
modules it calls into, and how many times it surveys the search space.

    python benchmarks/run_path.py

A two-trial search of tiny ResNets on generated images runs in this process (``search.cli.main``,
as the command does), with a profile hook that records the module of every function of
``search.*`` called on the driver's threads (Ray's workers are other processes and are not
counted), and counts the calls to :func:`search.config.random_samples`: each draws a sample
of the space, so each is one survey.
"""

from __future__ import annotations

import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
from PIL import Image

SPEC = """
study: {name: path, n_trials: 2, sampler: {name: random}, pruner: {name: none}, seed: 0}
data: {dataset: imagefolder, val_fraction: 0.25}
model:
  num_classes: 2
  stem: {width: 8}
  stages: [{blocks: {range: [1, 2]}, width: {choice: [8, 16]}}]
train: {epochs: 1, batch_size: 8}
resources: {cpu: 1, max_concurrent: 1}
"""


def _images(root: Path) -> None:
    rng = np.random.default_rng(0)
    for name, colour in (("red", (220, 40, 40)), ("blue", (50, 70, 230))):
        for split, count in (("train", 12), ("test", 4)):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(np.asarray(colour) + rng.normal(0, 25, (16, 16, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def _count_surveys() -> list[int]:
    """Wrap ``random_samples`` wherever a module of ours bound it; the list's length counts calls."""
    import search.engine.run  # noqa: F401 - loads every module a run uses, so that each is patched
    from search.config import suggesters

    original, calls = suggesters.random_samples, []

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("search") and getattr(module, "random_samples", None) is original:
            module.random_samples = counted  # type: ignore[attr-defined]
    return calls


def main() -> None:
    from search import cli

    modules: Counter[str] = Counter()
    surveys = _count_surveys()

    def hook(frame: FrameType, event: str, arg: Any) -> None:
        name = frame.f_globals.get("__name__", "") if event == "call" else ""
        if name.startswith("search."):
            modules[name] += 1

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _images(root / "data")
        (root / "path.yaml").write_text(SPEC)
        sys.setprofile(hook)
        threading.setprofile(hook)
        try:
            code = cli.main(
                [
                    "run",
                    str(root / "path.yaml"),
                    "--data-dir",
                    str(root / "data"),
                    "--storage",
                    f"sqlite:///{root / 'path.db'}",
                ]
            )
        finally:
            sys.setprofile(None)
            threading.setprofile(None)  # type: ignore[arg-type]
    print(f"exit status {code}")
    print(f"modules of search called on the driver: {len(modules)}")
    print(f"surveys of the space (random_samples calls): {len(surveys)}")
    for name in sorted(modules):
        print(f"  {name}")


if __name__ == "__main__":
    main()
