"""Numeric bounds of config fields, kept in dataclass field metadata so that the parser checks
fixed values and distribution ranges alike."""

from __future__ import annotations

from dataclasses import field
from typing import Any


def bounded(default: Any, **bounds: float) -> Any:
    """A dataclass field with a default and numeric bounds (``ge``, ``gt``, ``le``, ``lt``); the
    bounds of a tuple field hold for each of its items."""
    return field(default=default, metadata=bounds)


def required(**bounds: float) -> Any:
    """A dataclass field without a default (a file must give it), with numeric bounds as :func:`bounded`."""
    return field(metadata=bounds)
