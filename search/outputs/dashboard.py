"""``resnet-search dashboard``: optuna-dashboard on a storage, with a note on every trial and
the learning curves of all trials, refreshed while it serves so that a running search stays live."""

from __future__ import annotations

import errno
import signal
import socket
import sys
import threading
from typing import Any

import optuna

from search.config import UserError
from search.config.secrets import mask_secrets
from search.engine.events import Log
from search.study.keys import LEARNING_CURVES_ID
from search.study.notes import write_trial_note
from search.study.storage import open_existing_storage
from search.study.trials import load_study

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
REFRESH_S = 10.0  # how often the dashboard looks for new reports to redraw the learning curves


def save_learning_curves(study: optuna.Study) -> None:
    """Store the learning curves of all trials as the dashboard's custom plot ``learning_curves``."""
    from optuna_dashboard import save_plotly_graph_object

    from search.outputs.figures import learning_curves_figure  # plotly is slow to import: only here

    figure = learning_curves_figure(study, compact=True)
    save_plotly_graph_object(study, figure, graph_object_id=LEARNING_CURVES_ID)


def annotate_missing(study: optuna.Study) -> int:
    """Annotate the finished trials that have no note yet; refresh the learning curves once.

    Returns:
        How many notes were written.
    """
    from optuna_dashboard import get_note

    written = 0
    for trial in study.get_trials(deepcopy=False):
        if trial.state.is_finished() and not get_note(optuna.Trial(study, trial._trial_id)):
            write_trial_note(study, trial)
            written += 1
    if study.get_trials(deepcopy=False):
        save_learning_curves(study)
    return written


def serve_dashboard(
    storage_url: str,
    *,
    study_name: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    log: Log = print,
    warn: Log = lambda line: print(line, file=sys.stderr),
) -> None:
    """Serve optuna-dashboard on a storage until Ctrl-C, after annotating unnoted trials.

    Notes are written before serving; while it serves, the only write is the learning-curves
    plot, redrawn when the trials' reports changed (see :class:`CurvesRefresher`), so a
    search may keep writing to the same storage (SQLite included).

    Args:
        storage_url: An existing Optuna storage.
        study_name: Annotate only this study and print its page's address; default all.
        host: Interface to bind; anything but the loopback gets a warning (no authentication).
        port: TCP port; 0 picks a free one (the printed address says which).
        log: Receives the address line.
        warn: Receives warnings.

    Raises:
        UserError: bad storage or study, or the port cannot be bound (in use, not allowed).
    """
    import optuna_dashboard

    storage = open_existing_storage(storage_url)
    studies = (
        [load_study(storage_url, study_name)]
        if study_name
        else [optuna.load_study(study_name=name, storage=storage) for name in optuna.study.get_all_study_names(storage)]
    )
    server = _bind(host, port, optuna_dashboard.wsgi(storage))  # a port in use fails before anything is written
    refresher = CurvesRefresher(studies, warn=warn)
    try:
        if host not in LOCAL_HOSTS:
            warn(
                f"resnet-search: warning: serving on {host}: anyone who can reach it can read and edit "
                "these studies (optuna-dashboard has no login)"
            )
        for study in studies:
            try:
                annotate_missing(study)
            except Exception as error:  # notes are a convenience: a busy database must not stop the dashboard
                warn(f"resnet-search: warning: could not annotate study {study.study_name}: {error}")
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{server.server_port}/dashboard/"
        if study_name:
            url += f"studies/{studies[0]._study_id}"
        log(f"optuna-dashboard {optuna_dashboard.__version__} on {mask_secrets(storage_url)}: {url}  (Ctrl-C stops it)")
        _stop_on_signals()
        refresher.start()
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        refresher.stop()
        server.server_close()


def _bind(host: str, port: int, app: Any) -> Any:
    """A threading WSGI server for ``app`` on ``host:port``, as optuna-dashboard's own CLI serves.

    Raises:
        UserError: the port is in use or cannot be bound.
    """
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:  # one line per request would bury ours
            pass

    try:
        return make_server(host, port, app, server_class=Server, handler_class=QuietHandler)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is in use; pick another with --port") from None
        raise UserError(f"cannot serve on {host}:{port}: {error.strerror or error}") from None


class CurvesRefresher:
    """Keeps each study's learning-curves plot current while the dashboard serves a running search.

    The engine writes only per-trial notes (a cost independent of the study's size); the plot
    of all trials is redrawn here, off the search's path, when the trials' reports changed.

    Args:
        studies: The studies served.
        every_s: Seconds between looks.
        warn: Receives a warning when a redraw fails (a busy database); serving goes on.

    Raises:
        ValueError: ``every_s`` is not positive.
    """

    def __init__(self, studies: list[optuna.Study], *, every_s: float = REFRESH_S, warn: Log = print) -> None:
        if every_s <= 0:
            raise ValueError(f"every_s must be > 0, got {every_s!r}")
        self.studies = studies
        self.every_s = every_s
        self.warn = warn
        self.seen: dict[str, int] = {study.study_name: _reports(study) for study in studies}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="curves-refresher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def refresh(self) -> int:
        """Redraw the plot of every study whose reports changed since the last look.

        Returns:
            How many plots were redrawn.
        """
        redrawn = 0
        for study in self.studies:
            reports = _reports(study)
            if reports != self.seen.get(study.study_name):
                save_learning_curves(study)
                self.seen[study.study_name] = reports
                redrawn += 1
        return redrawn

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.refresh()
            except Exception as error:  # the plot is a convenience: serving goes on
                self.warn(f"resnet-search: warning: could not refresh the learning curves: {error}")


def _reports(study: optuna.Study) -> int:
    """How many epoch reports and finished trials the study holds: a change means a new curve point."""
    trials = study.get_trials(deepcopy=False)
    return sum(len(t.intermediate_values) for t in trials) + sum(t.state.is_finished() for t in trials)


def _stop_on_signals() -> None:
    """Make Ctrl-C and SIGTERM stop the server cleanly (its port freed), even when the shell
    started us in the background with SIGINT ignored."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
