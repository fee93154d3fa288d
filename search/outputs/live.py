"""The live view of a run on a terminal: a table (rich) of the trials training now, with their
size, epoch, last validation accuracy and images/s, under the totals, the best so far, the
elapsed time and the time left. It is redrawn on every epoch report of every trial (and each
second, for the clock); the lines of finished trials and the pre-run block scroll above it.

It draws the engine's progress model (:class:`~search.engine.progress.RunProgress`). Not a
terminal (CI, a pipe, a log file): the run's own progress log,
:class:`~search.engine.progress.PlainProgress`, which is also what a run writes with no view given.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from search.config.units import format_duration
from search.engine.events import EpochReport, RunStart, TrialEnd, TrialStart
from search.engine.progress import RunProgress, trial_line
from search.study.keys import COMPLETE, FAILED, INTERRUPTED, PRUNED, REJECTED

STATUS_STYLES = {COMPLETE: "green", PRUNED: "yellow", FAILED: "red", INTERRUPTED: "magenta"}


class LiveTable(RunProgress):
    """A run's live table; use it as a context manager around ``run_search`` so that the
    terminal is left clean whatever ends the run (its end, Ctrl-C, SIGTERM, an error).

    Args:
        console: Where to draw (default: stderr; stdout keeps the run's summary).
        clock: The time source.
    """

    def __init__(self, console: Console | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock=clock)
        self.console = console or Console(stderr=True)
        self.lock = threading.Lock()  # events change the state while rich's thread draws it
        self.live = Live(self, console=self.console, refresh_per_second=1, redirect_stderr=True)
        self.previous_sigterm: Any = None

    def __enter__(self) -> LiveTable:
        self.live.start()
        if threading.current_thread() is threading.main_thread():
            self.previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.live.stop()  # shows the cursor again and leaves the last table on the screen
        if self.previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self.previous_sigterm)
            self.previous_sigterm = None

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        """Put the terminal right, then do what SIGTERM did before (by default: end the process)."""
        self.live.stop()
        previous = self.previous_sigterm
        if callable(previous):
            previous(signum, frame)
            return
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    # ---- events: the state changes under the lock, the table is redrawn after it

    def _then_refresh(self, update: Callable[[], None]) -> None:
        with self.lock:
            update()
        self.live.refresh()

    def run_started(self, event: RunStart) -> None:
        for line in event.lines:  # the pre-run block first: the table is drawn under it, never before
            self.console.print(line, highlight=False)
        self._then_refresh(lambda: RunProgress.run_started(self, event))

    def trial_started(self, event: TrialStart) -> None:
        self._then_refresh(lambda: RunProgress.trial_started(self, event))

    def epoch_reported(self, event: EpochReport) -> None:
        self._then_refresh(lambda: RunProgress.epoch_reported(self, event))

    def trial_ended(self, event: TrialEnd) -> None:
        self._then_refresh(lambda: RunProgress.trial_ended(self, event))
        if event.status != REJECTED:
            line = trial_line(event, self.start.metric if self.start else "value")
            self.console.print(Text(line, style=STATUS_STYLES.get(event.status, "")))

    # ---- drawing

    def __rich__(self) -> Group:
        with self.lock:
            return self.render()

    def render(self) -> Group:
        """The table of running trials under a title line and over the totals; nothing before
        the run has said what it will do (its pre-run block)."""
        if self.start is None:
            return Group()
        name, total = self.start.study_name, self.start.n_trials
        left = self.time_left()
        title = Text.assemble(
            (f"{name} ", "bold"),
            f"{self.finished}/{total} finished · elapsed {format_duration(self.elapsed())} · left ",
            ("-" if left is None else f"~{format_duration(left)}", "bold"),
        )
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, header_style="bold", show_edge=False)
        for column in ("trial", "params", "epoch", "val acc", "img/s", "running for"):
            table.add_column(column, justify="right")
        now = self.clock()
        for t in sorted(self.running.values(), key=lambda t: t.number):
            table.add_row(
                str(t.number),
                f"{t.n_params:,}",
                f"{t.epoch}/{t.epochs}",
                "-" if t.val_acc is None else f"{t.val_acc:.4f}",
                "-" if t.images_per_s is None else f"{t.images_per_s:,.0f}",
                format_duration(now - t.started),
            )
        totals = Text(" · ".join([*self.count_parts(), self.best_text()]))
        return Group(title, table, totals)
