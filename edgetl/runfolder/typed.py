"""JSON objects checked against a frozen dataclass's type hints: the one validator of edgetl's records.

A value of the wrong type, or a missing required key, is one EdgetlError naming the source and the
key (`typed_record`). Keys the dataclass does not know are ignored, so an older edgetl reads a newer
record; keys added since an older record was written take defaults.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from enum import Enum

from edgetl.errors import EdgetlError

T = typing.TypeVar("T")


class _Wrong(Exception):
    def __init__(self, key: str, expected: str) -> None:
        super().__init__(key)
        self.key, self.expected = key, expected


def _convert(hint, value, key: str):
    """`value` checked against the type hint `hint` (and lists turned into tuples where declared)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, key)
            except _Wrong:
                continue
        raise _Wrong(key, " or ".join(getattr(a, "__name__", str(a)) for a in args))
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise _Wrong(key, "a JSON object")
        return _build(hint, value, key + ".")
    if origin is tuple or hint is tuple:
        if not isinstance(value, list | tuple):
            raise _Wrong(key, "a JSON list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise _Wrong(key, f"a list of {len(args)}")
        return tuple(_convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=False)))
    if origin is list or hint is list:
        if not isinstance(value, list):
            raise _Wrong(key, "a JSON list")
        return [_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise _Wrong(key, "a JSON object")
        if args:
            return {k: _convert(args[1], v, f"{key}.{k}") for k, v in value.items()}
        return dict(value)
    if hint is typing.Any:
        return value
    if isinstance(hint, type) and issubclass(hint, Enum):
        try:
            return hint(value)
        except ValueError:
            raise _Wrong(key, " or ".join(repr(m.value) for m in hint)) from None
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Wrong(key, "a number")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Wrong(key, "an integer")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise _Wrong(key, "true or false")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise _Wrong(key, "a string")
        return value
    raise TypeError(f"records cannot hold {hint!r}")  # a programming error, not bad input


def _build(cls, d: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _Wrong(prefix + f.name, "present")
            continue
        values[f.name] = _convert(hints[f.name], d[f.name], prefix + f.name)
    return cls(**values)


def typed_record(cls: type[T], d: dict, source: str) -> T:
    """`cls` built from the JSON object `d`; a missing or mistyped key is one EdgetlError."""
    if not isinstance(d, dict):
        raise EdgetlError(f"{source}: not an edgetl record (a JSON object is expected)")
    try:
        return _build(cls, d)
    except _Wrong as e:
        raise EdgetlError(
            f"{source}: key {e.key!r} must be {e.expected}; rerun the stage that writes it"
        ) from None
