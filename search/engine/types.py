"""Callable types the engine's functions take."""

from __future__ import annotations

from collections.abc import Callable

Log = Callable[[str], None]  # receives one progress line
Trainable = Callable[[dict], None]  # a Tune function trainable


def ignore(_: str) -> None:
    """A :data:`Log` that drops every line."""
