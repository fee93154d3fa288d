"""Files the user names, checked before they are opened; files we write, written whole or
not at all.

A path given on the command line may name a FIFO (``open`` waits for a writer forever), a
device (``/dev/zero`` never ends; ``/dev/full`` fails every write), a socket, a folder, or
lie under a file: the readers (:mod:`search.data.images`) ask :func:`file_kind` first and
refuse anything but a regular file; every command that writes checks its path with
:func:`check_output_file` or :func:`check_output_folder` before the work, then writes with
:func:`write_bytes` or :func:`write_text` (a temporary file in the same folder, renamed into
place). An image's size is in its header: :func:`default_pixel_limit` bounds it before its
pixels are decoded.

A study name names its default storage file (``studies/<name>.db``) and its folder
(``studies/<name>/``), so it must stay one plain path component: no separators, no ``..``,
nothing empty (:func:`study_name_problem`). The spec's ``study.name`` is checked when the spec
is read; names that come from elsewhere (``--study``, a storage made by another tool) are
checked by :func:`search.study.storage.safe_study_name`, which uses the same rule.

Light on purpose (no torch): the commands that only write reports import it.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from search.config.errors import InvalidValue, UserError

MAX_PIXELS_VARIABLE = "RESNET_SEARCH_MAX_PIXELS"
# Above a 108-megapixel phone photo; at most 300 MB of RGB. A PNG of 169 megapixels can be 0.5 MB.
DEFAULT_MAX_PIXELS = 100_000_000

STUDY_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
STUDY_NAME_ALLOWED = "1 to 100 letters, digits, '_', '-' or '.', starting with a letter or digit"

REGULAR_FILE, FOLDER = "a regular file", "a folder"
_KINDS = (
    (stat.S_ISREG, REGULAR_FILE),
    (stat.S_ISDIR, FOLDER),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def study_name_problem(name: object) -> str | None:
    """What is wrong with ``name`` as a study name, or ``None`` when it is safe.

    Args:
        name: A candidate study name.

    Returns:
        A message naming what is allowed, or ``None``.
    """
    if isinstance(name, str) and STUDY_NAME_PATTERN.fullmatch(name):
        return None
    return f"{name!r} cannot name a study's file and folder; use {STUDY_NAME_ALLOWED}"


def kind_of_mode(mode: int) -> str:
    """``st_mode`` in words: ``a regular file``, ``a folder``, ``a FIFO``, ``a character device``..."""
    return next((name for test, name in _KINDS if test(mode)), "not a file")


def file_kind(path: str | Path) -> str | None:
    """What ``path`` names (symbolic links followed), from ``stat`` alone: nothing is opened.

    Returns:
        :func:`kind_of_mode` of it, or ``None`` when nothing is there (or it cannot be stat'ed).
    """
    try:
        return kind_of_mode(os.stat(path).st_mode)
    except (OSError, ValueError):  # ValueError: a NUL byte in the name
        return None


def parse_pixel_limit(text: str | int, key: str = "--max-pixels") -> int:
    """The most pixels an image may have, from a flag or variable's text.

    Raises:
        InvalidValue: not a whole number >= 1.
    """
    try:
        limit = int(text)
    except (TypeError, ValueError):
        limit = 0
    if not limit >= 1:
        raise InvalidValue(key, f"must be a whole number of pixels >= 1, like {DEFAULT_MAX_PIXELS}, got {text!r}")
    return limit


def default_pixel_limit() -> int:
    """``$RESNET_SEARCH_MAX_PIXELS`` when set, else :data:`DEFAULT_MAX_PIXELS`.

    Raises:
        UserError: the variable is set to something else than a whole number >= 1.
    """
    text = os.environ.get(MAX_PIXELS_VARIABLE, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        return parse_pixel_limit(text, MAX_PIXELS_VARIABLE)
    except InvalidValue as error:
        raise UserError(str(error)) from None


def check_output_file(out: str | Path, flag: str = "--out") -> Path:
    """``out`` as a file to write, checked before any work is done for it.

    Args:
        out: The path as the user gave it.
        flag: Names it in errors (``--out``); empty for a default path.

    Returns:
        The path.

    Raises:
        UserError: One line naming the path and what is wrong: empty, a folder, something
            other than a regular file (``/dev/full``, a FIFO), under a file, or in a folder
            that cannot be written (permissions, a read-only file system).
    """
    path, where = _named(out, flag, "file")
    kind = file_kind(path)
    if kind is not None and kind != REGULAR_FILE:
        raise UserError(f"{where}: {kind}, not a regular file; name a file to write")
    _check_can_create_in(path, where, default=not flag)
    return path


def check_output_folder(out: str | Path, flag: str = "--out") -> Path:
    """``out`` as a folder to write files into (made if missing), checked before the work.

    Raises:
        UserError: One line naming the path and what is wrong: empty, not a folder, under a
            file, or in a folder that cannot be written.
    """
    path, where = _named(out, flag, "folder")
    kind = file_kind(path)
    if kind is not None and kind != FOLDER:
        raise UserError(f"{where}: {kind}, not a folder; name a folder to write into")
    _check_can_create_in(path / "_", where, default=not flag)  # the files go inside it
    return path


def _named(out: str | Path, flag: str, what: str) -> tuple[Path, str]:
    """``out`` as a path and as errors name it (``--out PATH``, or the path alone)."""
    text = os.fspath(out)
    if not text.strip():
        raise UserError(f"{flag or 'output'} {text!r}: an empty path; name the {what} to write")
    return Path(text), f"{flag} {text}" if flag else text


def _check_can_create_in(path: Path, where: str, default: bool) -> None:
    """The nearest existing folder above ``path`` is a folder this process may write into;
    a ``default`` path (the user named none) gets the way out: ``--out``."""
    folder = next((p for p in path.parents if file_kind(p) is not None), Path.cwd())
    if file_kind(folder) != FOLDER:
        raise UserError(f"{where}: {folder} is {file_kind(folder)}, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        elsewhere = "; write elsewhere with --out" if default else ""
        raise UserError(f"{where}: {folder} cannot be written (permissions or a read-only file system){elsewhere}")


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait for the block: a file being written is finished (or its failure
    reported) first, then the signal does what it would have done.

    A ``KeyboardInterrupt`` raised inside ``torch.save``'s writer is swallowed by its C++ side,
    which then reports a damaged write (``unexpected pos``): without this, a SIGTERM that lands
    mid-checkpoint ends the command as a write error instead of a clean stop. Only the main
    thread receives signals; elsewhere, and for a handler installed outside Python (which could
    not be put back), the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        if handler is not None:
            previous[signum] = signal.signal(signum, lambda received, _frame: held.append(received))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for received in dict.fromkeys(held):
            signal.raise_signal(received)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A new file, open for writing in binary, that replaces ``path`` whole when the block
    ends, or not at all when it raises.

    A temporary file in the same folder, flushed to the disk, then renamed over ``path``: a
    reader (the dashboard, a resumed study, a user's script) never sees half a file, and a
    failed write (a full disk, Ctrl-C) leaves the old file as it was and no temporary behind.
    Signals wait for the block (:func:`signals_held`). Missing folders are made.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary, fd = _temporary_beside(path)
    try:
        with signals_held(), os.fdopen(fd, "wb") as file:
            yield file
            # On disk before the rename, or a power cut could leave a renamed empty file.
            file.flush()
            os.fsync(file.fileno())
            os.replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: whole, or not at all (:func:`atomic_file`).

    Raises:
        UserError: The write failed (a full disk, a read-only folder...): one line naming
            ``path`` and why.
    """
    path = Path(path)
    try:
        with atomic_file(path) as file:
            file.write(data)
    except OSError as error:
        raise UserError(f"{path}: cannot write ({error.strerror or error})") from None


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (UTF-8) atomically; see :func:`write_bytes`."""
    write_bytes(path, text.encode("utf-8"))


def _temporary_beside(path: Path) -> tuple[Path, int]:
    """A new hidden file in ``path``'s folder, named after it, open for writing; created with
    mode 0o666 less the umask, the mode the file would get if written directly."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        temporary = path.with_name(f".{path.name[:200]}.{secrets.token_hex(4)}.tmp")
        try:
            return temporary, os.open(temporary, flags, 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def _remove(path: Path | None) -> None:
    if path is not None:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
