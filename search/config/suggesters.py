"""Suggesters that sample a space without an Optuna study: random draws and the low end.

Both implement :class:`search.config.distributions.Suggester`, the part of an Optuna
trial that sampling uses.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

from search.config.distributions import InvalidSample, Node

__all__ = ["RandomSuggester", "LowEndSuggester", "random_samples"]


class RandomSuggester:
    """Draws uniformly (log-uniformly where asked) without a study: for surveys and tests.

    Args:
        seed: Seed of the generator; the same seed draws the same configs.
    """

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.params: dict[str, Any] = {}

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        if log:
            value = int(round(math.exp(self.rng.uniform(math.log(low), math.log(high)))))
        else:
            value = low + step * self.rng.randrange((high - low) // step + 1)
        self.params[name] = value
        return value

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        if log:
            value = math.exp(self.rng.uniform(math.log(low), math.log(high)))
        elif step:
            value = low + step * self.rng.randrange(int(round((high - low) / step)) + 1)
        else:
            value = self.rng.uniform(low, high)
        self.params[name] = value
        return value

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        value = self.rng.choice(list(choices))
        self.params[name] = value
        return value


def random_samples(space: Node, count: int, seed: int = 0) -> Iterator[Any]:
    """``count`` random draws of ``space``; draws that break a check across fields are skipped."""
    suggester = RandomSuggester(seed)
    for _ in range(count):
        try:
            yield space.sample(suggester)
        except InvalidSample:
            continue


class LowEndSuggester:
    """The small corner of a space: every range at its low end, every numeric choice at its
    smallest option, every other choice at its first."""

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return low

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        return low

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        choices = list(choices)
        numbers = [c for c in choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
        return min(numbers) if len(numbers) == len(choices) else choices[0]
