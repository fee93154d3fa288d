"""Latency measured before training: a config is built with random weights, exported to ONNX
(and quantized, for int8) or run eagerly by torch, warmed up, and timed on a batch of random
images. The median of the timed runs is the latency; the p10-p90 range is its spread. Every
measurement carries the machine, the runtime's version, the threads and the load it was taken
under: latency belongs to one machine (docs/deployment.md).

Measuring costs seconds (an export is most of it), so a search measures each architecture
once per machine and settings (:func:`latency_key`; the engine caches measurements on the
study). Torch is always there; onnxruntime needs the ``[onnx]`` extra.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from search.config import BudgetConfig, InvalidValue, LatencyConfig, ModelConfig, ResNetConfig, UserError, to_plain
from search.models import build_model

__all__ = [
    "LatencyMeasurement",
    "measure_latency",
    "time_onnx",
    "quantize_onnx",
    "export_onnx",
    "settle_latency",
    "check_latency",
    "latency_constraint",
    "latency_key",
    "machine_record",
    "require_runtime",
]

ONNX_EXTRA = "pip install 'resnet-search[onnx]'"
SETTING_KEYS = {"runtime", "device", "threads", "batch_size", "image_size", "precision"}  # what line() shows
CALIBRATION_BATCHES = 4  # of random images, to quantize a model whose latency alone matters


@dataclass(frozen=True)
class LatencyMeasurement:
    """One latency measurement and everything it depends on.

    Attributes:
        median_ms: The median of the timed runs, per batch.
        p10_ms: The 10th percentile of the timed runs; ``p90_ms`` the 90th: their range is the spread.
        settings: How it was measured: runtime, device, threads, batch size, image size,
            precision, warm-up and timed runs.
        machine: Where: CPU (and GPU), cores, OS, Python, torch and the runtime's version.
        load: The 1-minute load average before measuring (None where the OS has none).
        seconds: What measuring cost, build and export included.
        measurements: How many measurements this one settles (2 when near the limit: the lower counts).
        measured_at: When (ISO 8601, local time with its offset).
    """

    median_ms: float
    p10_ms: float
    p90_ms: float
    settings: dict[str, Any]
    machine: dict[str, Any]
    load: float | None
    seconds: float
    measurements: int = 1
    measured_at: str = ""

    @property
    def spread_ms(self) -> float:
        return self.p90_ms - self.p10_ms

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "spread_ms": round(self.spread_ms, 4)}

    @classmethod
    def from_dict(cls, stored: Any) -> LatencyMeasurement | None:
        """What :meth:`as_dict` wrote; None for anything else (a cache read back is untrusted)."""
        try:
            found = cls(**{f.name: stored[f.name] for f in fields(cls) if f.name in stored})
        except (KeyError, TypeError):
            return None
        times = (found.median_ms, found.p10_ms, found.p90_ms)
        numbers = all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in times)
        if not numbers or not all(math.isfinite(t) and t > 0 for t in times):
            return None
        if not isinstance(found.settings, dict) or not isinstance(found.machine, dict):
            return None
        return found if found.settings.keys() >= SETTING_KEYS else None

    def line(self) -> str:
        """``4.21 ms (p10-p90 4.10-4.60 ms; onnxruntime 1.22.0 on cpu, 1 thread, batch 1, 32px, fp32; ...)``."""
        s, m = self.settings, self.machine
        threads = f"{s['threads']} thread" + ("s" if s["threads"] != 1 else "")
        device = m.get("gpu") if s["device"] == "cuda" else m.get("cpu")
        load = f", load {self.load:.2f}" if self.load is not None else ""
        return (
            f"{self.median_ms:.3f} ms (p10-p90 {self.p10_ms:.3f}-{self.p90_ms:.3f} ms; {s['runtime']} "
            f"{m.get('runtime_version')} on {s['device']}, {threads}, batch {s['batch_size']}, {s['image_size']}px, "
            f"{s['precision']}; {device}, {m.get('cores')} cores{load})"
        )


# --------------------------------------------------------------------------- where and how


def require_runtime(settings: LatencyConfig, source: str = "") -> None:
    """Raises UserError, naming the spec file ``source`` and the key, when this machine cannot
    measure as ``settings`` say."""
    problem = _runtime_problem(settings)
    if problem:
        raise UserError(f"{source}: {problem}" if source else problem)


def _runtime_problem(settings: LatencyConfig) -> str | None:
    if settings.device == "cuda" and not torch.cuda.is_available():
        return "budget.latency.device: cuda, but this machine has no CUDA GPU; measure on cpu or on a GPU"
    if settings.runtime != "onnxruntime":
        return None
    try:
        import onnxruntime
    except ImportError:
        return f"budget.latency.runtime: onnxruntime is not installed: {ONNX_EXTRA}, or set runtime: torch"
    if settings.device == "cuda" and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return "budget.latency.device: cuda, but this onnxruntime has no CUDA provider (onnxruntime-gpu)"
    return None


def machine_record(settings: LatencyConfig) -> dict[str, Any]:
    """What a measurement depends on besides the model and settings: hardware and software."""
    record: dict[str, Any] = {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "runtime_version": torch.__version__,
    }
    if settings.runtime == "onnxruntime":
        import onnxruntime

        record["runtime_version"] = onnxruntime.__version__
    if settings.device == "cuda":
        record["gpu"] = torch.cuda.get_device_name()
    return record


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def latency_key(config: ModelConfig, image_size: int, settings: LatencyConfig, machine: dict[str, Any]) -> str:
    """The same key for the same architecture, input, settings and machine: what a cache of
    measurements is keyed by. Keys of the config that change nothing at inference (initial
    weights, freezing, BatchNorm's training options, dropout) are left out, and so are the
    settings that change no figure (``tolerance``, ``measure_on``)."""
    plain = to_plain(_architecture(config))
    setting = {k: v for k, v in to_plain(settings).items() if k not in ("tolerance", "measure_on")}
    text = json.dumps([plain, _size(image_size, settings), setting, machine], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _architecture(config: ModelConfig) -> ModelConfig:
    """``config`` without what the inference graph does not depend on."""
    if isinstance(config, ResNetConfig):
        return replace(
            config,
            init_from=None,
            freeze="none",
            zero_init_residual=False,
            batchnorm=type(config.batchnorm)(),
            dropout=0.0,
            head=replace(config.head, dropout=0.0),
        )
    return replace(config, weights=None, init_from=None, freeze="none", dropout=0.0)


def _size(image_size: int, settings: LatencyConfig) -> int:
    return settings.image_size or image_size


# --------------------------------------------------------------------------- measuring


def measure_latency(config: ModelConfig, image_size: int, settings: LatencyConfig) -> LatencyMeasurement:
    """Build ``config`` with random weights and time it as ``settings`` say.

    Args:
        config: The architecture.
        image_size: The trials' input size (``settings.image_size`` beats it).
        settings: Runtime, device, threads, batch, precision, warm-up and timed runs.

    Raises:
        UserError: The runtime is missing or the device absent (see :func:`require_runtime`).
        InvalidValue: The model does not fit ``settings.image_size``.
    """
    require_runtime(settings)
    began = time.perf_counter()
    size = _size(image_size, settings)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            model = build_model(_architecture(config), size).eval()
        except InvalidValue as error:  # e.g. a pool kernel larger than the last map at this size
            raise InvalidValue(
                "budget.latency.image_size", f"{size}px does not fit the model: {error.message}"
            ) from None
    images = torch.randn(settings.batch_size, getattr(config, "in_channels", 3), size, size)
    if settings.runtime == "torch":
        times = _time_torch(model, images, settings)
    else:
        with tempfile.TemporaryDirectory(prefix="resnet-search-latency-") as folder:
            path = export_onnx(model, images, Path(folder) / "model.onnx")
            if settings.precision == "int8":
                path = quantize_onnx(path, Path(folder) / "model.int8.onnx", _random_batches(images))
            times = _time_session(path, images, settings)
    return _summary(times, settings, size, time.perf_counter() - began)


def time_onnx(path: Path, image_size: int, in_channels: int, settings: LatencyConfig) -> LatencyMeasurement:
    """Time an ONNX file on random images as ``settings`` say (its runtime must be onnxruntime)."""
    require_runtime(settings)
    began = time.perf_counter()
    images = torch.randn(settings.batch_size, in_channels, image_size, image_size)
    return _summary(_time_session(path, images, settings), settings, image_size, time.perf_counter() - began)


def _summary(times: list[float], settings: LatencyConfig, size: int, seconds: float) -> LatencyMeasurement:
    milliseconds = sorted(t * 1000 for t in times)
    deciles = statistics.quantiles(milliseconds, n=10, method="inclusive")
    return LatencyMeasurement(
        median_ms=statistics.median(milliseconds),
        p10_ms=deciles[0],
        p90_ms=deciles[-1],
        settings={**to_plain(settings), "image_size": size},
        machine=machine_record(settings),
        load=_load(),
        seconds=round(seconds, 3),
        measured_at=dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    )


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _timed(run: Callable[[], object], settings: LatencyConfig) -> list[float]:
    """Seconds of each of ``settings.repeats`` runs, after ``settings.warmup`` untimed ones."""
    for _ in range(settings.warmup):
        run()
    times = []
    for _ in range(settings.repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _time_torch(model: nn.Module, images: torch.Tensor, settings: LatencyConfig) -> list[float]:
    device = torch.device(settings.device)
    model, images = model.to(device), images.to(device)

    def run() -> None:
        model(images)
        if device.type == "cuda":
            torch.cuda.synchronize()

    with _torch_threads(settings.threads), torch.inference_mode():
        return _timed(run, settings)


def _time_session(path: Path, images: torch.Tensor, settings: LatencyConfig) -> list[float]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = settings.threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    provider = "CUDAExecutionProvider" if settings.device == "cuda" else "CPUExecutionProvider"
    session = onnxruntime.InferenceSession(str(path), options, providers=[provider])
    name = session.get_inputs()[0].name
    feed = {name: images.numpy()}
    return _timed(lambda: session.run(None, feed), settings)


# --------------------------------------------------------------------------- ONNX and int8


def export_onnx(model: nn.Module, images: torch.Tensor, path: Path) -> Path:
    """``model`` as ONNX at ``path`` with torch's exporter, for batches shaped as ``images``.

    Raises:
        UserError: onnxscript (torch's exporter needs it) is not installed.
    """
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        raise UserError(f"latency with onnxruntime needs onnxscript to export: {ONNX_EXTRA}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (images,), str(path), dynamo=True, input_names=["images"], output_names=["logits"], verbose=False
        )
    return path


def quantize_onnx(source: Path, target: Path, batches: Iterable[np.ndarray]) -> Path:
    """Post-training static quantization (onnxruntime's ``quantize_static``, QDQ, int8 weights
    per channel and int8 activations), calibrated on ``batches`` of normalised images.

    The model is pre-processed first (shape inference and graph optimization, as
    onnxruntime recommends), so that BatchNorm folds into the convolutions before quantizing.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch}

    prepared = target.with_name(target.stem + ".prepared.onnx")
    try:
        quant_pre_process(str(source), str(prepared))
        quantize_static(
            str(prepared),
            str(target),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
        )
    finally:
        prepared.unlink(missing_ok=True)
    return target


def _random_batches(images: torch.Tensor) -> list[np.ndarray]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(images.shape, generator=generator).numpy() for _ in range(CALIBRATION_BATCHES)]


# --------------------------------------------------------------------------- the budget


def settle_latency(measure: Callable[[], LatencyMeasurement], budget: BudgetConfig) -> LatencyMeasurement:
    """A measurement to decide on: one over ``max_latency_ms`` by no more than the settings'
    tolerance is measured again, and the lower median counts (load only slows a run down)."""
    first = measure()
    limit, tolerance = budget.max_latency_ms, budget.latency_settings.tolerance
    if limit is None or not limit < first.median_ms <= limit * (1 + tolerance):
        return first
    again = measure()
    return replace(min(first, again, key=lambda m: m.median_ms), measurements=2)


def check_latency(measured: LatencyMeasurement, budget: BudgetConfig) -> str | None:
    """``None`` if ``measured`` is within ``max_latency_ms``, else why not ("latency 6.2 ms > max 5 ms ...")."""
    limit = budget.max_latency_ms
    if limit is None or measured.median_ms <= limit:
        return None
    s = measured.settings
    return (
        f"latency {measured.median_ms:.3f} ms > max {limit:g} ms "
        f"({s['runtime']} on {s['device']}, {s['threads']} thread(s), batch {s['batch_size']}, {s['precision']})"
    )


def latency_constraint(measured: LatencyMeasurement, budget: BudgetConfig) -> dict[str, float]:
    """The Optuna constraint value by name (feasible where <= 0); empty without a limit."""
    if budget.max_latency_ms is None:
        return {}
    return {"latency_ms": measured.median_ms / budget.max_latency_ms - 1.0}
