"""Optuna storages by URL: where a study's files live, the default SQLite file, opening a
storage, and finding the one a command means.

Which study names may name a file and folder is decided here and nowhere else
(:func:`safe_study_name`); what of a URL is a secret, in :mod:`search.config.secrets`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import optuna
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from search.config import UserError
from search.config.files import study_name_problem
from search.config.secrets import mask_secrets

STUDIES_DIR = Path("studies")
URL_SCHEMES = ("sqlite", "postgresql", "mysql", "journal")


def safe_study_name(name: str) -> str:
    """``name``, if it may name a file and a folder under ``studies/``
    (see :func:`search.config.files.study_name_problem`).

    Raises:
        UserError: the name is empty, has a path separator or ``..``, or other characters.
    """
    problem = study_name_problem(name)
    if problem:
        raise UserError(f"study name {problem}")
    return name


def default_storage(study_name: str) -> str:
    """``sqlite:///studies/<study name>.db``, relative to the working directory.

    Raises:
        UserError: the name would put the file outside ``studies/`` (see :func:`safe_study_name`).
    """
    return f"sqlite:///{STUDIES_DIR / safe_study_name(study_name)}.db"


def study_dir(study_name: str) -> Path:
    """Where a study keeps its logs, Ray's results and checkpoints.

    Raises:
        UserError: the name would put the folder outside ``studies/`` (see :func:`safe_study_name`).
    """
    return STUDIES_DIR / safe_study_name(study_name)


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """Open an Optuna storage: an RDB URL, or ``journal:///path/to/file.log`` for a journal file.

    Raises:
        UserError: unknown scheme, a missing driver, or a database that cannot be reached.
    """
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    if scheme not in URL_SCHEMES:
        raise UserError(
            f"storage {mask_secrets(url)}: unknown scheme {scheme!r}; use one of "
            f"{', '.join(s + '://' for s in URL_SCHEMES)}"
        )
    if scheme == "journal":
        path = Path(url.split("://", 1)[1])
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if scheme == "sqlite":
        _make_sqlite_dir(url)
        _check_sqlite_file(url)
    try:
        return optuna.storages.RDBStorage(
            _with_driver(url), heartbeat_interval=None, engine_kwargs=_engine_kwargs(scheme)
        )
    except ImportError as error:
        raise UserError(
            f"storage {mask_secrets(url)}: the database driver is missing ({error.name}); "
            "for PostgreSQL: pip install 'resnet-search[postgres]'"
        ) from None
    except (ArgumentError, ValueError) as error:
        raise UserError(f"storage {mask_secrets(url)}: not a valid URL ({first_line(error)})") from None
    except Exception as error:  # sqlalchemy.exc.OperationalError and friends, by driver
        raise UserError(f"storage {mask_secrets(url)}: cannot connect ({first_line(error)})") from None


def storage_gone_check(url: str) -> Callable[[], None]:
    """For a storage in a file (SQLite, journal): a check that raises when the file is gone.

    A SQLite file deleted under a running driver turns every write into "attempt to write a
    readonly database", which looks like a busy database and would be retried for minutes.

    Returns:
        A function raising ``UserError`` (naming the file) once the file no longer exists; a
        no-op for database servers.
    """
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    path = _file_of(url) if scheme in ("sqlite", "journal") else None
    if path is None:
        return lambda: None
    where = mask_secrets(url)

    def check() -> None:
        if not path.exists():
            raise UserError(
                f"storage {where}: {path} was deleted while the run was going, so this run's trials "
                "cannot be recorded; restore the file from a backup, or run again to start the study afresh"
            )

    return check


def _file_of(url: str) -> Path | None:
    """The file of a SQLite or journal URL (``sqlite:///rel.db``, ``sqlite:////abs.db``), if any."""
    path = url.split("://", 1)[1] if "://" in url else ""
    path = path[1:] if url.startswith("sqlite") else path  # sqlite:///rel.db, sqlite:////abs.db
    path = path.split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def _with_driver(url: str) -> str:
    """``postgresql://`` means psycopg 3 (the ``postgres`` extra), not SQLAlchemy's default psycopg2."""
    return "postgresql+psycopg://" + url[len("postgresql://") :] if url.startswith("postgresql://") else url


def _make_sqlite_dir(url: str) -> None:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def _check_sqlite_file(url: str) -> None:
    """An existing SQLite file must be a sound database: a damaged one is one line naming it
    and what to do, not a storage error at the first query that touches a bad page.

    Raises:
        UserError: the file is not a database, or SQLite's quick check finds damage.
    """
    try:
        database = make_url(url).database
    except ArgumentError:
        return  # open_storage says what is wrong with the URL
    if not database or database == ":memory:" or not Path(database).is_file() or Path(database).stat().st_size == 0:
        return
    try:
        # Read-write, not read-only: a driver killed mid-write leaves a hot journal that SQLite
        # rolls back on the next open; a read-only connection cannot, and would call it damaged.
        uri = Path(database).resolve().as_uri() + "?mode=rw"
        # A driver writing the study holds its lock for milliseconds: wait for it, as Optuna would.
        with closing(sqlite3.connect(uri, uri=True, timeout=30)) as connection:
            problem = str(connection.execute("PRAGMA quick_check").fetchone()[0])
    except sqlite3.OperationalError as error:
        if "locked" in str(error) or "busy" in str(error):
            return  # busy is not damaged; the storage's own retries wait it out
        problem = str(error)
    except sqlite3.Error as error:
        problem = str(error)
    if problem != "ok":
        raise UserError(
            f"storage {mask_secrets(url)}: {database} is damaged ({problem.splitlines()[0]}); "
            "restore it from a backup, or move it aside to start the study afresh"
        )


def _engine_kwargs(scheme: str) -> dict:
    # A stale pooled connection (a restarted PostgreSQL) is replaced instead of failing a write.
    return {} if scheme == "sqlite" else {"pool_pre_ping": True}


def first_line(error: BaseException) -> str:
    return mask_secrets(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)


def open_existing_storage(url: str) -> optuna.storages.BaseStorage:
    """Open a storage that must already exist: reading a result never creates a database.

    Raises:
        UserError: unknown scheme, a missing SQLite/journal file, or an unreachable database.
    """
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    path = _file_of(url) if scheme in ("sqlite", "journal") else None
    if path is not None and not path.is_file():
        raise UserError(f"storage {mask_secrets(url)}: no such database file {mask_secrets(str(path))}")
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
    if study_name and (STUDIES_DIR / f"{safe_study_name(study_name)}.db").is_file():
        return default_storage(study_name)
    found = sorted(STUDIES_DIR.glob("*.db"))
    if len(found) == 1:
        return f"sqlite:///{found[0]}"
    if not found:
        raise UserError(f"no studies/*.db under {Path.cwd()}; pass --storage URL")
    names = ", ".join(path.name for path in found)
    raise UserError(f"several storages under studies/ ({names}); pass --storage URL or --study NAME")
