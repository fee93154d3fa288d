"""Optuna storages by URL: the default SQLite file, masking passwords, opening and checking."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from search.errors import UserError

STUDIES_DIR = Path("studies")
URL_SCHEMES = ("sqlite", "postgresql", "mysql", "journal")


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
        return optuna.storages.RDBStorage(url, heartbeat_interval=None, engine_kwargs=_engine_kwargs(scheme))
    except ImportError as error:
        raise UserError(f"storage {mask_password(url)}: the database driver is missing ({error.name}); "
                        "for PostgreSQL: pip install 'resnet-search[postgres]'") from None
    except (ArgumentError, ValueError) as error:
        raise UserError(f"storage {mask_password(url)}: not a valid URL ({_first_line(error)})") from None
    except Exception as error:  # sqlalchemy.exc.OperationalError and friends, by driver
        raise UserError(f"storage {mask_password(url)}: cannot connect ({_first_line(error)})") from None


def _make_sqlite_dir(url: str) -> None:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def _engine_kwargs(scheme: str) -> dict:
    # A stale pooled connection (a restarted PostgreSQL) is replaced instead of failing a write.
    return {} if scheme == "sqlite" else {"pool_pre_ping": True}


def _first_line(error: Exception) -> str:
    return mask_password(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)
