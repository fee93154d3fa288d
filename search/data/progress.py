"""Progress of a long cache build on stderr: a rich bar on a terminal, else a line per tenth
(for logs; only for builds of :data:`LOG_MIN` images or more, so small ones stay quiet)."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any

LOG_MIN = 5000  # below this many images, a log gets no progress lines (a build takes seconds)


class Progress:
    """A context manager counting ``total`` items done under ``what`` (``decoding``)."""

    def __init__(self, total: int, what: str) -> None:
        self.total, self.what = total, what
        self.done = 0
        self._bar: Any = None
        self._task: Any = None
        self._next_line = total // 10
        self._started = time.perf_counter()

    def __enter__(self) -> Progress:
        if sys.stderr.isatty() and self.total:
            from rich.progress import Progress as Bar

            self._bar = Bar(transient=True, redirect_stdout=False, redirect_stderr=False)
            self._bar.start()
            self._task = self._bar.add_task(self.what, total=self.total)
        return self

    def advance(self, count: int) -> None:
        """``count`` more items done."""
        self.done += count
        if self._bar is not None:
            self._bar.update(self._task, advance=count)
        elif self.total >= LOG_MIN and self.done >= self._next_line:
            rate = self.done / max(time.perf_counter() - self._started, 1e-9)
            print(f"resnet-search: {self.what} {self.done:,}/{self.total:,} ({rate:,.0f}/s)", file=sys.stderr)
            self._next_line = self.done + max(1, self.total // 10)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.stop()
