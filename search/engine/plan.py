"""``resnet-search run --dry-run``: what a search would cost before it spends anything.

The share of the space that fits the budget (fast counts of random samples), a probe of
one training step of a median-size config on this machine, the study's cost from it, and
a rehearsal of the spec's own sampler against the budget with no training at all.
"""

from __future__ import annotations

import math
import os
import time

import optuna

from search.config import Spec, TrialConfig, UserError
from search.config.units import format_duration
from search.engine.bridge import StudyBridge
from search.engine.checks import require_space, trial_image_size
from search.engine.samplers import create_study
from search.models import build_model


def plan_search(spec: Spec, *, data_dir: str | None = None, samples: int = 500) -> str:
    """What a run would do: the share of the space that fits the budget, a measured time per
    epoch on this machine, the cost of the whole study (before pruning), and how quickly
    the sampler learns the budget.

    Args:
        spec: A parsed spec with a search space.
        data_dir: Where an image folder is (to count its images); CIFAR's size is known.
        samples: Random samples for the budget survey.

    Returns:
        The report, as lines of text.

    Raises:
        UserError: the spec is not a search space, or nothing in it fits the budget.
    """
    import torch

    from search.budget import count_spec
    from search.budget.survey import budget_lines

    require_space(spec)
    report = count_spec(spec, samples=samples, image_size=trial_image_size(spec.data, data_dir))
    if not report.fitting:
        raise UserError(f"{spec.source}: budget: none of {samples} samples fits; {report.smallest_line()}")
    config = report.median_fitting
    has_cuda = torch.cuda.is_available()
    device = "cuda" if has_cuda and spec.resources.gpu > 0 else "cpu"
    threads = max(1, int(spec.resources.cpu))
    n_train = _train_size(spec, data_dir)
    step_s, epoch_s = probe_epoch_time(config, report.image_size, device, threads, n_train)
    slots = spec.resources.max_concurrent
    if device == "cpu":
        slots = max(1, min(slots, (os.cpu_count() or 1) // threads))
    total_s = spec.study.n_trials * config.train.epochs * epoch_s / slots
    lines = [
        report.table(),
        *budget_lines(spec, report),
        "",
        f"probe: a median-size config ({report.median_params:,} params, batch {config.train.batch_size}) "
        f"takes {step_s * 1000:.0f} ms per step on {device} ({threads} thread(s)): "
        f"{format_duration(epoch_s)} per epoch of {n_train:,} images",
        f"estimate: {spec.study.n_trials} trials x {config.train.epochs} epochs on {slots} slot(s) = "
        f"{format_duration(total_s)} before pruning",
        rehearsal_line(spec, rehearse_budget(spec, report.image_size)),
    ]
    if spec.resources.gpu > 0 and not has_cuda:
        lines.append(
            f"this spec asks for {spec.resources.gpu:g} GPU per trial but this machine has no CUDA GPU: "
            "the estimate above is for its CPU; run it on a GPU machine or a Ray cluster with GPUs"
        )
    return "\n".join(lines)


PROBE_BATCH = 64
CIFAR_TRAIN_IMAGES = 50_000  # CIFAR-10 and CIFAR-100 alike


def probe_epoch_time(
    config: TrialConfig, image_size: int, device: str, threads: int, n_train: int
) -> tuple[float, float]:
    """Seconds per training step and per epoch of ``n_train`` images, from a probe of a few steps.

    A small batch, scaled up: a CPU's step time grows about linearly with the batch, and a
    full batch of a large config would make the probe itself take minutes.
    """
    probe_batch = min(config.train.batch_size, PROBE_BATCH)
    step_s = probe_step_time(config, image_size, device, threads, probe_batch) * (config.train.batch_size / probe_batch)
    return step_s, step_s * math.ceil(n_train / config.train.batch_size)


def probe_step_time(
    config: TrialConfig, image_size: int, device: str, threads: int, batch_size: int, steps: int = 2
) -> float:
    """Seconds per training step of ``config`` on a random batch (after one warm-up step),
    with as many torch threads as one trial gets."""
    import torch

    from search.train import build_optimizer, param_groups

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(config.model, image_size).to(device).train()
    optimizer = build_optimizer(
        param_groups(model, config.train.optimizer.weight_decay, config.train.decay_norm_and_bias),
        config.train.optimizer,
        torch.device(device),
    )
    batch = torch.randn(batch_size, getattr(config.model, "in_channels", 3), image_size, image_size, device=device)
    labels = torch.randint(0, config.model.num_classes, (batch_size,), device=device)
    elapsed = 0.0
    for step in range(steps + 1):
        start = time.perf_counter()
        output = model(batch)
        logits = output[0] if isinstance(output, tuple) else output
        torch.nn.functional.cross_entropy(logits, labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if step:
            elapsed += time.perf_counter() - start
    return elapsed / steps


def _train_size(spec: Spec, data_dir: str | None) -> int:
    """Training images per epoch: the subset if set, CIFAR's known size, or an image folder's count."""
    if spec.data.train_subset:
        return spec.data.train_subset
    if spec.data.dataset == "imagefolder":
        from search.data import load_dataset

        return len(load_dataset(spec.data, data_dir=data_dir, download=False).train.labels)
    return int(CIFAR_TRAIN_IMAGES * (1 - spec.data.val_fraction))


def rehearse_budget(spec: Spec, image_size: int) -> list[int]:
    """Draw ``n_trials`` configs with the spec's own sampler and the budget check alone (no
    training: every accepted config gets the same value), as a run would.

    Returns:
        For each accepted trial, how many samples were rejected just before it: the sampler
        has learned the budget when these fall to zero.
    """
    study = create_study(spec, optuna.storages.InMemoryStorage())
    bridge = StudyBridge(
        study, spec, image_size=image_size, data_dir=None, use_gpu=False, threads=1, reference_check=False
    )
    rejected_before: list[int] = []
    while (job := bridge.next_job()) is not None:
        rejected_before.append(bridge.tally.rejected - sum(rejected_before))
        bridge.finish(job.number, {"val_acc": 0.0, "val_loss": 0.0}, error=False)
    return rejected_before


def rehearsal_line(spec: Spec, rejected_before: list[int]) -> str:
    """One line on how many samples the budget rejected, early and late in a rehearsal."""
    window = max(1, min(10, len(rejected_before) // 3))
    return (
        f"budget rehearsal with the {spec.study.sampler.name} sampler (no training): {len(rejected_before)} trials "
        f"took {sum(rejected_before)} rejected samples, {sum(rejected_before[:window])} before the first {window} "
        f"and {sum(rejected_before[-window:])} before the last {window}"
    )
