"""The noise the benchmark's comparisons must beat: the same config trained with several seeds,
validated on the benchmark's 5,000 validation images and tested on the 10,000 test images.

Two parts: the training seed's (the spread over seeds of one config's accuracy: no larger
validation split removes it) and the validation sample's (the binomial standard error of
an accuracy ``p`` measured on ``n`` images, ``sqrt(p(1 - p) / n)``: 1,000 images against
5,000). Writes ``noise.json``, which the benchmark's report reads, into ``--out``.

    python -m benchmarks.search_quality.noise [--seeds 0,1,2,3,4,5] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import yaml

from search.config import parse_spec
from search.data import load_dataset
from search.train import TrainOptions, train

from .settings import DEFAULT_ARCHIVE, DEFAULT_RECORDS, FULL, REPO, VAL_IMAGES

CONFIGS = {
    "seed 003 (paper_se_443_cpu.yaml)": {},
    "a small one: 1/1/1 blocks": {
        "stages": [{"blocks": 1, "width": 8}, {"blocks": 1, "width": 16}, {"blocks": 1, "width": 32}]
    },
}
RETRAIN_SEEDS = 3  # the benchmark's retraining: the mean of 3 seeds per winner
Z95 = 1.96


def measure(config_name: str, model_update: dict, seeds: Sequence[int], data_dir: str | None) -> dict:
    """Train one config once per seed; its validation and test accuracies and their spread."""
    raw = yaml.safe_load((REPO / "spaces" / "paper_se_443_cpu.yaml").read_text(encoding="utf-8"))
    raw["model"].update(model_update)
    raw["data"].update(FULL["data"])
    spec = parse_spec(yaml.safe_dump(raw), source=str(REPO / "spaces" / "paper_se_443_cpu.yaml"))
    data = load_dataset(spec.data, data_dir=data_dir, download=False)
    trial = spec.fixed()
    val, test = [], []
    for seed in seeds:
        result = train(replace(trial, train=replace(trial.train, seed=seed)), data, TrainOptions(evaluate_test=True))
        val.append(result.final_val_acc)
        assert result.test_acc is not None  # evaluate_test, and CIFAR-10 has a test split
        test.append(result.test_acc)
    p = statistics.fmean(val)
    return {
        "config": config_name,
        "seeds": list(seeds),
        "val_images": len(data.val),
        "test_images": len(data.test),
        "val_acc": val,
        "test_acc": test,
        "val_mean": p,
        "val_seed_std": statistics.stdev(val),
        "test_mean": statistics.fmean(test),
        "test_seed_std": statistics.stdev(test),
        "val_sampling_se": {str(n): math.sqrt(p * (1 - p) / n) for n in (1000, 2000, VAL_IMAGES)},
    }


def summary(rows: list[dict]) -> dict:
    """The pooled figures: one measurement's noise at 1,000 and 5,000 validation images, and the
    threshold a difference of two winners' 3-seed mean test accuracies must beat."""
    val_seed = math.sqrt(statistics.fmean(r["val_seed_std"] ** 2 for r in rows))
    test_seed = math.sqrt(statistics.fmean(r["test_seed_std"] ** 2 for r in rows))
    per_n = {}
    for n in ("1000", str(VAL_IMAGES)):
        sampling = math.sqrt(statistics.fmean(r["val_sampling_se"][n] ** 2 for r in rows))
        per_n[n] = {"sampling_se": sampling, "total": math.hypot(val_seed, sampling)}
    return {
        "configs": rows,
        "val_seed_std": val_seed,
        "test_seed_std": test_seed,
        "val_noise": per_n,
        # 95% of the difference of two independent means of RETRAIN_SEEDS runs each.
        "test_noise_threshold": Z95 * test_seed * math.sqrt(2 / RETRAIN_SEEDS),
    }


def main(argv: Sequence[str] | None = None) -> None:
    import torch

    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4,5", help="training seeds per config")
    parser.add_argument("--out", type=Path, default=DEFAULT_RECORDS, help="where noise.json goes (the records)")
    parser.add_argument("--data-dir", default=str(DEFAULT_ARCHIVE) if DEFAULT_ARCHIVE.exists() else None)
    args = parser.parse_args(argv)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    start = time.monotonic()
    rows = []
    for name, update in CONFIGS.items():
        rows.append(measure(name, update, seeds, args.data_dir))
        row = rows[-1]
        print(
            f"{name}: val {row['val_mean']:.2%} ± {row['val_seed_std']:.2%} over {len(seeds)} seeds "
            f"({row['val_images']} images), test {row['test_mean']:.2%} ± {row['test_seed_std']:.2%}",
            flush=True,
        )
    document = summary(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "noise.json").write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    for n, figures in document["val_noise"].items():
        print(f"{n} validation images: sampling {figures['sampling_se']:.2%}, with the seed {figures['total']:.2%}")
    print(
        f"test threshold for two 3-seed means: {document['test_noise_threshold']:.2%} "
        f"({time.monotonic() - start:.0f} s)"
    )


if __name__ == "__main__":
    main()
