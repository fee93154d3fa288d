"""Optuna storages by URL: where a study's files live, the default SQLite file, masking
passwords, opening a storage, and finding the one a command means."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from search.config import UserError

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
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if scheme == "sqlite":
        _make_sqlite_dir(url)
    try:
        return optuna.storages.RDBStorage(
            _with_driver(url), heartbeat_interval=None, engine_kwargs=_engine_kwargs(scheme)
        )
    except ImportError as error:
        raise UserError(
            f"storage {mask_password(url)}: the database driver is missing ({error.name}); "
            "for PostgreSQL: pip install 'resnet-search[postgres]'"
        ) from None
    except (ArgumentError, ValueError) as error:
        raise UserError(f"storage {mask_password(url)}: not a valid URL ({first_line(error)})") from None
    except Exception as error:  # sqlalchemy.exc.OperationalError and friends, by driver
        raise UserError(f"storage {mask_password(url)}: cannot connect ({first_line(error)})") from None


def _with_driver(url: str) -> str:
    """``postgresql://`` means psycopg 3 (the ``postgres`` extra), not SQLAlchemy's default psycopg2."""
    return "postgresql+psycopg://" + url[len("postgresql://") :] if url.startswith("postgresql://") else url


def _make_sqlite_dir(url: str) -> None:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def _engine_kwargs(scheme: str) -> dict:
    # A stale pooled connection (a restarted PostgreSQL) is replaced instead of failing a write.
    return {} if scheme == "sqlite" else {"pool_pre_ping": True}


def first_line(error: BaseException) -> str:
    return mask_password(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)


def open_existing_storage(url: str) -> optuna.storages.BaseStorage:
    """Open a storage that must already exist: reading a result never creates a database.

    Raises:
        UserError: unknown scheme, a missing SQLite/journal file, or an unreachable database.
    """
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    if scheme in ("sqlite", "journal") and "://" in url:
        path = url.split("://", 1)[1]
        path = path[1:] if scheme == "sqlite" else path  # sqlite:///rel.db, sqlite:////abs.db
        if path and path != ":memory:" and not Path(path).is_file():
            raise UserError(f"storage {mask_password(url)}: no such database file {path}")
    return open_storage(url)


def resolve_storage(storage: str | None, study_name: str | None = None) -> str:
    """The storage URL a command works on.

    Args:
        storage: The ``--storage`` flag; wins when given.
        study_name: The ``--study`` flag: picks ``studies/<name>.db`` when that file exists.

    Returns:
        ``storage``, else ``sqlite:///studies/<study>.db``, else the only ``studies/*.db``.

    Raises:
        UserError: no flag and no single database file under ``studies/`` to fall back on.
    """
    if storage:
        return storage
    if study_name and (STUDIES_DIR / f"{study_name}.db").is_file():
        return default_storage(study_name)
    found = sorted(STUDIES_DIR.glob("*.db"))
    if len(found) == 1:
        return f"sqlite:///{found[0]}"
    if not found:
        raise UserError(f"no studies/*.db under {Path.cwd()}; pass --storage URL")
    names = ", ".join(path.name for path in found)
    raise UserError(f"several storages under studies/ ({names}); pass --storage URL or --study NAME")
