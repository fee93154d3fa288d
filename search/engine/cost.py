"""What a search costs, measured once before it starts, in one place for ``run`` and ``run
--dry-run`` (so that the two agree on the same machine):

- how many trials train at once: :func:`trial_concurrency`, the same figure that caps Tune's
  ``max_concurrent_trials`` (a spec's ``max_concurrent`` above what the cluster holds is
  capped, and the plan says so);
- a probe of a median-size config's training step (:func:`probe_cost`): after warm-up steps,
  the median of several, with the torch threads a trial gets;
- what each trial pays before its first step (a Ray worker, its imports, the data, the model):
  measured on the study's own trials once it has some (:data:`~search.study.keys.STARTUP_S`),
  else by starting as many fresh Python processes as trials start at once, each doing what a
  new worker does (:func:`probe_startup`).

The time model (:meth:`TrialCost.run_s`), which the live view's time left follows too: the first
trial of each slot starts a Ray worker (``cold_s``), later ones reuse it (``warm_s``), and every
trial trains its epochs, counted in full-epoch equivalents (:mod:`search.budget.compute`: an
epoch at a lower ``progressive_resize`` side costs less).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from optuna.trial import FrozenTrial

from search.config import Rung, Spec, TrialConfig, UserError
from search.config.schema import SuccessiveHalvingPruner
from search.engine.startup import (
    StartUp,
    machine_key,
    probe_startup,
    record_startup,
    recorded_startup,
    seconds_text,
    stored_startup,
)
from search.models import build_model

if TYPE_CHECKING:
    from search.budget import CountReport

PROBE_SAMPLES = 200  # random configs the probe picks its median-size one from (fixed seed)
PROBE_BATCH = 64  # the probe's batch (a larger one is scaled up: see probe_step_time)
PROBE_WARMUP_STEPS = 2
PROBE_MIN_STEPS, PROBE_MAX_STEPS, PROBE_ENOUGH_S = 3, 9, 3.0  # timed steps: at least 3, up to 9 or 3 s


@dataclass(frozen=True)
class Concurrency:
    """Trials that train at once, and why the spec's ``max_concurrent`` was lowered (None: it was not)."""

    slots: int
    capped: str | None = None


def trial_concurrency(spec: Spec, cluster: dict, use_gpu: bool) -> Concurrency:
    """Trials that can train at once: ``resources.max_concurrent``, capped by the cluster's CPUs
    (and GPUs, for GPU trials) over what one trial takes. Tune runs exactly this many.

    Args:
        spec: The spec (its ``resources``).
        cluster: The resources there are (``ray.cluster_resources()``, or :func:`local_resources`).
        use_gpu: Whether trials get a GPU.
    """
    resources = spec.resources
    cpus, gpus = cluster.get("CPU", 1), cluster.get("GPU", 0)
    limits = [(int(cpus // resources.cpu), f"{cpus:g} CPUs, {resources.cpu:g} per trial")]
    if use_gpu and resources.gpu > 0:
        limits.append((int(gpus // resources.gpu), f"{gpus:g} GPUs, {resources.gpu:g} per trial"))
    fit, why = min(limits)
    if fit >= resources.max_concurrent:
        return Concurrency(resources.max_concurrent)
    slots = max(1, fit)
    return Concurrency(slots, f"resources.max_concurrent {resources.max_concurrent} capped to {slots}: {why}")


def local_resources() -> dict:
    """This machine's resources as a local Ray counts them: the CPUs this process may use, CUDA GPUs."""
    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return {"CPU": float(cpus), "GPU": float(torch.cuda.device_count())}


def probe_device(spec: Spec) -> str:
    """Where the probe trains: CUDA for a GPU spec on a machine with one, else the CPU."""
    import torch

    return "cuda" if spec.resources.gpu > 0 and torch.cuda.is_available() else "cpu"


def trial_threads(spec: Spec) -> int:
    """Torch threads per trial: its CPUs (the trials and the probe alike)."""
    return max(1, int(spec.resources.cpu))


@dataclass(frozen=True)
class TrialCost:
    """The probe's measures and what follows from them.

    ``params``, ``batch_size`` and ``flops`` are the median-size config's; ``step_s`` its
    seconds per training step on ``device`` with ``threads`` torch threads; ``mean_flops``
    the mean FLOPs of the space's configs that fit the budget (what a trial still to start costs).
    ``full_epochs``: the median config's training in full-epoch equivalents (None: ``epochs``);
    ``rung_costs``: what it spends to reach each successive-halving rung, in the same unit.
    """

    params: int
    batch_size: int
    flops: int
    mean_flops: float | None
    device: str
    threads: int
    step_s: float
    n_train: int
    epochs: int
    startup: StartUp
    full_epochs: float | None = None
    rung_costs: tuple[float, ...] = ()
    reduction_factor: int | None = None

    @property
    def trial_epochs(self) -> float:
        """A whole trial's training in full-epoch equivalents."""
        return self.epochs if self.full_epochs is None else self.full_epochs

    @property
    def pruned_epochs(self) -> float | None:
        """A trial's training on average under the spec's successive halving, in full-epoch
        equivalents (None: no successive halving)."""
        if self.reduction_factor is None or not self.rung_costs:
            return None
        from search.budget.compute import halving_cost

        return halving_cost(self.rung_costs, self.trial_epochs, self.reduction_factor)

    @property
    def epoch_s(self) -> float:
        return self.step_s * math.ceil(self.n_train / self.batch_size)

    def run_s(self, trials: int, slots: int, trial_epochs: float | None = None) -> float:
        """Seconds for ``trials`` trials on ``slots`` slots, before pruning: each slot's first
        trial starts a worker, the others reuse it, and every trial trains all its epochs (or
        ``trial_epochs`` full-epoch equivalents each, as :attr:`pruned_epochs` on average)."""
        if trials <= 0:
            return 0.0
        waves = math.ceil(trials / max(1, slots))
        warm_s = self.startup.warm_s or 0.0
        epochs = self.trial_epochs if trial_epochs is None else trial_epochs
        return self.startup.cold_s + (waves - 1) * warm_s + waves * epochs * self.epoch_s

    def probe_line(self) -> str:
        """``probe: a median-size config (...) takes 519 ms per step on cpu with 1 thread(s): ...``."""
        return (
            f"probe: a median-size config ({self.params:,} params, batch {self.batch_size}) takes "
            f"{self.step_s * 1000:.0f} ms per step on {self.device} with {self.threads} thread(s): "
            f"{seconds_text(self.epoch_s)} per epoch of {self.n_train:,} images, "
            f"{seconds_text(self.trial_epochs * self.epoch_s)} per trial of {_count(self.epochs, 'epoch')}"
            f"{self._equivalents()}"
        )

    def _equivalents(self) -> str:
        """`` (3.25 full-epoch equivalents)`` where a trial's cost is not its epochs."""
        return "" if self.trial_epochs == self.epochs else f" ({self.trial_epochs:.3g} full-epoch equivalents)"

    def rungs_line(self) -> str | None:
        """``rungs: a median-size trial reaches them after 0.25, 1.06 full-epoch equivalents (...)``."""
        if not self.rung_costs:
            return None
        reached = ", ".join(f"{cost:.3g}" for cost in self.rung_costs)
        return (
            f"rungs: a median-size trial reaches them after {reached} full-epoch equivalents "
            f"(a whole trial: {self.trial_epochs:.3g}); trials pruned at a rung stop there"
        )

    def estimate_line(self, trials: int, slots: int) -> str:
        """``estimate: 8 trials x 4 epochs on 2 slot(s) = 3m45s before pruning, start-up included``,
        then what successive halving leaves of it, where the spec prunes so."""
        line = (
            f"estimate: {_count(trials, 'trial')} x {_count(self.epochs, 'epoch')}{self._equivalents()} "
            f"on {slots} slot(s) = {seconds_text(self.run_s(trials, slots))} before pruning, start-up included"
        )
        pruned = self.pruned_epochs
        if pruned is None:
            return line
        return (
            f"{line}; about {seconds_text(self.run_s(trials, slots, pruned))} after pruning "
            f"({pruned:.3g} full-epoch equivalents a trial on average, 1 in {self.reduction_factor} "
            f"going on at each rung: {pruned * trials:,.0f} for {_count(trials, 'trial')})"
        )


def probe_cost(
    spec: Spec,
    image_size: int,
    n_train: int,
    *,
    slots: int,
    data_dir: str | None = None,
    trials: Sequence[FrozenTrial] = (),
    survey: CountReport | None = None,
) -> TrialCost:
    """The probe ``run`` and ``run --dry-run`` share: the median-size config of
    :data:`PROBE_SAMPLES` seeded samples, its step timed on :func:`probe_device` with
    :func:`trial_threads` threads, and the trials' start-up.

    Args:
        spec: A spec with a search space.
        image_size: The side trials train at.
        n_train: Training images per epoch.
        slots: Trials that start at once (the start-up probe starts as many processes).
        data_dir: Where the data is (the start-up probe loads it as a worker would).
        trials: The study's trials so far: their stored start-ups beat the probe's.
        survey: The run's survey of the space to take the median-size config from; None:
            :data:`PROBE_SAMPLES` samples.

    Raises:
        UserError: no sampled config fits the budget.
        RuntimeError: the probe's step failed (say, out of memory on the driver's device).
    """
    from search.budget import count_spec, fast_count

    report = survey if survey is not None else count_spec(spec, samples=PROBE_SAMPLES, image_size=image_size)
    if not report.fitting:
        raise UserError(f"{spec.source}: budget: none of {PROBE_SAMPLES} samples fits; {report.smallest_line()}")
    config = report.median_fitting
    device, threads = probe_device(spec), trial_threads(spec)
    batch = min(config.train.batch_size, PROBE_BATCH)
    step_s, build_s = probe_step_time(config, image_size, device, threads, batch)
    startup = stored_startup(trials) or recorded_startup(machine_key(device, slots))
    if startup is None:
        startup = probe_startup(spec, config, image_size, data_dir, slots, build_s)
        if startup.cold_s > 0:  # measured (a probe whose processes failed measured nothing)
            record_startup(machine_key(device, slots), startup)
    if startup.warm_s is None:  # no trial reused a worker yet: what a reused one does again, build the model
        startup = replace(startup, warm_s=build_s)
    return TrialCost(
        params=report.median_params,
        batch_size=config.train.batch_size,
        flops=fast_count(config.model, image_size).flops or 0,
        mean_flops=statistics.fmean(s.counts.flops or 0 for s in report.fitting) or None,
        device=device,
        threads=threads,
        step_s=step_s * config.train.batch_size / batch,  # a CPU's step grows about linearly with the batch
        n_train=n_train,
        epochs=config.train.epochs,
        startup=startup,
        **_full_epochs(spec, config, image_size, n_train),
    )


def _full_epochs(spec: Spec, config: TrialConfig, image_size: int, n_train: int) -> dict:
    """The median config's training and its rungs in full-epoch equivalents (TrialCost's fields)."""
    from search.budget.compute import flops_counter, full_epochs, halving_rungs, rung_costs, schedule

    steps = max(1, n_train // max(1, min(config.train.batch_size, n_train)))
    pruner = spec.study.pruner
    rungs: Sequence[Rung] = ()
    if isinstance(pruner, SuccessiveHalvingPruner):
        rungs = pruner.rungs or halving_rungs(pruner.min_resource, pruner.reduction_factor, config.train.epochs)
    stretches = schedule(config.train.epochs, steps, rungs, config.train.progressive_resize)
    flops_at = flops_counter(config.model, image_size)
    return {
        "full_epochs": full_epochs(stretches, steps, flops_at),
        "rung_costs": tuple(rung_costs(stretches, steps, flops_at)),
        "reduction_factor": pruner.reduction_factor if isinstance(pruner, SuccessiveHalvingPruner) else None,
    }


def probe_step_time(
    config: TrialConfig, image_size: int, device: str, threads: int, batch_size: int
) -> tuple[float, float]:
    """Seconds per training step of ``config`` on a random batch, and seconds to build its model
    and optimizer. The step: the median of :data:`PROBE_MIN_STEPS` to :data:`PROBE_MAX_STEPS`
    timed steps after :data:`PROBE_WARMUP_STEPS` untimed ones, with as many torch threads as
    one trial gets (one slow step, say another process waking up, moves no estimate)."""
    import torch

    from search.train import build_optimizer, param_groups

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    began = time.perf_counter()
    model = build_model(config.model, image_size).to(device).train()
    optimizer = build_optimizer(
        param_groups(model, config.train.optimizer.weight_decay, config.train.decay_norm_and_bias),
        config.train.optimizer,
        torch.device(device),
    )
    build_s = time.perf_counter() - began
    batch = torch.randn(batch_size, getattr(config.model, "in_channels", 3), image_size, image_size, device=device)
    labels = torch.randint(0, config.model.num_classes, (batch_size,), device=device)
    times: list[float] = []
    for step in range(PROBE_WARMUP_STEPS + PROBE_MAX_STEPS):
        start = time.perf_counter()
        output = model(batch)
        logits = output[0] if isinstance(output, tuple) else output
        torch.nn.functional.cross_entropy(logits, labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if step >= PROBE_WARMUP_STEPS:
            times.append(time.perf_counter() - start)
            if len(times) >= PROBE_MIN_STEPS and sum(times) >= PROBE_ENOUGH_S:
                break
    return statistics.median(times), build_s


def _count(n: int, word: str) -> str:
    """``1 epoch``, ``4 epochs``."""
    return f"{n} {word}{'s' * (n != 1)}"
