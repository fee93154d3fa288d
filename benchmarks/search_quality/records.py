"""What one search leaves behind, read the same way for every strategy: the epochs it spent,
each completed trial (when, how good, its parameters) and each trial's outcome."""

from __future__ import annotations

from dataclasses import dataclass, field

OUTCOMES = ("complete", "pruned", "rejected", "cut", "failed", "repeat")  # repeat: answered from the record
CUT = "the benchmark's compute budget ran out during the trial"


@dataclass
class SearchRun:
    """One strategy searching with one seed.

    Attributes:
        completions: ``[epochs spent when it completed, final validation accuracy, params]``
            for every trial that ran its full epochs, in order.
        outcomes: ``[epochs spent when it started, when it ended, outcome]`` for every trial
            (``rejected`` and ``repeat`` ones start and end at once); a shorter budget's counts are read
            from them (a trial running across it is cut there).
    """

    strategy: str
    seed: int
    budget_epochs: int
    epochs_spent: int = 0
    completions: list[list] = field(default_factory=list)
    outcomes: list[list] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def exhausted(self) -> bool:
        return self.epochs_spent >= self.budget_epochs

    def spend_epoch(self) -> None:
        self.epochs_spent += 1

    def complete(self, value: float, params: dict) -> None:
        self.completions.append([self.epochs_spent, float(value), dict(params)])

    def ended(self, started: int, outcome: str) -> None:
        """Record a trial's outcome (one of :data:`OUTCOMES`), ending now."""
        assert outcome in OUTCOMES, outcome
        self.outcomes.append([started, self.epochs_spent, outcome])

    def best_at(self, epochs: int) -> float | None:
        """The best validation accuracy of the trials completed within ``epochs``; None before the first."""
        values = [value for spent, value, _ in self.completions if spent <= epochs]
        return max(values) if values else None

    def best_params_at(self, epochs: int) -> tuple[float, dict] | None:
        """The best completed trial within ``epochs``: its value and parameters (the first of equals)."""
        best = None
        for spent, value, params in self.completions:
            if spent <= epochs and (best is None or value > best[0]):
                best = (value, params)
        return best

    def counts_at(self, epochs: int) -> dict[str, int]:
        """Trials by outcome had the budget been ``epochs``: a trial running across it is cut."""
        counts = dict.fromkeys(OUTCOMES, 0)
        for started, ended, outcome in self.outcomes:
            if ended <= epochs:
                counts[outcome] += 1
            elif started < epochs:
                counts["cut"] += 1
        return counts


def run_line(run: SearchRun) -> str:
    """One line per finished search, for the log."""
    counts = ", ".join(f"{n} {k}" for k, n in run.counts_at(run.budget_epochs).items() if n)
    best = run.best_at(run.budget_epochs)
    text = f"{best:.4f}" if best is not None else "-"
    return (
        f"({run.strategy}) seed {run.seed}: {run.epochs_spent}/{run.budget_epochs} epochs, {counts}; "
        f"best val {text} ({run.wall_s:.0f} s)"
    )
