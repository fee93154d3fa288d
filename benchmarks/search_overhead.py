"""Search overhead: the wall time of ``resnet-search run spaces/smoke.yaml`` vs its trials' training time.

Run: ``python benchmarks/search_overhead.py [--data-dir D] [--spec S]``. The command runs
as a user runs it (a subprocess in a temporary folder, a throwaway SQLite storage; see
``common.run_search``), then the benchmark reads the study and prints:

- ours vs the ideal: the wall time against the trials' summed training time
  (``train_time_s``: training plus per-epoch validation, as each trial measures it) spread
  over the spec's ``max_concurrent`` slots;
- the overhead against the slots' capacity, ``1 - training time / (wall x slots)``, as
  ``SearchSummary.overhead`` defines it, over the search span (first trial sampled to last
  trial recorded, by the study's timestamps: about the clock of the run's own summary,
  which starts after the data is loaded and Ray is up) and over the whole command;
- the simpler ratio, summed training time / wall time (at most the slot count);
- the time to the first learning curve: from the command's start to the first trial
  sampled, and to the first epoch result readable in the study (polled every 0.1 s),
  beside the first trial's mean epoch time, to tell start-up from training;
- the run's own summary line, verbatim.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import DEFAULT_ARCHIVE, REPO, SearchRun, machine_load, run_search

from search.config import load_spec

TARGET_OVERHEAD = 0.10


def overhead(train_s: float, wall_s: float, slots: int) -> float:
    """Share of the slots' capacity over ``wall_s`` not spent training."""
    return 1 - train_s / (wall_s * slots)


def report(run: SearchRun, slots: int) -> float:
    """Print the figures of a finished run; returns the overhead over the search span."""
    trained, train_s = run.trained, run.train_time_s
    pruned = sum(t.state.name == "PRUNED" for t in trained)
    print(
        f"{len(run.trials)} samples: {len(trained)} trained ({pruned} pruned), "
        f"{len(run.trials) - len(trained)} rejected untrained; {slots} slot(s)"
    )
    print(
        f"ours: wall {run.wall_s:.1f} s (search span {run.span_s:.1f} s); "
        f"ideal (training time {train_s:.1f} s / {slots} slots): {train_s / slots:.1f} s; "
        f"ratio {run.wall_s / (train_s / slots):.2f}x (span {run.span_s / (train_s / slots):.2f}x)"
    )
    span_overhead = overhead(train_s, run.span_s, slots)
    print(
        f"overhead vs slot capacity: search span {span_overhead:.1%} (target < {TARGET_OVERHEAD:.0%}), "
        f"whole command {overhead(train_s, run.wall_s, slots):.1%}"
    )
    print(f"training time / wall time: {train_s / run.wall_s:.2f} (span {train_s / run.span_s:.2f}; at most {slots})")
    print(
        f"command start -> first trial sampled: {run.startup_s:.1f} s; -> first epoch result in the study: "
        + (f"{run.first_epoch_s:.1f} s" if run.first_epoch_s is not None else "never (no epoch was reported)")
    )
    if run.first_epoch_s is not None:
        first_trial = min(trained, key=lambda t: t.datetime_start)
        epoch_s = first_trial.user_attrs["train_time_s"] / first_trial.user_attrs.get("epochs_run", 1)
        worker_s = run.first_epoch_s - run.startup_s - epoch_s
        print(
            f"  of which the first trial's mean epoch (training + validation) {epoch_s:.1f} s, and about "
            f"{worker_s:.1f} s Ray starting a worker, its imports and its data loading"
        )
    summary = [line.strip() for line in run.output.splitlines() if "search overhead" in line]
    print(f"the run's own summary: {summary[-1] if summary else '(none printed)'}")
    return span_overhead


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_ARCHIVE), help="CIFAR-10 folder or archive")
    parser.add_argument("--spec", default=str(REPO / "spaces" / "smoke.yaml"), help="the search spec to run")
    args = parser.parse_args(argv)
    spec = load_spec(args.spec)
    print(f"resnet-search run {Path(args.spec).name} --data-dir {args.data_dir}; {machine_load()}", flush=True)
    run = run_search(Path(args.spec), spec.study.name, str(Path(args.data_dir).resolve()))
    span_overhead = report(run, spec.resources.max_concurrent)
    print(f"after the run: {machine_load()}")
    if span_overhead >= TARGET_OVERHEAD:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
