"""Errors a user can fix: the CLI prints them as one line and exits with status 2."""

from __future__ import annotations


def one_line(text: str) -> str:
    """``text`` with line breaks and other unprintable characters escaped (``\\n``): an error
    stays one line whatever a file's keys or names hold."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


class UserError(Exception):
    """Bad input from the user (a file, a flag, a storage, data): never a bug of ours."""


class SpecError(UserError):
    """A spec file is wrong at a key.

    Args:
        file: The spec file's path as the user gave it (or ``"<spec>"`` for in-memory specs).
        key: The key path in display form, e.g. ``model.stages[1].width``; empty for the whole file.
        message: What is wrong and what is allowed.
    """

    def __init__(self, file: str, key: str, message: str) -> None:
        self.file = file
        self.key = key
        self.message = message
        where = f"{file}: {key}" if key else file
        super().__init__(one_line(f"{where}: {message}"))


class InvalidValue(ValueError):
    """A config's fields do not fit together; raised from ``__post_init__``.

    Args:
        key: The offending field, relative to the config that raised (``aux_head.after_stage``).
        message: What is wrong and what is allowed.
    """

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")
