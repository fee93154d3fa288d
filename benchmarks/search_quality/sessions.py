"""Trials that train one report at a time on command: the lockstep behind concurrent trials and
behind the peers' promotions.

An :class:`EpochSession` runs :func:`search.train.train` in a thread of its own and pauses
it at every report (in the train callback): after every epoch, and, with successive-halving
rungs (``study.pruner.rungs``), at every rung within an epoch too, until the driver says go
on or stop. Each report carries what the training has cost so far in full-epoch equivalents
(``EpochMetrics.full_epochs``, :attr:`EpochSession.cost`): a step costs the difference. Only
one session trains at any moment, so a run stays deterministic, and a paused session costs no
CPU: four of them in turn are four concurrent trials, report by report, without four cores; a
peer that promotes a config to a larger budget continues it from where it paused, paying only
the extra compute (as our successive halving does).
"""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict
from collections.abc import Hashable

from search.config import Rung, TrialConfig
from search.data import ImageDataset
from search.train import EpochMetrics, TrainOptions, TrainResult, train

_GO, _STOP, _EPOCH, _DONE = "go", "stop", "epoch", "done"


class EpochSession:
    """One trial's training, paused at every report (every epoch, and every rung within one).

    Args:
        config: The trial's model and recipe.
        data: The dataset it trains on.
        rungs: The rungs it reports at (and trains up to at their side).
    """

    def __init__(self, config: TrialConfig, data: ImageDataset, rungs: tuple[Rung, ...] = ()) -> None:
        self.config = config
        self.data = data
        self.rungs = rungs
        self.history: list[EpochMetrics] = []
        self.result: TrainResult | None = None
        self.error: BaseException | None = None
        self._commands: queue.Queue[str] = queue.Queue(maxsize=1)
        self._events: queue.Queue[str] = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = False

    @property
    def epoch(self) -> int:
        """Whole epochs trained so far (a rung within an epoch reports those before it)."""
        return self.history[-1].epoch if self.history else 0

    @property
    def cost(self) -> float:
        """What the training has cost so far, in full-epoch equivalents."""
        return self.history[-1].full_epochs if self.history else 0.0

    @property
    def done(self) -> bool:
        return self.result is not None or self.error is not None

    def advance(self) -> EpochMetrics | None:
        """Train up to the next report (the next rung or the end of the epoch).

        Returns:
            Its metrics; None when the run ended instead (its last epoch was already
            trained, the loss went non-finite, or training raised: see ``error``).
        """
        if self.done:
            return None
        if not self._started:
            self._started = True
            self._thread.start()
        self._commands.put(_GO)
        return self.history[-1] if self._events.get() == _EPOCH else None

    def close(self, *, stop: bool) -> None:
        """End the run: let it finish normally after its last report (``stop=False``), or stop it now."""
        if self._started and not self.done:
            self._commands.put(_STOP if stop else _GO)
            while self._events.get() != _DONE:  # a run told to go on may train more: stop that
                self._commands.put(_STOP)
        if self._started:
            self._thread.join()

    def _run(self) -> None:
        self._commands.get()  # the first go
        try:
            self.result = train(self.config, self.data, TrainOptions(callback=self._pause, rungs=self.rungs))
        except Exception as error:  # reported to the driver, which records the trial FAIL
            self.error = error
        self._events.put(_DONE)

    def _pause(self, metrics: EpochMetrics) -> bool:
        self.history.append(metrics)
        self._events.put(_EPOCH)
        return self._commands.get() == _STOP


class PausedSessions:
    """Sessions kept paused for a later promotion, by config; the oldest is stopped past ``limit``."""

    def __init__(self, limit: int = 256) -> None:
        self.limit = limit
        self._sessions: OrderedDict[Hashable, EpochSession] = OrderedDict()

    def take(self, key: Hashable) -> EpochSession | None:
        return self._sessions.pop(key, None)

    def keep(self, key: Hashable, session: EpochSession) -> None:
        old = self._sessions.pop(key, None)
        if old is not None and old is not session:
            old.close(stop=True)
        self._sessions[key] = session
        while len(self._sessions) > self.limit:
            self._sessions.popitem(last=False)[1].close(stop=True)

    def close(self) -> None:
        while self._sessions:
            self._sessions.popitem()[1].close(stop=True)
