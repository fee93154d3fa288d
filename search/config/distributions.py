"""Search spaces as trees of nodes: fixed values, distributions, and structures of nodes.

Every leaf of a config is either a fixed value or a distribution::

    width: 64                                   # fixed
    width: {choice: [32, 64, 128]}              # categorical
    blocks: {range: [1, 6]}                     # int range (the field's type decides int/float)
    lr: {range: [0.01, 0.3], log: true}         # float range, log scale
    optimizer: {choice: [{name: sgd, momentum: {range: [0.8, 0.95]}},
                         {name: adamw, lr: {range: [1e-4, 1e-2], log: true}}]}

A choice between structured options (dicts, lists, null) is conditional: only the
chosen option's parameters are sampled. Sampling is define-by-run through an Optuna
trial, so each value is a named parameter of the study:
``model.stages.0.blocks``; a choice between named options is ``train.optimizer.name``
and the parameters inside an option carry its label: ``train.optimizer.sgd.momentum``.

:mod:`search.config.parsing` builds these nodes from YAML; this module only holds them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Protocol

from search.config.errors import InvalidValue

__all__ = [
    "InvalidSample",
    "Suggester",
    "Loc",
    "display_path",
    "Node",
    "Fixed",
    "Categorical",
    "Range",
    "Struct",
    "Sequence",
    "Branches",
]


class InvalidSample(Exception):
    """A sampled combination breaks a check across fields (e.g. aux head after the last stage)."""


class Suggester(Protocol):
    """The part of :class:`optuna.trial.Trial` that sampling uses."""

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float: ...

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


@dataclass(frozen=True)
class Loc:
    """Where a node is: its key path in the YAML file and its Optuna parameter name."""

    keys: tuple[str | int, ...] = ()
    name: str = ""

    def child(self, key: str | int) -> Loc:
        return Loc(self.keys + (key,), f"{self.name}.{key}" if self.name else str(key))

    def option(self, index: int, label: str) -> Loc:
        return Loc(self.keys + ("choice", index), f"{self.name}.{label}" if self.name else label)

    @property
    def display(self) -> str:
        return display_path(self.keys)


def display_path(keys: tuple[str | int, ...]) -> str:
    """``('model', 'stages', 1, 'width')`` -> ``model.stages[1].width``."""
    text = ""
    for key in keys:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else key)
    return text


class Node(ABC):
    """One value of a space: fixed, a distribution, or a structure of nodes."""

    loc: Loc

    @property
    @abstractmethod
    def is_fixed(self) -> bool: ...

    @abstractmethod
    def sample(self, trial: Suggester) -> Any:
        """A value drawn through ``trial`` (define-by-run)."""

    @abstractmethod
    def open_keys(self) -> list[str]:
        """Display paths of the distributions in this node."""

    @abstractmethod
    def params_of(self, value: Any) -> dict[str, Any]:
        """The Optuna parameters that make :meth:`sample` return ``value`` (for warm starts).

        Values the space fixes are left to the space: an enqueued config keeps the
        space's epoch budget, say. Only the searched dimensions must hold ``value``.

        Raises:
            ValueError: ``value`` is not in the space (the message names the key).
        """

    def value(self) -> Any:
        """The value of a fixed node."""
        assert self.is_fixed, self.loc.display
        return self.sample(_NO_TRIAL)


@dataclass(frozen=True)
class Fixed(Node):
    """A value the space does not search."""

    loc: Loc
    fixed: Any

    is_fixed = True

    def sample(self, trial: Suggester) -> Any:
        return self.fixed

    def open_keys(self) -> list[str]:
        return []

    def params_of(self, value: Any) -> dict[str, Any]:
        return {}  # a value the space fixes is the space's to choose (e.g. the epoch budget)


@dataclass(frozen=True)
class Categorical(Node):
    """A choice between scalar values: one categorical parameter."""

    loc: Loc
    choices: tuple[Any, ...]

    is_fixed = False

    def sample(self, trial: Suggester) -> Any:
        return trial.suggest_categorical(self.loc.name, self.choices)

    def open_keys(self) -> list[str]:
        return [self.loc.display]

    def params_of(self, value: Any) -> dict[str, Any]:
        if value not in self.choices:
            raise ValueError(f"{self.loc.display}: {value!r} is not one of {list(self.choices)}")
        return {self.loc.name: value}


@dataclass(frozen=True)
class Range(Node):
    """A number between ``low`` and ``high``: an int or float parameter, optionally stepped or log-scaled."""

    loc: Loc
    kind: type  # int or float
    low: float
    high: float
    step: float | None = None
    log: bool = False

    is_fixed = False

    def sample(self, trial: Suggester) -> Any:
        if self.kind is int:
            low, high, step = int(self.low), int(self.high), int(self.step or 1)
            return trial.suggest_int(self.loc.name, low, high, step=step, log=self.log)
        return trial.suggest_float(self.loc.name, self.low, self.high, step=self.step, log=self.log)

    def open_keys(self) -> list[str]:
        return [self.loc.display]

    def params_of(self, value: Any) -> dict[str, Any]:
        if not self.low <= value <= self.high:
            raise ValueError(f"{self.loc.display}: {value!r} is outside [{self.low}, {self.high}]")
        return {self.loc.name: value}


@dataclass(frozen=True)
class Struct(Node):
    """A dataclass whose fields are nodes."""

    loc: Loc
    cls: type
    fields: dict[str, Node]

    @property
    def is_fixed(self) -> bool:
        return all(node.is_fixed for node in self.fields.values())

    def sample(self, trial: Suggester) -> Any:
        values = {key: node.sample(trial) for key, node in self.fields.items()}
        try:
            return self.cls(**values)
        except InvalidValue as error:
            key = display_path(self.loc.keys + tuple(error.key.split(".")))
            raise InvalidSample(f"{key}: {error.message}") from None

    def open_keys(self) -> list[str]:
        return [key for node in self.fields.values() for key in node.open_keys()]

    def params_of(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, self.cls):
            where = self.loc.display or "config"
            raise ValueError(f"{where}: expected {self.cls.__name__}, got {type(value).__name__}")
        params: dict[str, Any] = {}
        for key, node in self.fields.items():
            params.update(node.params_of(getattr(value, key)))
        return params


@dataclass(frozen=True)
class Sequence(Node):
    """A tuple whose items are nodes (stages, hidden sizes)."""

    loc: Loc
    items: tuple[Node, ...]

    @property
    def is_fixed(self) -> bool:
        return all(node.is_fixed for node in self.items)

    def sample(self, trial: Suggester) -> Any:
        return tuple(node.sample(trial) for node in self.items)

    def open_keys(self) -> list[str]:
        return [key for node in self.items for key in node.open_keys()]

    def params_of(self, value: Any) -> dict[str, Any]:
        if len(value) != len(self.items):
            raise ValueError(f"{self.loc.display}: the space has {len(self.items)} items, the config {len(value)}")
        params: dict[str, Any] = {}
        for node, item in zip(self.items, value, strict=True):
            params.update(node.params_of(item))
        return params


@dataclass(frozen=True)
class Branches(Node):
    """A conditional choice: one categorical parameter picks the option to sample from."""

    loc: Loc
    param: str
    labels: tuple[str, ...]
    options: tuple[Node, ...]

    is_fixed = False

    def sample(self, trial: Suggester) -> Any:
        label = trial.suggest_categorical(self.param, self.labels)
        return self.options[self.labels.index(label)].sample(trial)

    def open_keys(self) -> list[str]:
        return [self.loc.display] + [key for node in self.options for key in node.open_keys()]

    def params_of(self, value: Any) -> dict[str, Any]:
        chosen = "none" if value is None else getattr(value, "name", None)
        if chosen in self.labels:
            option = self.options[self.labels.index(chosen)]
            return {self.param: chosen, **option.params_of(value)}
        reasons = []
        for label, option in zip(self.labels, self.options, strict=True):
            try:
                return {self.param: label, **option.params_of(value)}
            except ValueError as error:
                reasons.append(str(error))
        raise ValueError(f"{self.loc.display}: no option matches ({'; '.join(reasons)})")


class _NoTrial:
    """Stands in for a trial when a fixed node is read: any suggestion is a bug."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a fixed node asked to {name}")


_NO_TRIAL: Any = _NoTrial()
