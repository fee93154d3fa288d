"""Trials per hour with 1, 2 and 4 small trials at a time on this machine (``resources``).

Run: ``python benchmarks/packing.py [--data-dir D] [--trials 4] [--concurrency 1,2,4] [--passes 2]``.

Every setting runs ``resnet-search run`` (see ``common.run_search``) on the same small
search: ``spaces/smoke.yaml``'s recipe with its model fixed at a mid-sized point of its
space (so every trial costs the same), only the learning rate searched (random sampler,
seed 0), pruning off, 2 epochs on a balanced 2,000-image subset. The machine's CPUs are
shared out: ``resources.cpu`` is ``cpus / k`` for ``k`` trials at a time, and a trial
runs ``max(1, int(cpu))`` torch threads (``search.engine.bridge``), so ``k`` above the core count
oversubscribes the cores (4 trials of 0.5 CPU run 4 threads on 2 cores).

Trials per hour are counted over the search span (first trial sampled to last trial
recorded, from the study's timestamps), which leaves out the start-up every setting pays
once; the whole command's rate is printed beside it. Each setting runs once per pass, the
passes in alternating order, and its best run counts (the least disturbed by other work on
the machine). The ratios are against 1 at a time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import yaml
from common import DEFAULT_ARCHIVE, REPO, SearchRun, machine_load, run_search

BASE_SPEC = REPO / "spaces" / "smoke.yaml"
FIXED_MODEL = {  # a point in the middle of smoke.yaml's model space, inside its budget: 110,794 params
    "stem": {"width": 16},
    "stages": [{"blocks": 1, "width": 24}, {"blocks": 1, "width": 48}, {"blocks": 1, "width": 64}],
    "se": {"name": "none"},
}


def packing_spec(concurrent: int, cpus: float, trials: int, epochs: int, images: int) -> dict:
    """smoke.yaml with a fixed model, only the LR searched, no pruning, ``concurrent`` trials sharing ``cpus``."""
    document = yaml.safe_load(BASE_SPEC.read_text(encoding="utf-8"))
    document["study"] = {
        "name": f"packing_{concurrent}",
        "n_trials": trials,
        "sampler": {"name": "random"},
        "pruner": {"name": "none"},
        "seed": 0,
    }
    document["data"] |= {"train_subset": images, "val_subset": images // 4}
    document["model"] |= FIXED_MODEL
    document["train"]["epochs"] = epochs
    document["resources"] = {"cpu": cpus / concurrent, "max_concurrent": concurrent}
    return document


def run_setting(document: dict, data_dir: str) -> SearchRun:
    """Write the spec to a temporary file and run the search on it."""
    with tempfile.TemporaryDirectory(prefix="resnet-search-packing-") as folder:
        spec = Path(folder) / f"{document['study']['name']}.yaml"
        spec.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
        return run_search(spec, document["study"]["name"], data_dir)


def per_hour(count: int, seconds: float) -> float:
    return count * 3600 / seconds


def run_line(concurrent: int, cpu: float, run: SearchRun) -> str:
    """One run's figures: trials/hour over the span and over the whole command."""
    trained = len(run.trained)
    return (
        f"{concurrent} at a time (cpu {cpu:g} each, {max(1, int(cpu))} thread(s) each): "
        f"{per_hour(trained, run.span_s):,.0f} trials/hour over the span ({trained} trials in {run.span_s:.1f} s), "
        f"{per_hour(trained, run.wall_s):,.0f} over the whole command ({run.wall_s:.1f} s); "
        f"mean trial training time {run.train_time_s / trained:.1f} s; {machine_load()}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_ARCHIVE), help="CIFAR-10 folder or archive")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4])
    parser.add_argument("--trials", type=int, default=4, help="trials per setting (a multiple of each concurrency)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--images", type=int, default=2000, help="balanced training subset")
    parser.add_argument("--cpus", type=float, default=float(os.cpu_count() or 1), help="CPUs shared out (Ray's count)")
    parser.add_argument("--passes", type=int, default=2, help="passes over the settings (the best run counts)")
    args = parser.parse_args(argv)
    data_dir = str(Path(args.data_dir).resolve())
    print(
        f"{args.trials} trials x {args.epochs} epochs on {args.images} images per run, "
        f"{args.cpus:g} CPUs shared out, {args.passes} pass(es); {machine_load()}",
        flush=True,
    )
    best: dict[int, float] = {}
    for pass_ in range(args.passes):
        # Every other pass runs the settings in reverse order, so that load from elsewhere
        # that rises or falls during the benchmark does not always favour the same one.
        for concurrent in args.concurrency if pass_ % 2 == 0 else args.concurrency[::-1]:
            document = packing_spec(concurrent, args.cpus, args.trials, args.epochs, args.images)
            run = run_setting(document, data_dir)
            print(run_line(concurrent, document["resources"]["cpu"], run), flush=True)
            best[concurrent] = max(best.get(concurrent, 0.0), per_hour(len(run.trained), run.span_s))
    reference = args.concurrency[0]
    for concurrent in args.concurrency:
        print(
            f"best, {concurrent} at a time: {best[concurrent]:,.0f} trials/hour -> "
            f"{best[concurrent] / best[reference]:.2f}x vs {reference} at a time"
        )


if __name__ == "__main__":
    main()
