"""Ray for the length of a run: join a cluster or start a local one, pass our environment to
its workers, and keep its log records in the study's ``ray.log`` instead of the terminal.

A local Ray's processes run in a session of their own, so that a signal sent to the driver's
whole process group (``timeout``, ``kill -TERM -PGID``, job runners) reaches the driver alone:
it then stops the run as Ctrl-C does, with Ray still there to end the trials, instead of
waiting a minute on a Ray killed under it. Where the signal reaches every process all the same
(Slurm signals every process of a job), :func:`stop_if_ray_is_lost` records the running trials
and exits at once instead of that minute.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from search.config.files import MAX_PIXELS_VARIABLE
from search.config.secrets import mask_secrets
from search.engine.events import Log

EXIT_TERMINATED = 128 + signal.SIGTERM  # 143, the CLI's status after SIGTERM (search.cli.EXIT_TERMINATED)
RAY_CHECK_S = 0.5  # how often, once SIGTERM came, the driver checks that Ray is still there
_terminated = threading.Event()  # SIGTERM came while the run's Ray was up


def starts_local_ray(address: str | None) -> bool:
    """Whether :func:`ray_session` will start a local Ray (no address, no Ray up yet), whose
    resources this machine's own count bounds before it starts."""
    import ray

    return address is None and not ray.is_initialized()


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
        with _own_session():
            ray.init(
                address=address or "local",
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
                configure_logging=False,
                # A local Ray's workers inherit our environment from its raylet; an explicit
                # runtime_env would also keep Ray from using the workers it starts in advance.
                runtime_env=worker_env() if address else None,
            )
        # ray.init makes SIGTERM exit the driver at once (no summary, trials left RUNNING):
        # the caller's handler (the CLI's, which stops like Ctrl-C) is put back.
        if on_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _noting_sigterm(on_sigterm))
    try:
        with through_root("ray"):
            yield ray.cluster_resources()
    finally:
        if started:
            ray.shutdown()


def _noting_sigterm(handler: Callable | int) -> Callable | int:
    """``handler``, noting first that SIGTERM came (for :func:`stop_if_ray_is_lost`)."""
    if not callable(handler):
        return handler
    _terminated.clear()

    def noting(signum: int, frame: object) -> None:
        _terminated.set()
        handler(signum, frame)

    return noting


@contextmanager
def stop_if_ray_is_lost(rescue: Callable[[], int], log: Log) -> Iterator[None]:
    """While the block runs Tune: once SIGTERM came, check that Ray's GCS still answers. Where
    the signal killed Ray too (sent to every process, not only to the driver's group), Tune
    would wait a minute on it and Ray would then end the driver with exit status 1 and its
    own line. Instead ``rescue`` records the running trials (it returns how many), one line
    says so, and the driver exits with status 143 at once.

    Args:
        rescue: Records the trials still running as interrupted; returns their number.
        log: Where the line goes.
    """
    import ray

    done = threading.Event()
    host, _, port = ray.get_runtime_context().gcs_address.rpartition(":")

    def watch() -> None:
        while not done.wait(RAY_CHECK_S):
            if _terminated.is_set() and not _answers(host, int(port)):
                stopped = rescue()
                log(
                    f"resnet-search: Ray's processes were stopped with the driver; {stopped} running trial(s) "
                    "recorded as interrupted; run the same command to continue"
                )
                os._exit(EXIT_TERMINATED)  # the main thread is stuck in a call to the Ray that is gone

    watcher = threading.Thread(target=watch, name="resnet-search-ray-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def _own_session() -> Iterator[None]:
    """While Ray starts its local processes (GCS, raylet, log monitor; the raylet's workers
    make process groups of their own), start them in a new session, out of the driver's
    process group. Only where Ray ties them to the driver's life by the kernel (Linux's
    parent-death signal): then they still end when the driver is killed, and Ray needs no
    reaper, which would look for them in the driver's group. Ray's own Windows code puts its
    processes in a new process group for the same reason. Ray has no option for it: its
    ``Popen`` class is swapped for one that asks for a new session, for the start only."""
    from ray._private import services, utils

    if not sys.platform.startswith("linux") or not utils.detect_fate_sharing_support():
        yield
        return
    popen = services.ConsolePopen

    class NewSessionPopen(popen):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **{**kwargs, "start_new_session": True})

    services.ConsolePopen = NewSessionPopen  # type: ignore[misc]
    try:
        yield
    finally:
        services.ConsolePopen = popen  # type: ignore[misc]


def worker_env() -> dict:
    """Our environment variables, for workers on other nodes (local workers inherit them)."""
    names = ("RESNET_SEARCH_CACHE", "RESNET_SEARCH_DATA", MAX_PIXELS_VARIABLE, "XDG_CACHE_HOME")
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
    """A log filter: the record's message with every URI's secrets masked (see :func:`mask_secrets`)."""
    record.msg, record.args = mask_secrets(record.getMessage()), None
    if record.exc_info:
        record.exc_text, record.exc_info = mask_secrets(logging.Formatter().formatException(record.exc_info)), None
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
