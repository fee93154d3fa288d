"""Loading a spec file: YAML text to a typed :class:`~search.config.schema.Spec`, and back.

A spec file has the sections of :mod:`search.config.schema` plus ``schema_version`` and
an optional ``provenance`` (kept in the file, ignored on load). Only ``model`` and
``train`` may hold distributions; they are parsed together into the space of a
:class:`~search.config.schema.TrialConfig`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from search.config.distributions import Loc
from search.config.errors import SpecError
from search.config.model_configs import ModelConfig
from search.config.parsing import ParseError, check_keys, parse
from search.config.presets import find_preset, preset_names
from search.config.safe_yaml import MAX_SPEC_BYTES, decode_spec_bytes, load_yaml
from search.config.schema import (
    BudgetConfig,
    DataConfig,
    ResourcesConfig,
    Spec,
    StudyConfig,
    TrackingConfig,
    TrialConfig,
)
from search.config.train_configs import TrainConfig

__all__ = ["SCHEMA_VERSION", "load_spec", "parse_spec", "to_plain", "fixed_document"]

SCHEMA_VERSION = 1


SECTIONS: dict[str, type] = {
    "study": StudyConfig,
    "data": DataConfig,
    "budget": BudgetConfig,
    "resources": ResourcesConfig,
    "tracking": TrackingConfig,
}
SEARCHABLE_SECTIONS: dict[str, Any] = {"model": ModelConfig, "train": TrainConfig}
TOP_LEVEL_KEYS = ("schema_version", *SECTIONS, *SEARCHABLE_SECTIONS, "provenance")


def load_spec(path: str | Path) -> Spec:
    """Read and validate a spec file, or a preset named instead (see :mod:`search.config.presets`).

    Args:
        path: A YAML spec file; where no such file exists, a preset's name (``cifar_5m``,
            ``cifar_5m.yaml``, ``spaces/cifar_5m.yaml``).

    Returns:
        The typed spec.

    Raises:
        SpecError: the file is missing, not YAML, or wrong at a key (the message names it).
    """
    source = str(path)
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_SPEC_BYTES + 1)  # never more than the limit, whatever the file's size
    except FileNotFoundError:
        preset = find_preset(path)
        if preset is None:
            raise SpecError(source, "", f"no such file, nor a preset's name ({', '.join(preset_names())})") from None
        return load_spec(preset)
    except OSError as error:
        raise SpecError(source, "", f"cannot be read: {error.strerror or error}") from None
    return parse_spec(decode_spec_bytes(data, source), source)


def parse_spec(text: str, source: str = "<spec>") -> Spec:
    """Validate a spec given as YAML text; ``source`` names it in errors."""
    raw = load_yaml(text, source)  # size, depth, alias expansion and duplicate keys limited
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        sections = ", ".join(TOP_LEVEL_KEYS)
        raise SpecError(source, "", f"must be a mapping of sections ({sections}), got {type(raw).__name__}")
    try:
        return _parse_sections(raw, source, text)
    except ParseError as error:
        raise SpecError(source, error.key, error.message) from None


def _parse_sections(raw: dict, source: str, text: str) -> Spec:
    _check_schema_version(raw.get("schema_version", SCHEMA_VERSION))
    check_keys(raw, TOP_LEVEL_KEYS, Loc())
    fixed = {
        key: parse(_section(raw, key), cls, Loc((key,), key), searchable=False).value() for key, cls in SECTIONS.items()
    }
    trial_raw = {key: _section(raw, key) for key in SEARCHABLE_SECTIONS}
    trial_raw["model"] = _channels_from_data(trial_raw["model"], fixed["data"])
    space = parse(trial_raw, TrialConfig, Loc(), searchable=True)
    return Spec(space=space, source=source, text=text, **fixed)


def _channels_from_data(model: dict, data: DataConfig) -> dict:
    """Our ResNet's ``in_channels`` follows ``data.channels`` where the model section leaves it
    out (3 is both defaults); a fixed one that differs is refused here, before any data is read.
    ``auto`` is checked once the images are loaded.

    Raises:
        ParseError: ``model.in_channels`` is not ``data.channels``.
    """
    if data.channels == "auto" or "choice" in model or model.get("name", "resnet") != "resnet":
        return model
    given = model.get("in_channels", data.channels)
    if isinstance(given, int) and not isinstance(given, bool) and given != data.channels:
        raise ParseError(
            "model.in_channels",
            f"must be {data.channels}, the channels of the images (data.channels: {data.channels}), got {given}",
        )
    return model if "in_channels" in model or data.channels == 3 else {**model, "in_channels": given}


def _section(raw: dict, key: str) -> dict:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ParseError(key, f"must be a mapping, got {value!r}")
    return value


def _check_schema_version(version: Any) -> None:
    """Version 1 is the only schema released so far, so there is nothing to migrate from yet;
    a later schema adds its migration from the one before here."""
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise ParseError(
            "schema_version",
            f"the file has schema version {version}, newer than this "
            f"resnet-search's {SCHEMA_VERSION}: upgrade resnet-search to read it",
        )
    if version != SCHEMA_VERSION:
        raise ParseError(
            "schema_version",
            f"the file has schema version {version!r}, which never existed: "
            f"version {SCHEMA_VERSION} is the first and current one; set schema_version: {SCHEMA_VERSION}",
        )


def to_plain(value: Any) -> Any:
    """A config as plain YAML/JSON data: dataclasses become mappings, tuples lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [to_plain(item) for item in value]
    return value


def fixed_document(spec: Spec, trial: TrialConfig, provenance: dict | None = None) -> dict:
    """A fixed spec for ``trial``, in the schema of ``spaces/*.yaml``: every key written out,
    so the file trains the same config whatever later versions choose as defaults.

    ``load_spec`` reads it back as a fixed spec whose ``fixed()`` equals ``trial``; its
    ``provenance`` (where the config came from) is kept in the file and ignored on load.
    """
    study = dataclasses.replace(spec.study, enqueue=())
    document = {
        "schema_version": SCHEMA_VERSION,
        "study": to_plain(study),
        "data": to_plain(spec.data),
        "model": to_plain(trial.model),
        "train": to_plain(trial.train),
        "budget": to_plain(spec.budget),
        "resources": to_plain(spec.resources),
    }
    if provenance:
        document["provenance"] = provenance
    return document
