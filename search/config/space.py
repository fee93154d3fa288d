"""Search spaces: YAML values parsed against the typed configs of :mod:`search.config.spec`.

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

The parser checks everything that can be checked without sampling (keys, types,
bounds, ranges); a fixed section is built into its dataclass at once so that checks
across fields run at load time too.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import random
import types
import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Literal, Protocol, Union

from search.config.errors import InvalidValue

DISTRIBUTION_KEYS = ("choice", "range", "step", "log")
PRIMITIVES = (type(None), bool, int, float, str)


class ParseError(Exception):
    """A value does not fit the schema at ``key`` (display form). Turned into SpecError by the loader."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")


class InvalidSample(Exception):
    """A sampled combination breaks a check across fields (e.g. aux head after the last stage)."""


class Suggester(Protocol):
    """The part of :class:`optuna.trial.Trial` that sampling uses."""

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float: ...

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


# --------------------------------------------------------------------------- locations


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


# --------------------------------------------------------------------------- nodes


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
    loc: Loc
    kind: type  # int or float
    low: float
    high: float
    step: float | None = None
    log: bool = False

    is_fixed = False

    def sample(self, trial: Suggester) -> Any:
        if self.kind is int:
            return trial.suggest_int(self.loc.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
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
            raise ValueError(f"{self.loc.display or 'config'}: expected {self.cls.__name__}, got {type(value).__name__}")
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
        for node, item in zip(self.items, value):
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
        for label, option in zip(self.labels, self.options):
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


# --------------------------------------------------------------------------- parsing


def parse(raw: Any, tp: Any, loc: Loc, *, searchable: bool, bounds: dict | None = None) -> Node:
    """Parse ``raw`` (from YAML) as a value of type ``tp`` at ``loc``.

    Args:
        raw: The YAML value.
        tp: A type hint of :mod:`search.config.spec` (scalar, Literal, Optional, tuple, dataclass
            or a union of dataclasses told apart by their ``name``).
        loc: Where ``raw`` is.
        searchable: Whether distributions are allowed here.
        bounds: Numeric bounds of the field (``ge``, ``gt``, ``le``).

    Returns:
        The node; a :class:`Fixed` node when nothing below it is searched.

    Raises:
        ParseError: ``raw`` does not fit ``tp`` (the message says what is allowed).
    """
    bounds = bounds or {}
    if _is_distribution(raw):
        if not searchable:
            raise ParseError(loc.display, "cannot be searched: only model and train hold distributions")
        return _parse_distribution(raw, tp, loc, bounds)
    options = _dataclass_options(tp)
    if options:
        if raw is None and _is_optional(tp):
            return Fixed(loc, None)
        return _parse_struct(raw, options, loc, searchable)
    item_type = _tuple_item_types(tp)
    if item_type is not None:
        if raw is None and _is_optional(tp):
            return Fixed(loc, None)
        return _parse_sequence(raw, item_type, loc, searchable)
    return Fixed(loc, convert_scalar(raw, tp, loc, bounds))


def _is_distribution(raw: Any) -> bool:
    return isinstance(raw, dict) and ("choice" in raw or "range" in raw)


def _parse_distribution(raw: dict, tp: Any, loc: Loc, bounds: dict) -> Node:
    kind = "choice" if "choice" in raw else "range"
    allowed = ("choice",) if kind == "choice" else ("range", "step", "log")
    check_keys(raw, allowed, loc)
    if kind == "choice":
        return _parse_choice(raw["choice"], tp, loc, bounds)
    return _parse_range(raw, tp, loc, bounds)


def _parse_choice(options: Any, tp: Any, loc: Loc, bounds: dict) -> Node:
    where = loc.child("choice").display
    if not isinstance(options, list) or not options:
        raise ParseError(where, f"must be a non-empty list of options, got {options!r}")
    if all(isinstance(option, PRIMITIVES) for option in options) and not _dataclass_options(tp):
        if _tuple_item_types(tp) is None:
            values = tuple(convert_scalar(o, tp, loc.child("choice").child(i), bounds) for i, o in enumerate(options))
            if len(set(values)) != len(values):
                raise ParseError(where, f"lists an option twice: {list(values)}")
            return Categorical(loc, values)
    labels = tuple(_option_label(option, i) for i, option in enumerate(options))
    if len(set(labels)) != len(labels):
        raise ParseError(where, f"options need distinct names, got {list(labels)}")
    nodes = tuple(
        parse(option, tp, loc.option(i, label), searchable=True, bounds=bounds)
        for i, (label, option) in enumerate(zip(labels, options))
    )
    named = all(isinstance(option, dict) and "name" in option for option in options)
    param = f"{loc.name}.name" if named else loc.name
    return Branches(loc, param, labels, nodes)


def _option_label(option: Any, index: int) -> str:
    if option is None:
        return "none"
    if isinstance(option, dict) and isinstance(option.get("name"), str):
        return option["name"]
    return str(index)


def _parse_range(raw: dict, tp: Any, loc: Loc, bounds: dict) -> Node:
    kind = _numeric_kind(tp)
    where = loc.child("range").display
    if kind is None:
        raise ParseError(where, f"a range needs a number field; {loc.display} takes {_describe(tp)}: use choice")
    pair = raw["range"]
    if not (isinstance(pair, list) and len(pair) == 2 and all(_is_number(v) for v in pair)):
        raise ParseError(where, f"must be [low, high] numbers, got {pair!r}")
    if kind is int and not all(float(v).is_integer() for v in pair):
        raise ParseError(where, f"{loc.display} takes integers, got {pair!r}")
    low, high = (kind(v) for v in pair)
    if low > high:
        raise ParseError(where, f"low {low} > high {high}")
    for value in (low, high):
        _check_bounds(value, bounds, loc.child("range"))
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise ParseError(loc.child("log").display, f"must be true or false, got {log!r}")
    step = raw.get("step")
    if step is not None:
        if not _is_number(step) or step <= 0 or (kind is int and not float(step).is_integer()):
            raise ParseError(loc.child("step").display, f"must be a positive {kind.__name__}, got {step!r}")
        if log:
            raise ParseError(loc.child("step").display, "step and log: true cannot be combined")
        step = kind(step)
    if log and low <= 0:
        raise ParseError(where, f"log scale needs low > 0, got {low}")
    return Range(loc, kind, low, high, step, log)


def _parse_struct(raw: Any, options: tuple[type, ...], loc: Loc, searchable: bool) -> Node:
    cls = _pick_dataclass(raw, options, loc)
    field_types = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    check_keys(raw, tuple(fields), loc)
    nodes: dict[str, Node] = {}
    for key, spec_field in fields.items():
        if key in raw:
            nodes[key] = parse(raw[key], field_types[key], loc.child(key), searchable=searchable, bounds=dict(spec_field.metadata))
        else:
            nodes[key] = Fixed(loc.child(key), _default(spec_field))
    struct = Struct(loc, cls, nodes)
    if struct.is_fixed:
        return Fixed(loc, _build(cls, {key: node.value() for key, node in nodes.items()}, loc))
    return struct


def _build(cls: type, values: dict, loc: Loc) -> Any:
    try:
        return cls(**values)
    except InvalidValue as error:
        raise ParseError(display_path(loc.keys + tuple(error.key.split("."))), error.message) from None


def _pick_dataclass(raw: Any, options: tuple[type, ...], loc: Loc) -> type:
    if not isinstance(raw, dict):
        names = [name for cls in options for name in _literal_names(cls)]
        allowed = f"a mapping with name: one of {names}" if len(options) > 1 else "a mapping"
        raise ParseError(loc.display, f"must be {allowed}, got {raw!r}")
    if len(options) == 1 or "name" not in raw:
        return options[0]  # the first member of a union is its default
    names = {name: cls for cls in options for name in _literal_names(cls)}
    name = raw["name"]
    if name not in names:
        raise ParseError(loc.child("name").display, f"{name!r} is not one of {sorted(names)}{_did_you_mean(name, names)}")
    return names[name]


def _parse_sequence(raw: Any, item_types: tuple[Any, ...] | Any, loc: Loc, searchable: bool) -> Node:
    if not isinstance(raw, list):
        raise ParseError(loc.display, f"must be a list, got {raw!r}")
    if isinstance(item_types, tuple):
        if len(raw) != len(item_types):
            raise ParseError(loc.display, f"must be a list of {len(item_types)} values, got {len(raw)}")
        types_ = item_types
    else:
        types_ = (item_types,) * len(raw)
    nodes = tuple(parse(item, t, loc.child(i), searchable=searchable) for i, (item, t) in enumerate(zip(raw, types_)))
    sequence = Sequence(loc, nodes)
    return Fixed(loc, sequence.value()) if sequence.is_fixed else sequence


# --------------------------------------------------------------------------- scalars


def convert_scalar(raw: Any, tp: Any, loc: Loc, bounds: dict) -> Any:
    """Check a fixed scalar against its type and bounds; ints are widened to floats.

    Raises:
        ParseError: wrong type, not an allowed literal, or out of bounds.
    """
    if raw is None:
        if _is_optional(tp):
            return None
        raise ParseError(loc.display, f"must be {_describe(tp)}, got null")
    base = _strip_optional(tp)
    if typing.get_origin(base) is Literal:
        allowed = typing.get_args(base)
        if raw not in allowed or isinstance(raw, bool) != any(isinstance(a, bool) for a in allowed):
            raise ParseError(loc.display, f"{raw!r} is not one of {list(allowed)}{_did_you_mean(raw, allowed)}")
        return raw
    if base is bool:
        if not isinstance(raw, bool):
            raise ParseError(loc.display, f"must be true or false, got {raw!r}")
        return raw
    if base is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ParseError(loc.display, f"must be an integer, got {raw!r}")
        return _check_bounds(raw, bounds, loc)
    if base is float:
        if not _is_number(raw):
            raise ParseError(loc.display, f"must be a number, got {raw!r}")
        return _check_bounds(float(raw), bounds, loc)
    if base is str:
        if not isinstance(raw, str):
            raise ParseError(loc.display, f"must be a string, got {raw!r}")
        return raw
    raise ParseError(loc.display, f"must be {_describe(tp)}, got {raw!r}")


def _check_bounds(value: float, bounds: dict, loc: Loc) -> Any:
    if "ge" in bounds and not value >= bounds["ge"]:
        raise ParseError(loc.display, f"must be >= {bounds['ge']}, got {value}")
    if "gt" in bounds and not value > bounds["gt"]:
        raise ParseError(loc.display, f"must be > {bounds['gt']}, got {value}")
    if "le" in bounds and not value <= bounds["le"]:
        raise ParseError(loc.display, f"must be <= {bounds['le']}, got {value}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_keys(raw: dict, allowed: tuple[str, ...], loc: Loc) -> None:
    for key in raw:
        if key not in allowed:
            raise ParseError(
                loc.child(str(key)).display,
                f"unknown key{_did_you_mean(key, allowed)}; allowed: {', '.join(allowed)}",
            )


def _did_you_mean(word: Any, allowed: Any) -> str:
    matches = difflib.get_close_matches(str(word), [str(a) for a in allowed], n=1)
    return f" (did you mean {matches[0]!r}?)" if matches else ""


def _default(spec_field: dataclasses.Field) -> Any:
    if spec_field.default is not dataclasses.MISSING:
        return spec_field.default
    if spec_field.default_factory is not dataclasses.MISSING:
        return spec_field.default_factory()
    raise AssertionError(f"schema field {spec_field.name} needs a default")


# --------------------------------------------------------------------------- type hints


def _union_args(tp: Any) -> tuple[Any, ...]:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def _is_optional(tp: Any) -> bool:
    return type(None) in _union_args(tp)


def _strip_optional(tp: Any) -> Any:
    args = tuple(a for a in _union_args(tp) if a is not type(None))
    return args[0] if len(args) == 1 else Union[args]


def _dataclass_options(tp: Any) -> tuple[type, ...]:
    return tuple(a for a in _union_args(tp) if dataclasses.is_dataclass(a))


def _literal_names(cls: type) -> tuple[str, ...]:
    """The names a member of a union answers to (its ``name: Literal[...]`` field)."""
    return typing.get_args(typing.get_type_hints(cls).get("name", ""))


def _tuple_item_types(tp: Any) -> tuple[Any, ...] | Any | None:
    """``tuple[int, ...]`` -> ``int``; ``tuple[float, float]`` -> ``(float, float)``; else None."""
    base = _strip_optional(tp)
    if typing.get_origin(base) is not tuple:
        return None
    args = typing.get_args(base)
    return args[0] if len(args) == 2 and args[1] is Ellipsis else args


def _numeric_kind(tp: Any) -> type | None:
    base = _strip_optional(tp)
    return base if base in (int, float) else None


def _describe(tp: Any) -> str:
    base = _strip_optional(tp)
    if typing.get_origin(base) is Literal:
        text = f"one of {list(typing.get_args(base))}"
    else:
        text = getattr(base, "__name__", str(base))
    return f"{text} or null" if _is_optional(tp) else text


# --------------------------------------------------------------------------- random sampling


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


def random_samples(space: Node, count: int, seed: int = 0) -> typing.Iterator[Any]:
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
