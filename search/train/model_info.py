"""``model.json``, the part of a model folder that says how to use the model and where it came
from, as one typed, frozen :class:`ModelInfo` (schema version :data:`MODEL_SCHEMA_VERSION`).

A folder is untrusted input: it may have been copied, edited or damaged since it was
written. :func:`parse_model_info` reads the file once, at the edge, through the spec's own
parser (:func:`search.config.parsing.parse`): every field is required, typed and bounded,
and the fields are checked against each other, so that a wrong one is one line naming the
file, the key and what is allowed, never a traceback or a NaN later on. The writer builds a
:class:`ModelInfo` and parses what it is about to write (:func:`checked_document`), so what
is written is what is read.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from search.config import InvalidValue, LatencyConfig, UserError, to_plain
from search.config.distributions import Loc
from search.config.errors import one_line
from search.config.files import study_name_problem
from search.config.parsing import ParseError, parse, required
from search.data.fingerprint import SPLITS, DataRecord
from search.data.fit import RESIZE_TEXTS, ImageFit

MODEL_SCHEMA_VERSION = 1
INFO_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"
RESIZE = RESIZE_TEXTS["shorter_side"]  # what folders written before the resize modes say
FORMULA = "(pixel / 255 - mean) / std"
MAX_INFO_BYTES = 16 * 2**20  # 100,000 class names fit many times over
MAX_CLASSES = 100_000  # as model.num_classes
MAX_INPUT_SIZE = 4096
# Normalised pixels are at most 1 / std: above this, float32 inputs stay far from overflowing.
MIN_STD = 1e-6
MAX_SEED = 2**32 - 1  # as train.seed
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class InputInfo:
    """The images the model takes: ``channels`` x ``size`` x ``size``, decoded as ``pixels``
    (``RGB``, or ``L``: grayscale) and fitted to the size as ``resize`` says (one of
    :data:`~search.data.fit.RESIZE_TEXTS`; folders written before the modes say the first)."""

    channels: int = required(ge=1, le=3)
    size: int = required(ge=1, le=MAX_INPUT_SIZE)
    pixels: Literal["RGB", "L"] = required()
    resize: str = required()

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_TEXTS.values():
            allowed = " | ".join(repr(text) for text in RESIZE_TEXTS.values())
            raise InvalidValue(
                "resize", f"must be one of {allowed} (what this resnet-search does), got {self.resize[:80]!r}"
            )

    @property
    def fit(self) -> ImageFit:
        """How ``predict`` decodes and fits a file for this model, as training did."""
        return ImageFit.recorded(self.size, self.resize, self.pixels)


@dataclass(frozen=True)
class Normalization:
    """Per-channel ``mean`` and ``std`` on the [0, 1] scale, applied as ``formula`` says."""

    mean: tuple[float, ...] = required(ge=0.0, le=1.0)
    std: tuple[float, ...] = required(ge=MIN_STD, le=1.0)
    formula: str = required()

    def __post_init__(self) -> None:
        _check_exactly("formula", self.formula, FORMULA)


@dataclass(frozen=True)
class Evaluated:
    """Where ``val_acc`` and ``test_acc`` were measured: the device type and its precision."""

    device: str = required()
    precision: Literal["bf16", "fp32"] = required()


@dataclass(frozen=True)
class SplitCounts:
    train: int = required(ge=0)
    val: int = required(ge=0)
    test: int = required(ge=0)


@dataclass(frozen=True)
class DataInfo:
    """The data's record (:class:`~search.data.fingerprint.DataRecord`) as ``model.json`` stores it."""

    location: str = required()
    classes: tuple[str, ...] = required()
    counts: SplitCounts = required()
    image_size: int = required(ge=1, le=MAX_INPUT_SIZE)
    sha256: str = required()

    def __post_init__(self) -> None:
        if "\x00" in self.location or not Path(self.location).is_absolute():
            raise InvalidValue("location", f"must be the absolute path the data was found at, got {self.location!r}")
        _check_sha256("sha256", self.sha256)

    @classmethod
    def of(cls, record: DataRecord) -> DataInfo:
        return cls(record.location, record.classes, SplitCounts(*record.counts), record.image_size, record.sha256)

    def record(self) -> DataRecord:
        counts = tuple(getattr(self.counts, split) for split in SPLITS)
        return DataRecord(self.location, self.classes, counts, self.image_size, self.sha256)


@dataclass(frozen=True)
class WeightsInfo:
    """The weights file, always ``model.safetensors`` beside ``model.json``, and its SHA-256."""

    file: str = required()
    sha256: str = required()

    def __post_init__(self) -> None:
        if self.file != WEIGHTS_FILE:
            raise InvalidValue("file", f"must be {WEIGHTS_FILE!r} (beside {INFO_FILE}), got {self.file!r}")
        _check_sha256("sha256", self.sha256)


@dataclass(frozen=True)
class ExportLatency:
    """An export's latency as :class:`~search.budget.latency.LatencyMeasurement` records it:
    the timed runs' median and spread, the settings, the machine and its load, and when."""

    median_ms: float = required(gt=0.0)
    p10_ms: float = required(gt=0.0)
    p90_ms: float = required(gt=0.0)
    settings: LatencyConfig = required()
    machine: dict[str, str | int | None] = required()
    load: float | None = required(ge=0.0)
    seconds: float = required(ge=0.0)
    measurements: int = required(ge=1)
    measured_at: str = required()
    spread_ms: float = required(ge=0.0)

    def __post_init__(self) -> None:
        if not self.p10_ms <= self.median_ms <= self.p90_ms:
            raise InvalidValue("median_ms", f"{self.median_ms} is not between p10_ms and p90_ms")


@dataclass(frozen=True)
class ExportInfo:
    """An ONNX export ``export-model --quantize`` evaluated and timed: its file (a name beside
    ``model.json``, or a path), size, test accuracy and latency; ``calibration_images`` for int8."""

    file: str = required()
    bytes: int = required(ge=1)
    test_acc: float = required(ge=0.0, le=1.0)
    test_images: int = required(ge=1)
    latency: ExportLatency = required()
    calibration_images: int | None = required(ge=1)


@dataclass(frozen=True)
class Deployment:
    """``model.json``'s ``deployment``: the fp32 export and its int8 quantization, side by side."""

    fp32: ExportInfo = required()
    int8: ExportInfo = required()


@dataclass(frozen=True)
class ModelInfo:
    """``model.json``: classes in output order, the input and its normalisation, size, accuracy,
    how it was evaluated, the data's record, study, trial, seed, the weights' checksum, the
    package versions and when it was written. The fields are the file's keys, in its order."""

    schema_version: int = required(ge=1, le=MODEL_SCHEMA_VERSION)
    classes: tuple[str, ...] = required()
    input: InputInfo = required()
    normalization: Normalization = required()
    params: int = required(ge=1)
    trainable_params: int = required(ge=0)
    flops: int = required(ge=0)
    val_acc: float | None = required(ge=0.0, le=1.0)
    test_acc: float | None = required(ge=0.0, le=1.0)
    trained_on: Literal["train", "train+val"] = required()
    epochs: int = required(ge=0)
    evaluated: Evaluated = required()
    data: DataInfo | None = required()
    study: str | None = required()
    trial: int | None = required(ge=0)
    seed: int = required(ge=0, le=MAX_SEED)
    weights: WeightsInfo = required()
    versions: dict[str, str | None] = required()
    created: str = required()
    deployment: Deployment | None = None  # written by ``export-model --quantize`` only

    def __post_init__(self) -> None:
        _check_classes("classes", self.classes)
        if self.study is not None and study_name_problem(self.study):
            raise InvalidValue("study", str(study_name_problem(self.study)))
        try:
            dt.datetime.fromisoformat(self.created)
        except ValueError:
            raise InvalidValue(
                "created", f"must be an ISO 8601 time (2026-01-31T12:00:00+00:00), got {self.created[:80]!r}"
            ) from None
        channels = self.input.channels
        for key in ("mean", "std"):
            values = getattr(self.normalization, key)
            if len(values) != channels:
                raise InvalidValue(
                    f"normalization.{key}", f"has {len(values)} values; input.channels is {channels}: one per channel"
                )
        if self.trainable_params > self.params:
            raise InvalidValue("trainable_params", f"{self.trainable_params} is more than params ({self.params})")
        if self.data is not None:
            if self.data.classes != self.classes:
                raise InvalidValue("data.classes", "differ from classes (the names and order the model was trained on)")
            if self.data.image_size != self.input.size:
                raise InvalidValue("data.image_size", f"{self.data.image_size}, but input.size is {self.input.size}")

    def as_dict(self) -> dict[str, Any]:
        """The JSON document, keys in the file's order; ``deployment`` only where there is one."""
        document: dict[str, Any] = to_plain(self)
        if self.deployment is None:
            del document["deployment"]
        return document


def _check_classes(key: str, classes: tuple[str, ...]) -> None:
    if not 2 <= len(classes) <= MAX_CLASSES:
        raise InvalidValue(key, f"must list 2 to {MAX_CLASSES:,} class names, got {len(classes)}")
    if not all(classes):
        raise InvalidValue(key, "a class name is empty")
    if len(set(classes)) != len(classes):
        twice = sorted({name for name in classes if classes.count(name) > 1})[0]
        raise InvalidValue(key, f"lists {twice!r} twice; each class is one output")


def _check_exactly(key: str, value: str, expected: str) -> None:
    """A statement of how the model is used must be the one this version carries out."""
    if value != expected:
        raise InvalidValue(key, f"must be {expected!r} (what this resnet-search does), got {value[:80]!r}")


def _check_sha256(key: str, value: str) -> None:
    if not _SHA256.fullmatch(value):
        raise InvalidValue(key, f"must be 64 lowercase hex digits (a SHA-256), got {value[:80]!r}")


# --------------------------------------------------------------------------- reading and writing


def read_model_info(path: Path) -> ModelInfo:
    """Read and check a ``model.json``.

    Raises:
        UserError: Unreadable, not JSON (a key given twice included), too large, of a newer
            schema, or wrong at a key (the message names the file, the key, what is allowed).
    """
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_INFO_BYTES + 1)
    except OSError as error:
        raise UserError(f"{path}: cannot be read ({error.strerror or error})") from None
    if len(data) > MAX_INFO_BYTES:
        raise UserError(f"{path}: larger than {MAX_INFO_BYTES // 2**20} MiB: not a model.json")
    try:
        raw = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise UserError(one_line(f"{path}: not readable JSON ({error})")) from None
    return parse_model_info(raw, str(path))


def parse_model_info(raw: Any, source: str) -> ModelInfo:
    """``raw`` (a parsed ``model.json``) as a :class:`ModelInfo`; ``source`` names it in errors.

    Raises:
        UserError: Not a mapping, a newer schema, or wrong at a key.
    """
    if not isinstance(raw, dict):
        raise UserError(f"{source}: must be a JSON object (a resnet-search model.json), got {type(raw).__name__}")
    version = raw.get("schema_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > MODEL_SCHEMA_VERSION:
        raise UserError(
            f"{source}: schema_version: {version}, newer than this resnet-search's "
            f"{MODEL_SCHEMA_VERSION}: upgrade resnet-search to read it"
        )
    try:
        info: ModelInfo = parse(raw, ModelInfo, Loc(), searchable=False).value()
    except ParseError as error:
        raise UserError(one_line(f"{source}: {error.key}: {error.message}")) from None
    return info


def checked_document(info: ModelInfo) -> str:
    """The ``model.json`` text of ``info``, once it has been read back as the reader reads it.

    Raises:
        UserError: ``info`` holds what no reader would accept (the message names the key).
    """
    document = info.as_dict()
    text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    parse_model_info(json.loads(text), f"{INFO_FILE} (being written)")
    return text


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key!r} is given twice")
        out[key] = value
    return out
