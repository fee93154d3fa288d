"""Parsing YAML values against the typed configs of :mod:`search.config.schema` into nodes.

The parser checks everything that can be checked without sampling (keys, types,
bounds, ranges); a fixed section is built into its dataclass at once so that checks
across fields run at load time too. It reads the configs' type hints only: scalars,
``Literal``, ``Optional``, tuples, ``dict[str, ...]``, dataclasses and unions of dataclasses
told apart by their ``name`` field, with numeric bounds in field metadata (``ge``, ``gt``,
``le``; the configs declare them with :func:`bounded` and :func:`required`). A field without a
default is required: a file that leaves it out is refused (the spec's schema gives every field
a default; what tools write back, such as a model folder's ``model.json``, has required fields).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Literal, Union

from search.config.distributions import Branches, Categorical, Fixed, Loc, Node, Range, Sequence, Struct, display_path
from search.config.errors import InvalidValue

__all__ = ["ParseError", "parse", "convert_scalar", "check_keys", "bounded", "required"]

PRIMITIVES = (type(None), bool, int, float, str)


def bounded(default: Any, **bounds: float) -> Any:
    """A dataclass field with a default and numeric bounds (``ge``, ``gt``, ``le``, ``lt``), kept in
    its metadata so that the parser checks fixed values and distribution ranges alike; the
    bounds of a tuple field hold for each of its items."""
    return dataclasses.field(default=default, metadata=bounds)


def required(**bounds: float) -> Any:
    """A dataclass field without a default (a file must give it), with numeric bounds as :func:`bounded`."""
    return dataclasses.field(metadata=bounds)


class ParseError(Exception):
    """A value does not fit the schema at ``key`` (display form). Turned into SpecError by the loader."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")


def parse(raw: Any, tp: Any, loc: Loc, *, searchable: bool, bounds: dict | None = None) -> Node:
    """Parse ``raw`` (from YAML) as a value of type ``tp`` at ``loc``.

    Args:
        raw: The YAML value.
        tp: A type hint of :mod:`search.config.schema` (scalar, Literal, Optional, tuple, dataclass
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
            raise ParseError(
                loc.display,
                f"cannot be searched here (only a spec's model and train sections can); it takes {_describe(tp)}",
            )
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
        return _parse_sequence(raw, item_type, loc, searchable, bounds)
    value_type = _dict_value_type(tp)
    if value_type is not None:
        return Fixed(loc, None if raw is None and _is_optional(tp) else _parse_mapping(raw, value_type, loc, bounds))
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
    scalar = not _dataclass_options(tp) and _tuple_item_types(tp) is None
    if scalar and all(isinstance(option, PRIMITIVES) for option in options):
        values = tuple(convert_scalar(o, tp, loc.child("choice").child(i), bounds) for i, o in enumerate(options))
        if len(set(values)) != len(values):
            raise ParseError(where, f"lists an option twice: {list(values)}")
        return Categorical(loc, values)
    labels = tuple(_option_label(option, i) for i, option in enumerate(options))
    if len(set(labels)) != len(labels):
        raise ParseError(where, f"options need distinct names, got {list(labels)}")
    nodes = tuple(
        parse(option, tp, loc.option(i, label), searchable=True, bounds=bounds)
        for i, (label, option) in enumerate(zip(labels, options, strict=True))
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
            bounds = dict(spec_field.metadata)
            nodes[key] = parse(raw[key], field_types[key], loc.child(key), searchable=searchable, bounds=bounds)
        elif _is_required(spec_field):
            raise ParseError(loc.child(key).display, f"missing: required ({_describe(field_types[key])})")
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
    by_name = {name: cls for cls in options for name in _literal_names(cls)}
    name = raw["name"]
    if not isinstance(name, str) or name not in by_name:  # a mapping or list is no name (and unhashable)
        hint = _did_you_mean(name, by_name) if isinstance(name, str) else ""
        raise ParseError(loc.child("name").display, f"{name!r} is not one of {sorted(by_name)}{hint}")
    return by_name[name]


def _parse_sequence(
    raw: Any, item_types: tuple[Any, ...] | Any, loc: Loc, searchable: bool, bounds: dict | None = None
) -> Node:
    """A list against a tuple type; the field's bounds hold for every item (``betas``, ``hidden``)."""
    if not isinstance(raw, list):
        raise ParseError(loc.display, f"must be a list, got {raw!r}")
    if isinstance(item_types, tuple):
        if len(raw) != len(item_types):
            raise ParseError(loc.display, f"must be a list of {len(item_types)} values, got {len(raw)}")
        types_ = item_types
    else:
        types_ = (item_types,) * len(raw)
    nodes = tuple(
        parse(item, t, loc.child(i), searchable=searchable, bounds=bounds)
        for i, (item, t) in enumerate(zip(raw, types_, strict=True))
    )
    sequence = Sequence(loc, nodes)
    return Fixed(loc, sequence.value()) if sequence.is_fixed else sequence


def _parse_mapping(raw: Any, value_type: Any, loc: Loc, bounds: dict) -> dict[str, Any]:
    """A mapping of string keys to fixed values of ``value_type`` (a ``dict[str, ...]`` field)."""
    if not isinstance(raw, dict):
        raise ParseError(loc.display, f"must be a mapping, got {raw!r}")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise ParseError(loc.display, f"keys must be strings, got {key!r}")
        out[key] = parse(value, value_type, loc.child(key), searchable=False, bounds=bounds).value()
    return out


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
        # Same type and value: 1 is not True, and true is not one of ["on", "off"].
        if not any(raw == a and isinstance(raw, bool) == isinstance(a, bool) for a in allowed):
            raise ParseError(loc.display, f"{raw!r} is not one of {list(allowed)}{_did_you_mean(raw, allowed)}")
        return raw
    if typing.get_origin(base) in (Union, types.UnionType):  # scalars of several types (a duration: 90 or "2h")
        return _convert_union(raw, tp, loc, bounds)
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


def _convert_union(raw: Any, tp: Any, loc: Loc, bounds: dict) -> Any:
    """``raw`` as the first of the union's scalar types that takes it."""
    for option in typing.get_args(_strip_optional(tp)):
        try:
            return convert_scalar(raw, option, loc, bounds)
        except ParseError:
            continue
    raise ParseError(loc.display, f"must be {_describe(tp)}, got {raw!r}")


def _check_bounds(value: float, bounds: dict, loc: Loc) -> Any:
    if "ge" in bounds and not value >= bounds["ge"]:
        raise ParseError(loc.display, f"must be >= {bounds['ge']}, got {value}")
    if "gt" in bounds and not value > bounds["gt"]:
        raise ParseError(loc.display, f"must be > {bounds['gt']}, got {value}")
    if "le" in bounds and not value <= bounds["le"]:
        raise ParseError(loc.display, f"must be <= {bounds['le']}, got {value}")
    if "lt" in bounds and not value < bounds["lt"]:
        raise ParseError(loc.display, f"must be < {bounds['lt']}, got {value}")
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


def _is_required(spec_field: dataclasses.Field) -> bool:
    return spec_field.default is dataclasses.MISSING and spec_field.default_factory is dataclasses.MISSING


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
    return tuple(a for a in _union_args(tp) if isinstance(a, type) and dataclasses.is_dataclass(a))


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


def _dict_value_type(tp: Any) -> Any | None:
    """``dict[str, X]`` -> ``X``; else None."""
    base = _strip_optional(tp)
    return typing.get_args(base)[1] if typing.get_origin(base) is dict else None


def _numeric_kind(tp: Any) -> type | None:
    base = _strip_optional(tp)
    return base if base in (int, float) else None


def _describe(tp: Any) -> str:
    base = _strip_optional(tp)
    items = _tuple_item_types(base)
    if typing.get_origin(base) is Literal:
        text = f"one of {list(typing.get_args(base))}"
    elif dataclasses.is_dataclass(base):
        text = f"a mapping of {', '.join(f.name for f in dataclasses.fields(base))}"
    elif items is not None:
        text = f"a list of {_describe(items)}" if not isinstance(items, tuple) else f"a list of {len(items)} values"
    elif typing.get_origin(base) is dict:
        text = f"a mapping of names to {_describe(typing.get_args(base)[1])}"
    elif typing.get_origin(base) in (Union, types.UnionType):
        text = " or ".join(getattr(a, "__name__", str(a)) for a in typing.get_args(base))
    else:
        text = getattr(base, "__name__", str(base))
    return f"{text} or null" if _is_optional(tp) else text
