"""What a run says before its first trial: the devices found, the Ray resources in use, the
trials to run and how many at a time, the time per trial and for the study from a probe of a
few training steps (seconds), and the time budget. On a CPU-only machine with an estimate of
over a day it says so plainly and names the ways to bound the run.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import statistics
from dataclasses import dataclass

from search.config import Spec
from search.config.secrets import mask_secrets
from search.config.units import format_duration
from search.engine.plan import probe_epoch_time

LONG_RUN_S = 86_400  # a CPU-only estimate over this gets the warning


@dataclass(frozen=True)
class Preflight:
    """The pre-run block, and what the time-left estimate starts from: the probe's seconds per
    epoch of a config of ``probe_flops`` FLOPs, and the mean FLOPs of the space's fitting configs."""

    lines: list[str]
    epoch_s: float | None = None
    probe_flops: int | None = None
    mean_flops: float | None = None


def slots(spec: Spec, cluster: dict, use_gpu: bool) -> int:
    """Trials that can train at once: ``max_concurrent``, bounded by the cluster's CPUs and GPUs."""
    resources = spec.resources
    fit = [resources.max_concurrent, int(cluster.get("CPU", 1) // resources.cpu)]
    if use_gpu and resources.gpu > 0:
        fit.append(int(cluster.get("GPU", 0) // resources.gpu))
    return max(1, min(fit))


def device_line(cluster: dict) -> str:
    """``devices: 1 GPU: NVIDIA H200 (139 GiB)`` or ``devices: CPU only (16 cores)``."""
    import torch

    gpus = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
    local = ", ".join(f"{g.name} ({g.total_memory / 2**30:.0f} GiB)" for g in gpus)
    in_cluster = int(cluster.get("GPU", 0))
    if gpus:
        return f"devices: {len(gpus)} GPU(s) here: {local}; {in_cluster} in the Ray cluster"
    if in_cluster:
        return f"devices: no GPU on this machine; {in_cluster} GPU(s) in the Ray cluster"
    return f"devices: CPU only ({os.cpu_count() or 1} cores here, no CUDA GPU)"


def preflight(
    spec: Spec,
    *,
    cluster: dict,
    use_gpu: bool,
    image_size: int,
    n_train: int,
    to_run: int,
    timeout_s: float | None,
    storage_url: str,
    finished_before: int,
) -> Preflight:
    """The pre-run block and the probe's measures.

    Args:
        spec: The run's spec (its ``n_trials`` and ``timeout`` already the run's own).
        cluster: The Ray cluster's resources.
        use_gpu: Whether trials get a GPU.
        image_size: The models' input size.
        n_train: Training images per epoch.
        to_run: Trials this run still has to finish.
        timeout_s: The time budget in seconds; None: no budget.
        storage_url: The study's storage (shown masked).
        finished_before: Trials of the study finished before this run.

    Returns:
        The lines to print and the probe's measures (None where the probe failed).
    """
    from search.budget import count_spec, fast_count

    concurrent = slots(spec, cluster, use_gpu)
    resources = spec.resources
    lines = [
        f"study {spec.study.name} in {mask_secrets(storage_url)}: "
        f"{finished_before}/{spec.study.n_trials} trials finished before this run",
        device_line(cluster),
        f"ray: {cluster.get('CPU', 0):g} CPUs, {cluster.get('GPU', 0):g} GPUs; per trial {resources.cpu:g} CPU, "
        f"{resources.gpu if use_gpu else 0:g} GPU; {concurrent} trial(s) at a time",
    ]
    report = count_spec(spec, samples=200, image_size=image_size)
    config = report.median_fitting
    device = "cuda" if use_gpu and _has_cuda() else "cpu"
    threads = max(1, int(resources.cpu))
    try:
        step_s, epoch_s = probe_epoch_time(config, image_size, device, threads, n_train)
    except RuntimeError as error:  # e.g. out of memory on the driver's device: the run itself may still fit
        lines.append(f"estimate: the probe failed on {device} ({error}); trials will tell")
        return Preflight(lines + [_budget_line(timeout_s)])
    epochs = config.train.epochs
    total_s = math.ceil(to_run / concurrent) * epochs * epoch_s
    lines += [
        f"trials: {to_run} to run, {epochs} epochs each, {n_train:,} training images per epoch",
        f"estimate: a median-size config ({report.median_params:,} params) takes {step_s * 1000:.0f} ms per step on "
        f"{device}: {_seconds(epoch_s)} per epoch, {_seconds(epochs * epoch_s)} per trial, "
        f"{_seconds(total_s)} for the {to_run} trial(s) before pruning",
        _budget_line(timeout_s),
    ]
    if device == "cpu" and not cluster.get("GPU") and total_s > LONG_RUN_S and (timeout_s or math.inf) > LONG_RUN_S:
        lines.append(
            f"warning: this machine has no GPU and the search would take {format_duration(total_s)}: "
            "bound it with --timeout (e.g. --timeout 2h; a rerun continues the study) or --n-trials, "
            "or try spaces/smoke.yaml first (minutes on 2 cores)"
        )
    mean_flops = statistics.fmean(sized.counts.flops or 0 for sized in report.fitting)
    return Preflight(lines, epoch_s, fast_count(config.model, image_size).flops, mean_flops or None)


def _budget_line(timeout_s: float | None) -> str:
    if timeout_s is None:
        return "time budget: none (the run ends after its trials; set one with --timeout)"
    ends = dt.datetime.now() + dt.timedelta(seconds=timeout_s)
    return (
        f"time budget: {format_duration(timeout_s)}, until {ends:%H:%M:%S}: no trial starts after it, "
        "running trials stop at their next epoch"
    )


def _seconds(seconds: float) -> str:
    """``4.2s`` under a minute (a probe of small configs), else ``1h05m``."""
    return f"{seconds:.1f}s" if seconds < 60 else format_duration(seconds)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
