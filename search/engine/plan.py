"""``resnet-search run --dry-run``: what a search would cost before it spends anything.

The share of the space that fits the budget (fast counts of random samples), the probe a run
makes too (:mod:`~search.engine.cost`: training steps of a median-size config on this machine,
each trial's start-up, the trials that train at once), the study's cost from it, and a
rehearsal of the spec's own sampler against the budget with no training at all.
"""

from __future__ import annotations

import optuna

from search.config import Spec, UserError
from search.engine.bridge import StudyBridge, TrialSetup
from search.engine.checks import require_space, trial_image_size
from search.engine.cost import local_resources, probe_cost, trial_concurrency
from search.engine.samplers import check_designs, create_study
from search.train.result import VALIDATION_METRICS


def plan_search(spec: Spec, *, data_dir: str | None = None, samples: int = 2000) -> str:
    """What a run would do: the share of the space that fits the budget, the probe's time per
    step, epoch and trial on this machine with each trial's start-up, the trials that train at
    once, the cost of the whole study (before pruning), and how quickly the sampler learns
    the budget. The probe and the concurrency are those a run measures (:mod:`~search.engine.cost`).

    Args:
        spec: A parsed spec with a search space.
        data_dir: Where an image folder is (to count its images); CIFAR's size is known.
        samples: Random samples for the survey of the space (a run's is 2,000: the same median
            config is probed).

    Returns:
        The report, as lines of text.

    Raises:
        UserError: the spec is not a search space, or nothing in it fits the budget.
    """
    from search.budget import count_spec
    from search.budget.survey import budget_lines

    require_space(spec)
    check_designs(spec)
    image_size = trial_image_size(spec.data, data_dir)
    report = count_spec(spec, samples=samples, image_size=image_size)
    if not report.fitting:
        raise UserError(f"{spec.source}: budget: none of {samples} samples fits; {report.smallest_line()}")
    cluster = local_resources()
    concurrency = trial_concurrency(spec, cluster, use_gpu=spec.resources.gpu > 0 and cluster["GPU"] > 0)
    slots = concurrency.slots
    cost = probe_cost(spec, image_size, _train_size(spec, data_dir), slots=slots, data_dir=data_dir, survey=report)
    lines = [
        report.table(),
        *budget_lines(spec, report),
        "",
        cost.probe_line(),
        cost.startup.line(),
        f"concurrency: {slots} trial(s) at a time" + (f" ({concurrency.capped})" if concurrency.capped else ""),
        cost.estimate_line(spec.study.n_trials, slots),
        *filter(None, [cost.rungs_line()]),
        rehearsal_line(spec, rehearse_budget(spec, image_size, report.max_epochs)),
    ]
    if spec.resources.gpu > 0 and cost.device == "cpu":
        lines.append(
            f"this spec asks for {spec.resources.gpu:g} GPU per trial but this machine has no CUDA GPU: "
            "the estimate above is for its CPU; run it on a GPU machine or a Ray cluster with GPUs"
        )
    return "\n".join(lines)


CIFAR_TRAIN_IMAGES = 50_000  # CIFAR-10 and CIFAR-100 alike


def _train_size(spec: Spec, data_dir: str | None) -> int:
    """Training images per epoch: the subset if set, CIFAR's known size, or an image folder's count."""
    if spec.data.train_subset:
        return spec.data.train_subset
    if spec.data.dataset == "imagefolder":
        from search.data import load_dataset

        return len(load_dataset(spec.data, data_dir=data_dir, download=False).train.labels)
    return int(CIFAR_TRAIN_IMAGES * (1 - spec.data.val_fraction))


def rehearse_budget(spec: Spec, image_size: int, max_epochs: int) -> list[int]:
    """Draw ``n_trials`` configs with the spec's own sampler and the budget check alone (no
    training: every accepted config gets the same value), as a run would.

    Returns:
        For each accepted trial, how many samples were rejected just before it: the sampler
        has learned the budget when these fall to zero.
    """
    study = create_study(spec, optuna.storages.InMemoryStorage(), max_epochs)
    bridge = StudyBridge(study, spec, TrialSetup(image_size), reference_check=False)
    rejected_before: list[int] = []
    while (job := bridge.next_job()) is not None:
        rejected_before.append(bridge.tally.rejected - sum(rejected_before))
        bridge.finish(job.number, dict.fromkeys(VALIDATION_METRICS, 0.0), error=False)
    return rejected_before


def rehearsal_line(spec: Spec, rejected_before: list[int]) -> str:
    """One line on how many samples the budget rejected, early and late in a rehearsal."""
    window = max(1, min(10, len(rejected_before) // 3))
    return (
        f"budget rehearsal with the {spec.study.sampler.name} sampler (no training): {len(rejected_before)} trials "
        f"took {sum(rejected_before)} rejected samples, {sum(rejected_before[:window])} before the first {window} "
        f"and {sum(rejected_before[-window:])} before the last {window}"
    )
