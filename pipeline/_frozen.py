"""Read-only JSON values: what every event's ``data`` is made of.

Every subscriber of an event receives the same object, so its data must not change under one
subscriber because another one edited it. The bus therefore checks each payload once, where it
enters (``emit``, ``ingest``, ``Event.from_wire``), and copies it into read-only containers all
the way down:

- :class:`FrozenDict` is a ``dict`` whose mutating methods raise :exc:`TypeError`;
- :class:`FrozenList` is a ``list`` whose mutating methods raise :exc:`TypeError`.

They subclass ``dict`` and ``list`` on purpose: they compare equal to plain dicts and lists
(``event.data == {"text": "hi"}``), and ``json.dumps`` writes them as they are, so an event's
wire form needs no copy. Only JSON values are accepted: ``str`` keys; ``str``, ``int``,
``bool``, ``None``, finite ``float``, mappings and lists (or tuples) of them, nested at most
:data:`MAX_DEPTH` deep (which also stops cycles).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn

from ._errors import InvalidEvent

__all__ = ["EMPTY", "MAX_DEPTH", "FrozenDict", "FrozenList", "frozen_data", "frozen_value"]

#: The deepest nesting of containers accepted in event data.
MAX_DEPTH = 64


def _read_only(self: object, *args: object, **kwargs: object) -> NoReturn:
    raise TypeError(f"{type(self).__name__} is read-only: event data is shared by subscribers")


class FrozenDict(dict[str, Any]):
    """A read-only ``dict``: the form of every event's ``data`` and of the mappings inside it.

    Reading works as with any dict; changing it raises :exc:`TypeError`. Make a changed copy
    with ``dict(data) | {...}``.
    """

    __slots__ = ()

    __setitem__ = _read_only
    __delitem__ = _read_only
    __ior__ = _read_only
    clear = _read_only
    pop = _read_only
    popitem = _read_only
    setdefault = _read_only
    update = _read_only

    def __repr__(self) -> str:
        return f"FrozenDict({dict.__repr__(self)})"

    def __reduce__(self) -> tuple[type[FrozenDict], tuple[dict[str, Any]]]:
        return (FrozenDict, (dict(self),))

    def __copy__(self) -> FrozenDict:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> FrozenDict:
        return self


class FrozenList(list[Any]):
    """A read-only ``list``: the form of every JSON array inside event data."""

    __slots__ = ()

    __setitem__ = _read_only
    __delitem__ = _read_only
    __iadd__ = _read_only
    __imul__ = _read_only
    append = _read_only
    clear = _read_only
    extend = _read_only
    insert = _read_only
    pop = _read_only
    remove = _read_only
    reverse = _read_only
    sort = _read_only

    def __init__(self, items: Iterable[Any] = ()) -> None:
        list.extend(self, items)

    def __repr__(self) -> str:
        return f"FrozenList({list.__repr__(self)})"

    def __reduce__(self) -> tuple[type[FrozenList], tuple[list[Any]]]:
        return (FrozenList, (list(self),))

    def __copy__(self) -> FrozenList:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> FrozenList:
        return self


#: The data of events that carry none.
EMPTY = FrozenDict()


def frozen_data(data: object) -> FrozenDict:
    """``data`` checked as a JSON object and copied read-only; :exc:`InvalidEvent` if it is not.

    A flat dict of strings, ints, bools and ``None`` (the common agent event) takes the fast
    path: one type check per value and one copy.
    """
    if type(data) is FrozenDict:
        return data
    if type(data) is dict:
        for key, value in data.items():
            kind = type(value)
            if type(key) is not str or not (
                kind is str or kind is int or kind is bool or value is None
            ):
                break
        else:
            return FrozenDict(data)
    elif not isinstance(data, Mapping):
        raise InvalidEvent(f"data must be a mapping, not {type(data).__name__}")
    try:
        return _freeze_mapping(data, 1)
    except _Rejected as rejected:
        raise InvalidEvent(rejected.describe("data")) from None


def frozen_value(value: object) -> Any:
    """Any JSON value checked and made read-only (for the bus's own payloads)."""
    try:
        return _freeze(value, 1)
    except _Rejected as rejected:
        raise InvalidEvent(rejected.describe("value")) from None


class _Rejected(Exception):
    """A value that is not JSON, with the path to it (built only on the way out)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.path: list[object] = []

    def describe(self, root: str) -> str:
        steps = "".join(f"[{step!r}]" for step in reversed(self.path[-8:]))
        more = "[...]" if len(self.path) > 8 else ""
        return f"{root}{steps}{more} {self.reason}"


def _freeze_mapping(mapping: Mapping[Any, Any], depth: int) -> FrozenDict:
    if depth > MAX_DEPTH:
        raise _Rejected(f"is nested more than {MAX_DEPTH} deep (or is cyclic)")
    items: dict[str, Any] = {}
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise _Rejected(f"has a key that is not a str: {key!r}")
        try:
            items[key] = _freeze(value, depth + 1)
        except _Rejected as rejected:
            rejected.path.append(key)
            raise
    return FrozenDict(items)


def _freeze(value: object, depth: int) -> Any:
    if value is None or isinstance(value, str | int):  # bool is an int
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Rejected(f"must be a finite number, not {value!r}")
        return value
    if isinstance(value, Mapping):
        return _freeze_mapping(value, depth)
    if isinstance(value, list | tuple):
        if depth > MAX_DEPTH:
            raise _Rejected(f"is nested more than {MAX_DEPTH} deep (or is cyclic)")
        items = []
        for index, item in enumerate(value):
            try:
                items.append(_freeze(item, depth + 1))
            except _Rejected as rejected:
                rejected.path.append(index)
                raise
        return FrozenList(items)
    raise _Rejected(f"is not a JSON value: {type(value).__name__}")
