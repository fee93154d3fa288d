"""What one search leaves behind, read the same way for every strategy: the compute it spent in
full-epoch equivalents, each completed trial (when, how good, its parameters) and each trial's
outcome.

Compute is counted in what it costs (:mod:`search.budget.compute`): images seen x FLOPs per
image at the side they were trained at, over one epoch of the training set at the trials' full
side. An epoch at full size costs 1.0; a quarter of an epoch at half the side about 1/16.
"""

from __future__ import annotations

from dataclasses import dataclass, field

OUTCOMES = ("complete", "pruned", "rejected", "cut", "failed", "repeat")  # repeat: answered from the record
CUT = "the benchmark's compute budget ran out during the trial"
UNIT = "full-epoch equivalents"
# Costs are sums of ratios of FLOP counts: compared with this tolerance, and stored rounded.
EPS = 1e-9
DIGITS = 6


@dataclass
class SearchRun:
    """One strategy searching with one seed.

    Attributes:
        budget: The compute it may spend, in full-epoch equivalents.
        spent: The compute it spent. The step that spends past the budget is the last; a trial
            that ends past the budget is cut (it counts at no budget).
        completions: ``[spent when it completed, final validation accuracy, params]`` for every
            trial that ran its full epochs, in order; the params are kept where the trial set a
            new best (the only ones a winner can be), ``{}`` elsewhere, to keep records small.
        outcomes: ``[spent when it started, when it ended, outcome]`` for every trial
            (``rejected`` and ``repeat`` ones start and end at once); a shorter budget's counts
            are read from them (a trial running across it is cut there).
    """

    strategy: str
    seed: int
    budget: int
    spent: float = 0.0
    completions: list[list] = field(default_factory=list)
    outcomes: list[list] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def exhausted(self) -> bool:
        return self.spent >= self.budget - EPS

    @property
    def repeats(self) -> int:
        """Configs answered from the record of a trained one, at no cost."""
        return sum(outcome == "repeat" for _, _, outcome in self.outcomes)

    def spend(self, cost: float) -> None:
        """Add ``cost`` full-epoch equivalents (never negative)."""
        assert cost >= -EPS, cost
        self.spent = round(self.spent + max(cost, 0.0), DIGITS + 3)

    def complete(self, value: float, params: dict) -> None:
        best = self.best_at(float("inf"))
        kept = dict(params) if best is None or value > best else {}
        self.completions.append([self.spent, float(value), kept])

    def ended(self, started: float, outcome: str) -> None:
        """Record a trial's outcome (one of :data:`OUTCOMES`), ending now."""
        assert outcome in OUTCOMES, outcome
        self.outcomes.append([started, self.spent, outcome])

    def best_at(self, budget: float) -> float | None:
        """The best validation accuracy of the trials completed within ``budget``; None before the first."""
        values = [value for spent, value, _ in self.completions if spent <= budget + EPS]
        return max(values) if values else None

    def best_params_at(self, budget: float) -> tuple[float, dict] | None:
        """The best completed trial within ``budget``: its value and parameters (the first of equals)."""
        best = None
        for spent, value, params in self.completions:
            if spent <= budget + EPS and (best is None or value > best[0]):
                best = (value, params)
        return best

    def counts_at(self, budget: float) -> dict[str, int]:
        """Trials by outcome had the budget been ``budget``: a trial running across it is cut."""
        counts = dict.fromkeys(OUTCOMES, 0)
        for started, ended, outcome in self.outcomes:
            if ended <= budget + EPS:
                counts[outcome] += 1
            elif started < budget - EPS:
                counts["cut"] += 1
        return counts

    def compact(self) -> dict:
        """The run as stored: numbers rounded, so that a record stays small and reads back equal."""
        return {
            "strategy": self.strategy,
            "seed": self.seed,
            "budget": self.budget,
            "spent": round(self.spent, DIGITS),
            "completions": [[round(s, DIGITS), round(v, DIGITS), p] for s, v, p in self.completions],
            "outcomes": [[round(a, DIGITS), round(b, DIGITS), o] for a, b, o in self.outcomes],
            "wall_s": round(self.wall_s, 1),
        }


def run_line(run: SearchRun) -> str:
    """One line per finished search, for the log."""
    counts = ", ".join(f"{n} {k}" for k, n in run.counts_at(run.budget).items() if n)
    best = run.best_at(run.budget)
    text = f"{best:.4f}" if best is not None else "-"
    return (
        f"({run.strategy}) seed {run.seed}: {run.spent:.2f}/{run.budget} {UNIT}, {counts}; "
        f"best val {text} ({run.wall_s:.0f} s)"
    )
