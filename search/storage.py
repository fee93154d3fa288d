"""Optuna storages by URL: the default SQLite file, masking passwords, opening and checking,
and riding out a database that goes away for a while (:class:`RetryingStorage`)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError

from search.config import UserError

STUDIES_DIR = Path("studies")
URL_SCHEMES = ("sqlite", "postgresql", "mysql", "journal")
# How long the driver keeps retrying a storage that cannot be reached (a restarted
# PostgreSQL, a locked SQLite file) before it gives up, and its first and longest waits.
RETRY_FOR_S = 300.0
FIRST_WAIT_S = 0.5
LONGEST_WAIT_S = 30.0


def default_storage(study_name: str) -> str:
    """``sqlite:///studies/<study name>.db``, relative to the working directory."""
    return f"sqlite:///{STUDIES_DIR / study_name}.db"


def study_dir(study_name: str) -> Path:
    """Where a study keeps its logs, Ray's results and checkpoints."""
    return STUDIES_DIR / study_name


def mask_password(url: str) -> str:
    """The URL with any password replaced by ``***``, safe to print, log and write."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """Open an Optuna storage: an RDB URL, or ``journal:///path/to/file.log`` for a journal file.

    Raises:
        UserError: unknown scheme, a missing driver, or a database that cannot be reached.
    """
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    if scheme not in URL_SCHEMES:
        raise UserError(
            f"storage {mask_password(url)}: unknown scheme {scheme!r}; use one of "
            f"{', '.join(s + '://' for s in URL_SCHEMES)}"
        )
    if scheme == "journal":
        path = Path(url.split("://", 1)[1])
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    if scheme == "sqlite":
        _make_sqlite_dir(url)
    try:
        return optuna.storages.RDBStorage(_with_driver(url), heartbeat_interval=None,
                                          engine_kwargs=_engine_kwargs(scheme))
    except ImportError as error:
        raise UserError(f"storage {mask_password(url)}: the database driver is missing ({error.name}); "
                        "for PostgreSQL: pip install 'resnet-search[postgres]'") from None
    except (ArgumentError, ValueError) as error:
        raise UserError(f"storage {mask_password(url)}: not a valid URL ({_first_line(error)})") from None
    except Exception as error:  # sqlalchemy.exc.OperationalError and friends, by driver
        raise UserError(f"storage {mask_password(url)}: cannot connect ({_first_line(error)})") from None


def _with_driver(url: str) -> str:
    """``postgresql://`` means psycopg 3 (the ``postgres`` extra), not SQLAlchemy's default psycopg2."""
    return "postgresql+psycopg://" + url[len("postgresql://"):] if url.startswith("postgresql://") else url


def _make_sqlite_dir(url: str) -> None:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def _engine_kwargs(scheme: str) -> dict:
    # A stale pooled connection (a restarted PostgreSQL) is replaced instead of failing a write.
    return {} if scheme == "sqlite" else {"pool_pre_ping": True}


def _first_line(error: Exception) -> str:
    return mask_password(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)


def is_transient(error: BaseException) -> bool:
    """Whether a storage error means "the database is unreachable or busy", not "bad data".

    Optuna wraps what SQLAlchemy raises at commit in ``StorageInternalError``; the cause
    tells a lost connection (worth retrying) from a rejected write (not).
    """
    if isinstance(error, optuna.exceptions.StorageInternalError) and error.__cause__ is not None:
        error = error.__cause__
    if isinstance(error, (OperationalError, InterfaceError)):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


def _retried(name: str) -> Callable[..., Any]:
    def operation(self: "RetryingStorage", *args: Any, **kwargs: Any) -> Any:
        return self.call(name, *args, **kwargs)

    operation.__name__ = operation.__qualname__ = name
    operation.__doc__ = f"``{name}`` of the wrapped storage, retried while the database is unreachable."
    return operation


def _retry_every_operation(cls: type) -> type:
    """Give ``cls`` a retrying version of every public operation of Optuna's ``BaseStorage``."""
    base = optuna.storages.BaseStorage
    for name in dir(base):
        if not name.startswith("_") and callable(getattr(base, name)):
            setattr(cls, name, _retried(name))
    cls.__abstractmethods__ = frozenset()
    return cls


@_retry_every_operation
class RetryingStorage(optuna.storages.BaseStorage):
    """An Optuna storage whose operations wait out an unreachable database.

    Every operation that fails with a lost connection or a busy database is retried with
    exponential backoff (``FIRST_WAIT_S`` doubling up to ``LONGEST_WAIT_S``) for up to
    ``RETRY_FOR_S`` seconds; any other error, or one that outlasts the patience, is raised.
    Reads and most writes are idempotent; a write whose commit succeeded but whose answer was
    lost can, rarely, be applied twice (a trial created twice is left RUNNING and the next
    run marks it FAIL).

    Args:
        storage: The storage to wrap (an ``RDBStorage``, usually).
        retry_for_s: Patience in seconds; 0 retries nothing.
        on_retry: Called with a one-line message before each wait.
        sleep: How to wait (tests pass a fake clock's).

    Raises:
        ValueError: ``retry_for_s`` is negative.
    """

    def __init__(
        self,
        storage: optuna.storages.BaseStorage,
        *,
        retry_for_s: float = RETRY_FOR_S,
        on_retry: Callable[[str], None] = lambda message: None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if retry_for_s < 0:
            raise ValueError(f"retry_for_s must be >= 0, got {retry_for_s!r}")
        self.storage = optuna.storages.get_storage(storage)  # an RDBStorage gets Optuna's trial cache
        self.retry_for_s = retry_for_s
        self.on_retry = on_retry
        self.sleep = sleep
        self.retries = 0

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """``name`` of the wrapped storage, retried while the error is transient."""
        waited, wait = 0.0, FIRST_WAIT_S
        while True:
            try:
                return getattr(self.storage, name)(*args, **kwargs)
            except Exception as error:
                if not is_transient(error) or waited + wait > self.retry_for_s:
                    raise
                self.retries += 1
                reason = _first_line(error.__cause__ or error)
                self.on_retry(f"storage unreachable ({reason}); retrying in {wait:g} s")
                self.sleep(wait)
                waited += wait
                wait = min(wait * 2, LONGEST_WAIT_S)
