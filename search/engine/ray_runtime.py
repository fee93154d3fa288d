"""Ray for the length of a run: join a cluster or start a local one, pass our environment to
its workers, and keep its log records in the study's ``ray.log`` instead of the terminal."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from search.study.storage import mask_password


@contextmanager
def ray_session(address: str | None) -> Iterator[dict]:
    """Join the cluster at ``address``, or start a local Ray that lives as long as the run.

    Yields:
        The cluster's resources (``ray.cluster_resources()``).
    """
    import ray

    started = not ray.is_initialized()
    if started:
        on_sigterm = signal.getsignal(signal.SIGTERM)
        ray.init(
            address=address or "local",
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
            configure_logging=False,
            runtime_env=worker_env(),
        )
        # ray.init makes SIGTERM exit the driver at once (no summary, trials left RUNNING):
        # the caller's handler (the CLI's, which stops like Ctrl-C) is put back.
        if on_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with through_root("ray"):
            yield ray.cluster_resources()
    finally:
        if started:
            ray.shutdown()


def worker_env() -> dict:
    """Our environment variables, for workers on other nodes (local workers inherit them)."""
    names = ("RESNET_SEARCH_CACHE", "RESNET_SEARCH_DATA", "XDG_CACHE_HOME")
    return {"env_vars": {name: os.environ[name] for name in names if name in os.environ}}


@contextmanager
def logs_to(path: Path) -> Iterator[None]:
    """Send library log records to ``path`` while a run lasts: the terminal shows our progress
    lines only (see also :func:`through_root`). The file handler sits on the root logger and
    stands in as ``logging.lastResort``, which gets the records of loggers that Ray leaves
    without handlers or propagation while it starts."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    handler.addFilter(_mask_secrets)  # a library may log the storage URL (SQLAlchemy, Optuna)
    root, last_resort = logging.getLogger(), logging.lastResort
    root.addHandler(handler)
    logging.lastResort = handler
    try:
        yield
    finally:
        logging.lastResort = last_resort
        root.removeHandler(handler)
        handler.close()


def _mask_secrets(record: logging.LogRecord) -> bool:
    """A log filter: the record's message with every storage secret masked (see :func:`mask_password`)."""
    record.msg, record.args = mask_password(record.getMessage()), None
    if record.exc_info:
        record.exc_text, record.exc_info = mask_password(logging.Formatter().formatException(record.exc_info)), None
    return True


@contextmanager
def through_root(*prefixes: str) -> Iterator[None]:
    """Set aside the handlers of the loggers under ``prefixes`` so that their records reach the
    root logger's (our file). Ray gives its loggers stream handlers when it starts, and Tune
    would print, say, its advice to resume with ``Tuner.restore``, which is not how ours resumes;
    MLflow's own handler would print its database set-up."""
    names = [n for n in list(logging.root.manager.loggerDict) if n.startswith(prefixes)]
    loggers = [logging.getLogger(n) for n in names]
    saved = {logger: (logger.handlers, logger.propagate) for logger in loggers}
    for logger in loggers:
        logger.handlers, logger.propagate = [], True
    try:
        yield
    finally:
        for logger, (handlers, propagate) in saved.items():
            logger.handlers, logger.propagate = handlers, propagate
