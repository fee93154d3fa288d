"""``resnet-search count``: the costs of a fixed config, or of a space's extremes and the share
of it that fits each budget: parameters and FLOPs, peak activation memory and model size
(free, exact), and latency where it is asked for (measured: a few seconds a config)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from search.budget.counts import Counts, check_budget, count_model, fast_count
from search.budget.latency import LatencyMeasurement, check_latency, measure_latency, require_runtime
from search.budget.memory import Footprint, check_footprint, footprint
from search.config import (
    BudgetConfig,
    InvalidSample,
    InvalidValue,
    LowEndSuggester,
    Spec,
    SpecError,
    TrialConfig,
    random_samples,
)
from search.models import build_model
from search.models.geometry import check_fits

__all__ = ["CountReport", "SizedConfig", "count_spec", "measures_latency", "budget_lines"]

FLOPS_CONVENTION = "fvcore's, one fused multiply-add = one FLOP, one image"
MEMORY_CONVENTION = "peak of live tensors at batch 1 (docs/deployment.md); 1 kb = 1,024 bytes"


@dataclass(frozen=True)
class SizedConfig:
    """A config with its counts, its footprint and whether they fit the budget."""

    config: TrialConfig
    counts: Counts
    footprint: Footprint
    fits: bool

    def as_dict(self) -> dict:
        return {**asdict(self.counts), **self.footprint.as_dict(), "fits_budget": self.fits}


def _sized(config: TrialConfig, counts: Counts, found: Footprint, budget: BudgetConfig) -> SizedConfig:
    fits = check_budget(counts, budget) is None and check_footprint(found, budget) is None
    return SizedConfig(config, counts, found, fits)


# The limits that cost nothing to check: name, budget key, and a config's value at a precision.
_FREE_LIMITS: tuple[tuple[str, str, Callable[[SizedConfig, str], float]], ...] = (
    ("params", "max_params", lambda s, precision: s.counts.params),
    ("flops", "max_flops", lambda s, precision: s.counts.flops),
    ("activation_kb", "max_activation_kb", lambda s, precision: s.footprint.activation_kb(precision)),
    ("model_kb", "max_model_kb", lambda s, precision: s.footprint.model_kb(precision)),
)


@dataclass(frozen=True)
class CountReport:
    """What ``resnet-search count`` prints for a fixed config or a space.

    For a fixed config ``fixed`` holds fvcore's count. For a space, ``sizes`` holds the
    fast counts of ``samples`` random draws plus the space's low end, sorted by size.
    ``latency`` holds the measured latency of the fixed config (``config``) or of the
    space's ``smallest`` and ``largest`` configs, where it was asked for.
    """

    source: str
    image_size: int
    budget: BudgetConfig
    fixed: SizedConfig | None
    sizes: tuple[SizedConfig, ...] = ()
    latency: tuple[tuple[str, LatencyMeasurement], ...] = ()

    @property
    def fitting(self) -> tuple[SizedConfig, ...]:
        return tuple(s for s in self.sizes if s.fits) if self.fixed is None else (self.fixed,) * self.fixed.fits

    @property
    def fit_share(self) -> float:
        return len(self.fitting) / len(self.sizes) if self.sizes else float(bool(self.fitting))

    def fit_shares(self) -> dict[str, float]:
        """The share of the sampled configs within each limit that is set (of those free to check)."""
        sizes = self.sizes or ((self.fixed,) if self.fixed else ())
        shares = {}
        for name, key, value in _FREE_LIMITS:
            limit = getattr(self.budget, key)
            if limit is not None:
                shares[name] = sum(value(s, self.budget.precision) <= limit for s in sizes) / len(sizes)
        return shares

    @property
    def median_fitting(self) -> TrialConfig:
        fitting = self.fitting
        return fitting[len(fitting) // 2].config

    @property
    def max_epochs(self) -> int:
        """The most epochs a sampled config trains: Hyperband's ``max_resource``."""
        configs = [self.fixed] if self.fixed is not None else self.sizes
        return max((s.config.train.epochs for s in configs), default=1)

    @property
    def median_params(self) -> int:
        fitting = self.fitting
        return fitting[len(fitting) // 2].counts.params

    def smallest_line(self) -> str:
        smallest = self.fixed or self.sizes[0]
        limit = check_budget(smallest.counts, self.budget) or check_footprint(smallest.footprint, self.budget)
        return f"the smallest config found has {smallest.counts.params:,} params, {smallest.counts.flops:,} FLOPs" + (
            f" ({limit})" if limit else ""
        )

    def as_dict(self) -> dict:
        b = self.budget
        head = {
            "source": self.source,
            "image_size": self.image_size,
            "flops_convention": FLOPS_CONVENTION,
            "memory_convention": MEMORY_CONVENTION,
            "max_params": b.max_params,
            "max_flops": b.max_flops,
            "max_activation_kb": b.max_activation_kb,
            "max_model_kb": b.max_model_kb,
            "max_latency_ms": b.max_latency_ms,
            "precision": b.precision,
        }
        if self.latency:
            head["latency"] = {name: m.as_dict() for name, m in self.latency}
        if self.fixed is not None:
            return {**head, **self.fixed.as_dict()}
        return {
            **head,
            "samples": len(self.sizes),
            "fit_share": round(self.fit_share, 4),
            "fit_shares": {k: round(v, 4) for k, v in self.fit_shares().items()},
            "smallest": self.sizes[0].as_dict(),
            "largest": self.sizes[-1].as_dict(),
        }

    def table(self) -> str:
        b, precision = self.budget, self.budget.precision
        limits = f"max params {_num(b.max_params)}, max FLOPs {_num(b.max_flops)}"
        for key, unit in (
            ("max_activation_kb", "kb activation"),
            ("max_model_kb", "kb model"),
            ("max_latency_ms", "ms latency"),
        ):
            if getattr(b, key) is not None:
                limits += f", max {getattr(b, key):g} {unit}"
        lines = [f"{self.source} at {self.image_size}x{self.image_size}: {limits}"]
        rows = [("config", self.fixed)] if self.fixed else [("smallest", self.sizes[0]), ("largest", self.sizes[-1])]
        lines.append(f"{'':9} {'params':>13} {'trainable':>13} {'FLOPs':>16} {'act kb':>10} {'model kb':>11}  fits")
        for name, sized in rows:
            c, f = sized.counts, sized.footprint
            fits = "yes" if sized.fits else "NO"
            lines.append(
                f"{name:9} {c.params:>13,} {c.trainable_params:>13,} {c.flops:>16,} "
                f"{f.activation_kb(precision):>10,.1f} {f.model_kb(precision):>11,.1f}  {fits}"
            )
        if self.fixed is None:
            lines.append(f"{self.fit_share:.1%} of {len(self.sizes):,} sampled configs fit the budget")
        lines += [f"latency ({name}): {m.line()}" for name, m in self.latency]
        lines.append(f"FLOPs: {FLOPS_CONVENTION}")
        lines.append(f"memory ({precision}): {MEMORY_CONVENTION}")
        return "\n".join(lines)


def _num(value: int | None) -> str:
    return "none" if value is None else f"{value:,}"


def measures_latency(spec: Spec) -> bool:
    """Whether a run of ``spec`` measures latency: it has a latency limit, latency settings, or
    a latency objective."""
    budget = spec.budget
    objectives = (o.metric for o in spec.study.objectives)
    return budget.max_latency_ms is not None or budget.latency is not None or "latency_ms" in objectives


def count_spec(
    spec: Spec,
    samples: int = 2000,
    seed: int = 0,
    image_size: int | None = None,
    latency: bool = False,
    configs: Sequence[TrialConfig] | None = None,
) -> CountReport:
    """Counts for ``resnet-search count``: fvcore's for a fixed config; for a space, fast
    counts of ``samples`` random draws and of its low end (every range at its low end,
    every choice at its smallest option). Footprints of every config; with ``latency``, the
    latency of the fixed config, or of the space's smallest and largest.

    Args:
        image_size: The input size (default: the spec's, ``data.input_size``).
        latency: Measure latency as ``budget.latency`` says (``count`` does where
            :func:`measures_latency`, or ``--latency``); seconds per config.
        configs: A space's configs to count (a run's one :func:`sample_space`); None: sampled here.

    Raises:
        SpecError: the input size is unknown (an image folder without ``data.image_size``), the
            fixed config does not fit it, or no sample of the space does (see :func:`check_fits`).
        UserError: latency is to be measured and this machine cannot (see :func:`require_runtime`).
    """
    image_size = image_size or spec.data.input_size
    if image_size is None:
        raise SpecError(spec.source, "data.image_size", "is needed to count an image folder's model (e.g. 224)")
    measure, settings = latency, spec.budget.latency_settings
    if measure:
        require_runtime(settings, spec.source)
    if spec.is_fixed:
        config = spec.fixed()
        try:
            check_fits_everywhere(spec, config, image_size)
        except InvalidValue as error:
            raise SpecError(spec.source, error.key, error.message) from None
        model = build_model(config.model, image_size)
        counts = count_model(model, image_size, getattr(config.model, "in_channels", 3))
        sized = _sized(config, counts, footprint(config.model, image_size), spec.budget)
        if not measure:
            return CountReport(spec.source, image_size, spec.budget, sized)
        measured = _measured(spec, config, image_size)
        fits = sized.fits and check_latency(measured, spec.budget) is None
        return CountReport(
            spec.source,
            image_size,
            spec.budget,
            SizedConfig(config, counts, sized.footprint, fits),
            (),
            (("config", measured),),
        )
    sizes = _survey(spec, configs if configs is not None else sample_space(spec, samples, seed), image_size)
    timed: tuple[tuple[str, LatencyMeasurement], ...] = ()
    if measure:
        timed = tuple(
            (name, _measured(spec, s.config, image_size))
            for name, s in (("smallest", sizes[0]), ("largest", sizes[-1]))
        )
    return CountReport(spec.source, image_size, spec.budget, None, sizes, timed)


def _measured(spec: Spec, config: TrialConfig, image_size: int) -> LatencyMeasurement:
    """``config``'s latency as the spec says; a model that does not fit ``latency.image_size`` is the spec's error."""
    try:
        return measure_latency(config.model, image_size, spec.budget.latency_settings)
    except InvalidValue as error:
        raise SpecError(spec.source, error.key, error.message) from None


def sample_space(spec: Spec, samples: int = 2000, seed: int = 0) -> tuple[TrialConfig, ...]:
    """The space's low end and ``samples`` seeded random draws: a run samples its space once,
    and its checks, its count and its cost probe all read these."""
    return (*_low_end(spec), *random_samples(spec.space, samples, seed))


def trained_sides(spec: Spec, image_size: int) -> tuple[int, ...]:
    """Every side a trial of ``spec`` trains or validates at: its input's, and its rungs'
    (``study.pruner.rungs``' ``image_size`` and ``val_image_size``), largest first."""
    rungs = getattr(spec.study.pruner, "rungs", ())
    return tuple(sorted({image_size, *(s for r in rungs for s in (r.image_size, r.val_image_size) if s)}, reverse=True))


def check_fits_everywhere(spec: Spec, config: TrialConfig, image_size: int) -> None:
    """:func:`check_fits` at every side a trial trains at (:func:`trained_sides`): a sample that
    does not fit one of them is rejected untrained, by the survey and by the run alike.

    Raises:
        InvalidValue: what does not fit, the side named where it is a rung's.
    """
    for side in trained_sides(spec, image_size):
        try:
            check_fits(config, side)  # e.g. a pool kernel larger than the last feature map
        except InvalidValue as error:
            if side == image_size:
                raise
            raise InvalidValue(error.key, f"{error.message} (a rung of study.pruner trains at {side}px)") from None


def _survey(spec: Spec, configs: Sequence[TrialConfig], image_size: int) -> tuple[SizedConfig, ...]:
    """Fast counts and footprints of ``configs`` (those that fit every side they train at), smallest first."""
    sizes, misfit = [], InvalidValue("model", "no valid config could be sampled from the space")
    for config in configs:
        try:
            check_fits_everywhere(spec, config, image_size)
            counts = fast_count(config.model, image_size)
        except InvalidValue as error:
            misfit = error
            continue  # a run rejects such a sample untrained
        sizes.append(_sized(config, counts, footprint(config.model, image_size), spec.budget))
    if not sizes:
        sides = ", ".join(f"{side}x{side}" for side in trained_sides(spec, image_size))
        raise SpecError(spec.source, misfit.key, f"no sampled config fits {sides} input: {misfit.message}")
    sizes.sort(key=lambda s: (s.counts.params, s.counts.flops))
    return tuple(sizes)


def _low_end(spec: Spec) -> list[TrialConfig]:
    """The space's low end, or nothing where that corner breaks a check across fields."""
    try:
        return [spec.space.sample(LowEndSuggester())]
    except InvalidSample:
        return []


LATENCY_SAMPLES = 5  # fitting configs whose latency a dry run measures (seconds each)


def budget_lines(spec: Spec, report: CountReport, samples: int = LATENCY_SAMPLES) -> list[str]:
    """What ``run --dry-run`` says of the budgets: the share of the space within each limit, and
    where latency is measured, the latency of ``samples`` fitting configs spread over their sizes
    and the share of those within ``max_latency_ms``."""
    shares = report.fit_shares()
    lines = []
    if shares:
        within = ", ".join(f"{share:.1%} within {name}" for name, share in shares.items())
        lines.append(f"budgets: of {len(report.sizes):,} sampled configs {within}; {report.fit_share:.1%} within all")
    if not measures_latency(spec) or not report.fitting:
        return lines
    require_runtime(spec.budget.latency_settings, spec.source)
    fitting = report.fitting
    chosen = [fitting[round(i * (len(fitting) - 1) / max(1, samples - 1))] for i in range(min(samples, len(fitting)))]
    measured = [_measured(spec, s.config, report.image_size) for s in chosen]
    times = sorted(m.median_ms for m in measured)
    s = measured[0].settings
    line = (
        f"latency ({s['runtime']} on {s['device']}, {s['threads']} thread(s), batch {s['batch_size']}, "
        f"{s['precision']}): {len(measured)} configs from the smallest to the largest that fit measure "
        f"{times[0]:.2f} to {times[-1]:.2f} ms"
    )
    limit = spec.budget.max_latency_ms
    if limit is not None:
        line += f", {sum(t <= limit for t in times)} within max {limit:g} ms"
    seconds = sum(m.seconds for m in measured) / len(measured)
    return [*lines, f"{line}; {seconds:.1f}s per measurement, each architecture once per study"]
