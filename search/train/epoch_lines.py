"""Epoch callbacks for :func:`search.train.train`: a progress line per epoch, and chaining."""

from __future__ import annotations

from collections.abc import Callable

from search.train.result import EpochMetrics


class ProgressPrinter:
    """A callback that logs one line per epoch: epoch/total, losses, accuracies, speed, ETA.

    It never stops the run (returns None); chain it with others via :func:`chain_callbacks`.

    Args:
        total_epochs: The run's epoch count, for ``epoch/total`` and the ETA.
        log: Where each line goes (``print`` by default).
        prefix: Put before every line (a trial number, say).
        held_out: Whether the validation split is held out; False (a final fit on train+val,
            which trains on it) leaves the validation figures out: they would measure nothing.
    """

    def __init__(
        self, total_epochs: int, log: Callable[[str], None] = print, prefix: str = "", held_out: bool = True
    ) -> None:
        self.total_epochs = total_epochs
        self.log = log
        self.prefix = prefix
        self.held_out = held_out

    def format(self, m: EpochMetrics) -> str:
        """The line for ``m``."""
        eta = m.elapsed_s / m.epoch * (self.total_epochs - m.epoch)
        width = len(str(self.total_epochs))
        val = f"  val_loss {m.val_loss:.4f}  val_acc {m.val_acc:6.2%}" if self.held_out else ""
        return (
            f"{self.prefix}epoch {m.epoch:>{width}}/{self.total_epochs}"
            f"  loss {m.train_loss:.4f}  acc {m.train_acc:6.2%}{val}"
            f"  lr {m.lr:.3g}  {m.images_per_s:,.0f} img/s  ETA {_duration(eta)}"
        )

    def __call__(self, m: EpochMetrics) -> None:
        """Log the line for ``m``; never stop the run."""
        self.log(self.format(m))


def _duration(seconds: float) -> str:
    """``seconds`` as ``1h05m`` (an hour or more) or ``4m07s``."""
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


def chain_callbacks(*callbacks: Callable[[EpochMetrics], bool | None] | None) -> Callable[[EpochMetrics], bool]:
    """One callback that calls each given one (None skipped) and stops if any asks to.

    Args:
        callbacks: Callbacks in calling order; all run every epoch.

    Returns:
        A callback for :func:`search.train.train`.
    """
    active = [cb for cb in callbacks if cb is not None]

    def call(m: EpochMetrics) -> bool:
        return any([bool(cb(m)) for cb in active])  # a list, so every callback runs

    return call
