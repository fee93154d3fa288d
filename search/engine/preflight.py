"""What a run says before its first trial: the study and how far it is, the devices found, the
Ray resources in use and the trials that train at once (capped where the cluster holds fewer
than ``max_concurrent``), the trials to run, the probe's time per step, epoch and trial, each
trial's start-up, the estimate for the run, whether each trial copies the training set to its device or streams
it (and why), and the time budget. On a CPU-only machine with an
estimate of over a day it says so plainly and names the ways to bound the run.

The figures come from :mod:`search.engine.cost`, which ``run --dry-run`` uses too.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from dataclasses import dataclass, field

from search.config import Spec
from search.config.secrets import mask_secrets
from search.config.units import format_duration
from search.data import ImageDataset
from search.data.placement import Decision, trials_per_device
from search.engine.cost import Concurrency, TrialCost

LONG_RUN_S = 86_400  # a CPU-only estimate over this gets the warning
IMBALANCE_RATIO = 5  # a largest class over this many times the smallest, with plain accuracy: a warning
BALANCED_METRICS = ("balanced_acc", "macro_f1")


@dataclass(frozen=True)
class RunPlan:
    """What a run is about to do, as the pre-run block tells it.

    ``cost`` is None where the probe failed (``probe_error`` says why); ``target`` the finished
    trials the study has when the run is done; ``to_run`` the trials this run still sends to Ray;
    ``class_counts`` the training images per class.
    ``training_set`` whether each trial copies the training set to its device or streams it.
    """

    spec: Spec
    storage_url: str
    finished_before: int
    target: int
    to_run: int
    cluster: dict
    use_gpu: bool
    concurrency: Concurrency
    n_train: int
    cost: TrialCost | None
    probe_error: str | None = None
    class_counts: dict[str, int] = field(default_factory=dict)
    training_set: Decision | None = None


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


def concurrency_line(plan: RunPlan) -> str:
    """``ray: 2 CPUs, 0 GPUs; per trial 1 CPU, 0 GPU; 2 trial(s) at a time`` (and why, if capped)."""
    resources, cluster = plan.spec.resources, plan.cluster
    line = (
        f"ray: {cluster.get('CPU', 0):g} CPUs, {cluster.get('GPU', 0):g} GPUs; per trial {resources.cpu:g} CPU, "
        f"{resources.gpu if plan.use_gpu else 0:g} GPU; {plan.concurrency.slots} trial(s) at a time"
    )
    return f"{line} ({plan.concurrency.capped})" if plan.concurrency.capped else line


def preflight_lines(plan: RunPlan) -> list[str]:
    """The pre-run block, line by line."""
    spec, timeout_s = plan.spec, plan.spec.study.timeout_s
    lines = [
        f"study {spec.study.name} in {mask_secrets(plan.storage_url)}: "
        f"{plan.finished_before}/{plan.target} trials finished before this run",
        device_line(plan.cluster),
        concurrency_line(plan),
    ]
    imbalance = imbalance_line(spec, plan.class_counts)
    lines += [imbalance] if imbalance else []
    cost = plan.cost
    if cost is None:
        return [*lines, f"estimate: the probe failed ({plan.probe_error}); trials will tell", budget_line(timeout_s)]
    total_s = cost.run_s(plan.to_run, plan.concurrency.slots)
    lines += [
        f"trials: {plan.to_run} to run, {cost.epochs} epochs each, {plan.n_train:,} training images per epoch",
        *([plan.training_set.line()] if plan.training_set is not None else []),
        cost.probe_line(),
        cost.startup.line(),
        cost.estimate_line(plan.to_run, plan.concurrency.slots),
        budget_line(timeout_s),
    ]
    if (
        cost.device == "cpu"
        and not plan.cluster.get("GPU")
        and total_s > LONG_RUN_S
        and (timeout_s or math.inf) > LONG_RUN_S
    ):
        lines.append(
            f"warning: this machine has no GPU and the search would take {format_duration(total_s)}: "
            "bound it with --timeout (e.g. --timeout 2h; a rerun continues the study) or --n-trials, "
            "or try spaces/smoke.yaml first (minutes on 2 cores)"
        )
    return lines


def imbalance_line(spec: Spec, class_counts: dict[str, int]) -> str | None:
    """A warning where the largest class has over :data:`IMBALANCE_RATIO` times the images of
    the smallest and the study optimizes plain accuracy, which rewards predicting the majority
    class; None otherwise."""
    metrics = {o.metric for o in spec.study.objectives}
    if len(class_counts) < 2 or "val_acc" not in metrics or metrics & set(BALANCED_METRICS):
        return None
    largest = max(class_counts, key=lambda name: class_counts[name])
    smallest = min(class_counts, key=lambda name: class_counts[name])
    if class_counts[largest] <= IMBALANCE_RATIO * class_counts[smallest]:
        return None
    return (
        f"warning: imbalanced classes: {largest} has {class_counts[largest]:,} training images, "
        f"{smallest} {class_counts[smallest]:,}; the objective val_acc rewards predicting the majority class: "
        "optimize balanced_acc or macro_f1 (study.objectives), and consider train.class_weights: balanced "
        "or train.sampler: balanced"
    )


def training_set_placement(spec: Spec, data: ImageDataset, use_gpu: bool) -> Decision:
    """Where each trial puts the training set (:mod:`search.data.placement`), decided here on
    the driver as the trials will decide it: the same size, rule and trials per device
    (:func:`trials_per_device`), this machine's free memory (a GPU's when trials use GPUs)."""
    import torch

    device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
    placement = data.placement.shared_by(trials_per_device(spec.resources.gpu if use_gpu else 0.0))
    return placement.decide(data.train.nbytes, device)


def budget_line(timeout_s: float | None) -> str:
    if timeout_s is None:
        return "time budget: none (the run ends after its trials; set one with --timeout)"
    ends = dt.datetime.now() + dt.timedelta(seconds=timeout_s)
    return (
        f"time budget: {format_duration(timeout_s)}, until {ends:%H:%M:%S}: no trial starts after it, "
        "running trials stop at their next epoch"
    )
