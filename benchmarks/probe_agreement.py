"""Whether ``run --dry-run`` and ``run`` agree on the time per training step on one machine.

Run: ``python benchmarks/probe_agreement.py [--rounds 3] [--spec spaces/smoke.yaml]``. Each
round runs ``resnet-search run SPEC --dry-run`` and then a real ``resnet-search run`` of one
trial of one epoch (a subprocess each, in a temporary folder, on a generated class-folder
dataset of the spec's number of classes: no download), reads the ``probe:`` line each one
prints (the same probe, :func:`search.engine.cost.probe_cost`) and prints both figures, their
difference, and the machine's load. The target: within 25% of each other.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml
from common import REPO, machine_load
from PIL import Image

MS_PER_STEP = re.compile(r"takes (\d+) ms per step")
TARGET = 0.25


def write_images(root: Path, classes: int, per_class: int = 30, size: int = 32) -> None:
    """A class-folder dataset of noisy solid colours: ``train/<class>`` and ``test/<class>``."""
    rng = np.random.default_rng(0)
    for index in range(classes):
        colour = rng.integers(20, 235, size=3)
        for split, count in (("train", per_class), ("test", per_class // 3)):
            folder = root / split / f"class{index}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = np.clip(colour + rng.normal(0, 25, size=(size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:03d}.png")


def probe_ms(args: list[str], cwd: Path) -> float:
    """``resnet-search ARGS``'s probe figure, in ms per step."""
    result = subprocess.run(
        [sys.executable, "-m", "search.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=1800
    )
    if result.returncode != 0:
        raise SystemExit(f"resnet-search {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    line = next(line for line in (result.stdout + result.stderr).splitlines() if line.startswith("probe: "))
    print(f"  {args[-1] if args[-1].startswith('--') else 'run'}: {line}", flush=True)
    return float(MS_PER_STEP.search(line)[1])  # type: ignore[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--spec", default=str(REPO / "spaces" / "smoke.yaml"))
    args = parser.parse_args()
    document = yaml.safe_load(Path(args.spec).read_text())
    document["study"].update(n_trials=1)
    document["data"] = {"dataset": "imagefolder", "image_size": 32, "val_fraction": 0.25}
    document["train"]["epochs"] = 1
    print(machine_load())
    differences = []
    with tempfile.TemporaryDirectory(prefix="resnet-search-probe-") as folder:
        work = Path(folder)
        write_images(work / "data", int(document["model"].get("num_classes", 10)))
        for round_ in range(args.rounds):
            document["study"]["name"] = f"probe{round_}"
            spec = work / f"probe{round_}.yaml"
            spec.write_text(yaml.safe_dump(document))
            base = ["run", str(spec), "--data-dir", str(work / "data"), "--keep", "0"]
            dry = probe_ms([*base, "--dry-run"], work)
            run = probe_ms(base, work)
            differences.append(abs(run - dry) / max(run, dry))
            print(f"round {round_ + 1}: dry run {dry:.0f} ms, run {run:.0f} ms per step: {differences[-1]:.1%} apart")
    print(
        f"{machine_load()}; apart by {statistics.median(differences):.1%} (median), {max(differences):.1%} at most; "
        f"target within {TARGET:.0%}: {'met' if max(differences) <= TARGET else 'missed'}"
    )


if __name__ == "__main__":
    main()
