"""Durations as a user writes them (``90s``, ``30m``, ``2h``, ``1d``) and as we print them."""

from __future__ import annotations

import re

from search.config.errors import InvalidValue

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")


def parse_duration(text: str | float | int) -> float:
    """``"90s"`` -> 90.0, ``"30m"`` -> 1800.0, ``"2h"``, ``"1d"``; a bare number is seconds.

    Raises:
        InvalidValue: not a positive duration in those forms.
    """
    if isinstance(text, bool):
        raise InvalidValue("timeout", f"must be a duration like 90s, 30m, 2h or 1d, got {text!r}")
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        match = _DURATION.fullmatch(str(text).strip().lower())
        if match is None:
            raise InvalidValue("timeout", f"must be a duration like 90s, 30m, 2h or 1d, got {text!r}")
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if not 0 < seconds < 365 * 86400:
        raise InvalidValue("timeout", f"must be above 0 and under a year, got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``3700`` -> ``1h01m``."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
