"""Reading a spec's YAML with limits: a file that is not a spec fails in well under a second,
as one :class:`~search.config.errors.SpecError`, whatever it holds.

Before anything is built, one pass over the parser's events (iterative, so depth cannot
overflow Python's stack) checks the limits and names the key path where one is broken:

- at most :data:`MAX_SPEC_BYTES` bytes of UTF-8 text;
- at most :data:`MAX_DEPTH` levels of nesting;
- at most :data:`MAX_VALUES` values once every alias is expanded (a "billion laughs" alias
  bomb is a few lines that expand to billions of values);
- no key twice in one mapping (YAML would keep the last silently): the key and both lines.

Only then is the text loaded, with YAML's safe loader (no tags that build objects).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from search.config.distributions import display_path
from search.config.errors import SpecError

__all__ = ["MAX_SPEC_BYTES", "MAX_DEPTH", "MAX_VALUES", "decode_spec_bytes", "load_yaml"]

MAX_SPEC_BYTES = 2**20  # the largest spec in spaces/ is under 4 KiB
MAX_DEPTH = 32  # a spec nests 6 levels deep at most (model.stages[0].width.choice[0])
MAX_VALUES = 100_000  # after alias expansion; a spec has a few hundred

# libyaml's parser where PyYAML was built with it: the same events and errors, faster.
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_NODE_EVENTS = (yaml.ScalarEvent, yaml.AliasEvent, yaml.MappingStartEvent, yaml.SequenceStartEvent)


def decode_spec_bytes(data: bytes, source: str) -> str:
    """A spec file's bytes as text, within the size limit.

    Raises:
        SpecError: over :data:`MAX_SPEC_BYTES`, or not UTF-8 text.
    """
    _check_size(len(data), source)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SpecError(source, "", f"is not a UTF-8 text file (byte {error.start}); a spec is YAML text") from None


def load_yaml(text: str, source: str) -> Any:
    """The YAML document in ``text``, checked against the limits first.

    Args:
        text: The spec's YAML.
        source: Names the file in errors.

    Returns:
        The plain data (mappings, lists, scalars).

    Raises:
        SpecError: invalid YAML, a limit broken, or a duplicate key (each names where).
    """
    _check_size(len(text.encode("utf-8", "surrogatepass")), source)
    try:
        _check_events(text, source)
        return yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise SpecError(source, "", f"invalid YAML: {where}{problem}") from None
    except (ValueError, OverflowError) as error:  # an int of 5,000 digits, a date of month 13
        raise SpecError(source, "", f"invalid YAML: a value cannot be read ({error})") from None


def _check_size(size: int, source: str) -> None:
    if size > MAX_SPEC_BYTES:
        raise SpecError(source, "", f"is {size:,} bytes; a spec is at most {MAX_SPEC_BYTES:,} bytes of YAML")


@dataclass
class _Frame:
    """An open mapping or sequence during the pass over events."""

    path: tuple[str | int, ...]
    is_mapping: bool
    values: int = 0  # values inside, aliases expanded
    expect_key: bool = True
    key: str | int = ""
    index: int = 0
    keys: dict[str, int] = field(default_factory=dict)  # key -> line

    def place(self, event: yaml.Event, source: str) -> tuple[str | int, ...]:
        """Where the node that ``event`` starts sits; checks a mapping's keys for duplicates."""
        if not self.is_mapping:
            self.index += 1
            return (*self.path, self.index - 1)
        if not self.expect_key:
            self.expect_key = True
            return (*self.path, self.key)
        self.expect_key = False
        self.key = "?"  # a mapping or sequence as a key: rare, and no duplicate check
        if isinstance(event, yaml.ScalarEvent):
            self.key = event.value
            line = _line(event)
            if event.value == "<<" and event.style is None:
                return self.path  # a merge key may repeat
            if event.value in self.keys:
                raise SpecError(
                    source,
                    display_path((*self.path, event.value)),
                    f"duplicate key {event.value!r} (lines {self.keys[event.value]} and {line}); "
                    "YAML would keep only the last: remove one",
                )
            self.keys[event.value] = line
        return self.path


def _check_events(text: str, source: str) -> None:
    """One pass over the parser's events: depth, expanded size and duplicate keys."""
    stack: list[_Frame] = []
    anchored: dict[str, int] = {}  # anchor -> values in its node
    open_anchors: list[tuple[str | None, _Frame]] = []
    total = 0
    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            anchor, frame = open_anchors.pop()
            stack.pop()
            if anchor is not None:
                anchored[anchor] = frame.values + 1
            if stack:
                stack[-1].values += frame.values
            continue
        if not isinstance(event, _NODE_EVENTS):
            continue
        path = stack[-1].place(event, source) if stack else ()
        size = anchored.get(event.anchor or "", 1) if isinstance(event, yaml.AliasEvent) else 1
        total += size
        if total > MAX_VALUES:
            raise SpecError(
                source,
                display_path(path),
                f"expands to more than {MAX_VALUES:,} values (YAML aliases, line {_line(event)}); "
                "a spec has a few hundred",
            )
        if stack:
            stack[-1].values += size
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            if len(stack) >= MAX_DEPTH:
                raise SpecError(
                    source,
                    display_path(path),
                    f"nests deeper than {MAX_DEPTH} levels (line {_line(event)}); a spec needs under 10",
                )
            frame = _Frame(path, isinstance(event, yaml.MappingStartEvent))
            stack.append(frame)
            open_anchors.append((event.anchor, frame))
        elif isinstance(event, yaml.ScalarEvent) and event.anchor is not None:
            anchored[event.anchor] = 1


def _line(event: yaml.Event) -> int:
    """The 1-based line an event starts on (0 where the parser gives no mark)."""
    return event.start_mark.line + 1 if event.start_mark is not None else 0
