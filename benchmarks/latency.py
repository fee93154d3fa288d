"""Do FLOPs or parameters predict latency? Measured latency of configs of the main space on this CPU.

Run: ``python benchmarks/latency.py [--configs 50] [--repeats 5] [--runtime onnxruntime] [--out FILE]``.

For ``--configs`` random configs of ``spaces/cifar_5m.yaml`` (within its parameter budget) it
measures latency as a search would (``budget.latency`` defaults: onnxruntime on the CPU,
1 thread, batch 1, 10 warm-up runs, median of 30), then measures each exported model
``--repeats`` times more (a new session each time) for the measurement's repeatability. It
prints:

* the Spearman rank correlation of FLOPs with latency and of parameters with latency;
* the latency a least-squares line through (FLOPs, latency) predicts, against the measured
  one: the median and worst relative error;
* repeatability: per config the relative spread (max - min) / median of its repeated
  medians; its median and 90th percentile over the configs;
* the cost of one measurement (build, export, warm-up, timing) in seconds.

Latency is this machine's, under its load (printed): rerun it on the machine you deploy to.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from scipy.stats import spearmanr

from search.budget import fast_count
from search.budget.latency import export_onnx, measure_latency, time_onnx
from search.config import LatencyConfig, load_spec, random_samples
from search.models import build_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine_load  # noqa: E402


def fitting_configs(n: int, seed: int) -> list:
    """``n`` random configs of the main space within its parameter budget."""
    spec = load_spec(REPO / "spaces" / "cifar_5m.yaml")
    found = []
    for config in random_samples(spec.space, 20 * n, seed):
        if fast_count(config.model, 32).params <= (spec.budget.max_params or 0):
            found.append(config.model)
        if len(found) == n:
            break
    return found


def repeated_medians(config, settings: LatencyConfig, repeats: int) -> list[float]:
    """The median latency of ``repeats`` timings of one export, each in a new session."""
    with tempfile.TemporaryDirectory() as folder:
        images = torch.randn(settings.batch_size, 3, 32, 32)
        path = export_onnx(build_model(config, 32).eval(), images, Path(folder) / "model.onnx")
        return [time_onnx(path, 32, 3, settings).median_ms for _ in range(repeats)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5, help="timings of each export for repeatability")
    parser.add_argument("--runtime", choices=("onnxruntime", "torch"), default="onnxruntime")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON file for every config's figures")
    args = parser.parse_args()
    settings = LatencyConfig(runtime=args.runtime)
    print(f"before: {machine_load()}", flush=True)
    rows = []
    for index, config in enumerate(fitting_configs(args.configs, args.seed)):
        counts = fast_count(config, 32)
        measured = measure_latency(config, 32, settings)
        again = repeated_medians(config, settings, args.repeats) if args.runtime == "onnxruntime" else []
        rows.append(
            {
                "params": counts.params,
                "flops": counts.flops,
                "latency_ms": measured.median_ms,
                "spread_ms": measured.spread_ms,
                "seconds": measured.seconds,
                "repeats_ms": again,
                "load": measured.load,
            }
        )
        print(
            f"{index:3d} {counts.params:>10,} params {counts.flops:>14,} FLOPs {measured.median_ms:8.3f} ms "
            f"(p10-p90 {measured.p10_ms:.3f}-{measured.p90_ms:.3f}) measured in {measured.seconds:.1f}s, "
            f"load {measured.load}",
            flush=True,
        )
    report(rows, measured.line())
    print(f"after: {machine_load()}")
    if args.out:
        args.out.write_text(
            json.dumps({"settings": measured.settings, "machine": measured.machine, "rows": rows}, indent=2)
        )


def report(rows: list[dict], example: str) -> None:
    latency = [r["latency_ms"] for r in rows]
    flops, params = [r["flops"] for r in rows], [r["params"] for r in rows]
    print(f"\n{len(rows)} configs of spaces/cifar_5m.yaml, measured as: {example}")
    by_flops, by_params = spearmanr(flops, latency)[0], spearmanr(params, latency)[0]
    print(f"Spearman rank correlation with latency: FLOPs {by_flops:.3f}, params {by_params:.3f}")
    slope, intercept = statistics.linear_regression(flops, latency)
    errors = sorted(abs(slope * f + intercept - t) / t for f, t in zip(flops, latency))
    print(
        f"latency predicted from FLOPs (least squares, {slope * 1e9:.3f} ms per GFLOP + {intercept:.3f} ms): "
        f"median error {statistics.median(errors):.1%}, worst {errors[-1]:.1%}"
    )
    spreads = sorted(
        (max(r["repeats_ms"]) - min(r["repeats_ms"])) / statistics.median(r["repeats_ms"])
        for r in rows
        if r["repeats_ms"]
    )
    if spreads:
        p90 = spreads[min(len(spreads) - 1, int(0.9 * len(spreads)))]
        print(
            f"repeatability over {len(rows[0]['repeats_ms'])} repeats: relative spread (max - min) / median, "
            f"median {statistics.median(spreads):.1%}, p90 {p90:.1%}, worst {spreads[-1]:.1%}"
        )
    seconds = [r["seconds"] for r in rows]
    print(f"cost of a measurement: median {statistics.median(seconds):.2f}s, max {max(seconds):.2f}s per config")


if __name__ == "__main__":
    main()
