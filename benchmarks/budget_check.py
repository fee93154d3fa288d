"""How fast is the budget check? fast_count vs fvcore on the same random CIFAR configs.

Run: ``python benchmarks/budget_check.py [--configs N] [--seed S]``. Prints configs per
second of :func:`search.budget.fast_count` (config alone) and of the reference
``count_model(build_model(config))`` (build, then trace with fvcore), their ratio, and
checks that both agree on every config.
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from search.budget import count_model, fast_count
from search.config import Head, ResNetConfig, SqueezeExcite, Stage, Stem
from search.models import build_model

TARGET_SPEEDUP = 20.0


def random_cifar_config(rng: random.Random) -> ResNetConfig:
    """A config a CIFAR search might sample: 3x3 stem, 2-4 stages of realistic widths."""
    n_stages = rng.randint(2, 4)
    base = rng.choice([16, 32, 64])
    return ResNetConfig(
        stem=Stem(base, 3, 1, False),
        stages=tuple(Stage(rng.randint(1, 4), base * 2**i) for i in range(n_stages)),
        block=rng.choice(["basic", "bottleneck"]),
        preact=rng.random() < 0.5,
        shortcut=rng.choice(["projection", "identity"]),
        se=SqueezeExcite(rng.choice(["none", "stem", "blocks"]), 16),
        pool_kernel=rng.choice([None, 4 if n_stages == 4 else 8]),
        head=Head(hidden=rng.choice([(), (256,)]), batchnorm=rng.random() < 0.5),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=20, help="random configs (fvcore side is slow)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads for the reference (batch-1 traces gain nothing from more)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rng = random.Random(args.seed)
    configs = [random_cifar_config(rng) for _ in range(args.configs)]
    torch.manual_seed(args.seed)

    repeats = 200  # fast_count is too quick to time once per config
    start = time.perf_counter()
    for _ in range(repeats):
        fast = [fast_count(c, 32) for c in configs]
    fast_rate = repeats * len(configs) / (time.perf_counter() - start)

    count_model(build_model(configs[0]), 32)  # warm-up: fvcore's import and first trace
    start = time.perf_counter()
    models = [build_model(c, 32) for c in configs]
    built = time.perf_counter()
    reference = [count_model(m, 32) for m in models]
    end = time.perf_counter()
    reference_rate = len(configs) / (end - start)
    trace_rate = len(configs) / (end - built)

    mismatches = sum(f != r for f, r in zip(fast, reference))
    ratio = fast_rate / reference_rate
    print(f"{len(configs)} random CIFAR configs, 32x32, torch threads: {torch.get_num_threads()}")
    print(f"fast_count:                     {fast_rate:12,.0f} configs/s ({1e6 / fast_rate:9.1f} us/config)")
    print(f"count_model(build_model(...)):  {reference_rate:12,.1f} configs/s ({1e6 / reference_rate:9.1f} us/config)")
    print(f"  of which count_model (fvcore): {trace_rate:12,.1f} configs/s ({1e6 / trace_rate:9.1f} us/config)")
    print(f"speed-up: {ratio:,.0f}x (target >= {TARGET_SPEEDUP:.0f}x); mismatching counts: {mismatches}")
    if mismatches or ratio < TARGET_SPEEDUP:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
