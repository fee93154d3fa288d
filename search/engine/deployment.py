"""The deployment budgets of a sampled config, checked after its counts and before it trains:
peak activation memory and model size (exact and free, from the config), then latency
(measured: a few seconds, once per architecture, settings and machine, cached on the study).

A config over any of them is rejected like one over the parameter budget: never trained,
and the sampler is told its constraint values. A run measures on the driver, or with
``budget.latency.measure_on: worker`` in a Ray task on a worker node (docs/deployment.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna

from search.budget.latency import (
    LatencyMeasurement,
    check_latency,
    latency_constraint,
    latency_key,
    machine_record,
    measure_latency,
    require_runtime,
    settle_latency,
)
from search.budget.memory import check_footprint, footprint, footprint_constraints
from search.budget.survey import measures_latency
from search.config import InvalidValue, LatencyConfig, ModelConfig, Spec, TrialConfig, UserError
from search.engine.events import Log, ignore
from search.study.keys import ACTIVATION_KB, LATENCY_CACHE, LATENCY_KEY, LATENCY_MS, MODEL_KB

WORKER_TIMEOUT_S = 600.0  # a Ray task that cannot start this long (no node can run it) fails the run


class DeploymentBudget:
    """Checks a sampled config against the memory, model-size and latency limits, and records
    its values on its trial (and its latency in the study's cache).

    Args:
        study: The study; its ``latency:...`` attributes are the cache of measurements.
        spec: The spec (its budget and objectives say what to check and measure).
        image_size: The trials' input size.
        measure: Whether latency is measured at all (off for rehearsals, which train nothing).
        log: Receives one line per measurement.
    """

    def __init__(
        self, study: optuna.Study, spec: Spec, image_size: int, measure: bool = True, log: Log = ignore
    ) -> None:
        self.study = study
        self.budget = spec.budget
        self.image_size = image_size
        self.log = log
        self.measures = measure and measures_latency(spec)
        self.settings: LatencyConfig = spec.budget.latency_settings
        self.latency_ms: dict[int, float] = {}  # trial number -> its measured latency, for the objectives
        self.measured = 0  # measurements this run took (the cache's misses)
        self.cache: dict[str, Any] = {}
        self._machine: dict[str, Any] | None = None
        if self.measures:
            require_runtime(self.settings)
            self.cache = {k: v for k, v in study.user_attrs.items() if k.startswith(LATENCY_CACHE)}

    def check(self, trial: optuna.Trial, config: TrialConfig, constraints: bool) -> str | None:
        """Why ``config`` is over a deployment limit, or None; its values go on ``trial``
        (and its constraint values where the sampler reads them)."""
        found = footprint(config.model, self.image_size)
        precision = self.budget.precision
        trial.set_user_attr(ACTIVATION_KB, round(found.activation_kb(precision), 3))
        trial.set_user_attr(MODEL_KB, round(found.model_kb(precision), 3))
        values = footprint_constraints(found, self.budget)
        reason = check_footprint(found, self.budget)
        if reason is None and self.measures:
            try:
                key, measured = self.latency(config.model)
            except InvalidValue as error:  # the model does not fit latency.image_size: it cannot be measured
                return f"{error.key}: {error.message}"
            trial.set_user_attr(LATENCY_MS, measured.median_ms)
            trial.set_user_attr(LATENCY_KEY, key)
            self.latency_ms[trial.number] = measured.median_ms
            values |= latency_constraint(measured, self.budget)
            reason = check_latency(measured, self.budget)
        if constraints:
            for name, value in values.items():
                trial.set_constraint(name, value)
        return reason

    def latency(self, config: ModelConfig) -> tuple[str, LatencyMeasurement]:
        """The study attribute and the measurement of ``config``'s latency: from the cache, or
        measured now (again when near the limit) and cached."""
        key = LATENCY_CACHE + latency_key(config, self.image_size, self.settings, self.machine())
        cached = LatencyMeasurement.from_dict(self.cache.get(key))
        if cached is not None:
            return key, cached
        measured = settle_latency(
            lambda: self._run(measure_latency, config, self.image_size, self.settings), self.budget
        )
        self.measured += 1
        self.cache[key] = measured.as_dict()
        self.study.set_user_attr(key, self.cache[key])
        self.log(f"latency measured in {measured.seconds:.1f}s: {measured.line()}")
        return key, measured

    def machine(self) -> dict[str, Any]:
        """Where measurements are taken (asked once): this machine, or the worker node's."""
        if self._machine is None:
            self._machine = self._run(machine_record, self.settings)
        return self._machine

    def _run(self, function: Callable[..., Any], *args: Any) -> Any:
        if self.settings.measure_on == "driver":
            return function(*args)
        return on_worker(function, self.settings, *args)


def on_worker(function: Callable[..., Any], settings: LatencyConfig, *args: Any) -> Any:
    """``function(*args)`` in a Ray task on a worker node: the first node (by id) other than the
    driver's that the settings' device exists on, or the driver's node in a one-node cluster.

    The task reserves no CPU (trials hold them, and waiting for one would stall the run's
    loop) and one hundredth of a GPU for ``cuda``; it is pinned to its node.

    Raises:
        UserError: Ray is not running, no node has a GPU for ``cuda``, or the task could not
            run within :data:`WORKER_TIMEOUT_S`.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not ray.is_initialized():
        raise UserError(
            "budget.latency.measure_on: worker measures in a Ray task: it needs a run's Ray (resnet-search run)"
        )
    gpu = 0.01 if settings.device == "cuda" else 0
    here = ray.get_runtime_context().get_node_id()
    nodes = sorted(
        (n["NodeID"] for n in ray.nodes() if n["Alive"] and (not gpu or n["Resources"].get("GPU"))),
        key=lambda node: (node == here, node),
    )
    if not nodes:
        raise UserError("budget.latency.measure_on: worker with device cuda, but no node of the Ray cluster has a GPU")
    task = ray.remote(function).options(
        num_cpus=0, num_gpus=gpu, scheduling_strategy=NodeAffinitySchedulingStrategy(nodes[0], soft=False)
    )
    try:
        return ray.get(task.remote(*args), timeout=WORKER_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        raise UserError(
            f"budget.latency.measure_on: worker: the measurement did not run within {WORKER_TIMEOUT_S:.0f}s "
            f"on node {nodes[0]}"
        ) from None
