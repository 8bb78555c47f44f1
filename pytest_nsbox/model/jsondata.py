"""Frozen dataclasses to and from JSON values, strictly: one codec for protocol messages and
on-disk records.

``from_json(cls, value, where)`` builds ``cls`` from a JSON object whose keys are exactly its
fields (those with a default may be absent); every value is checked against the field's
annotation (``int``, ``float``, ``str``, ``bool``, ``X | None``, ``tuple[X, ...]``,
``tuple[X, Y]``, ``list[X]``, ``dict[str, X]``, ``Any``, a nested dataclass). A wrong shape
raises ``DataError`` naming ``where`` and the path to the bad value, e.g.
``owner.json: pid: expected int, got 'x'``. ``to_json`` is the inverse (tuples become lists).

Imported by the box's init before pivot_root: stdlib only (as ``model.users``).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar, Union

T = TypeVar("T")

class DataError(ValueError):
    """A JSON value does not have the shape of the dataclass it is read as."""


def to_json(obj: Any) -> Any:
    """``obj`` as JSON values: dataclasses as objects of their fields, tuples as lists."""
    if type(obj) in _SCALARS:
        return obj
    names = _FIELD_NAMES.get(type(obj))
    if names is None:
        if not (dataclasses.is_dataclass(obj) and not isinstance(obj, type)):
            if isinstance(obj, (tuple, list)):
                return [to_json(v) for v in obj]
            if isinstance(obj, dict):
                return {k: to_json(v) for k, v in obj.items()}
            return obj
        names = _FIELD_NAMES[type(obj)] = tuple(f.name for f in dataclasses.fields(obj))
    return {name: to_json(getattr(obj, name)) for name in names}


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
_SCALARS = frozenset((str, int, float, bool, type(None)))


def from_json(cls: type[T], value: Any, where: str) -> T:
    """``cls`` (a dataclass) from ``value``; raises ``DataError`` naming ``where`` on an
    unknown or missing field, a value of the wrong type, or one ``cls`` refuses
    (``ValueError`` from its ``__post_init__``)."""
    try:
        return _converter(cls)(value)  # type: ignore[no-any-return]
    except _Bad as bad:
        path = "".join(reversed(bad.path)).lstrip(".")
        raise DataError(f"{where}: {path}: {bad}" if path else f"{where}: {bad}") from None


class _Bad(Exception):
    """A value of the wrong shape; ``path`` collects the way to it, innermost first."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.path: list[str] = []


_Convert = Callable[[Any], Any]
_CONVERTERS: dict[Any, _Convert] = {}


def _converter(tp: Any) -> _Convert:
    """The function that checks and converts a JSON value to ``tp``, made once per type
    (the box start path decodes a plan of some 50 ops twice)."""
    found = _CONVERTERS.get(tp)
    if found is None:
        found = _CONVERTERS[tp] = _make(tp)
    return found


def _within(segment: str, convert: _Convert, value: Any) -> Any:
    try:
        return convert(value)
    except _Bad as bad:
        bad.path.append(segment)
        raise


def _each(items: Any, convert: Callable[[Any, Any], Any], segment: Callable[[Any], str]) -> Any:
    """``convert(key, value)`` for every ``(key, value)`` of ``items``; a ``_Bad`` is
    raised again with the path ``segment(key)`` of the item that failed (found only
    then, so the common, valid case pays nothing for it)."""
    try:
        return [convert(k, v) for k, v in items]
    except _Bad:
        for k, v in items:
            _within(segment(k), lambda value: convert(k, value), v)
        raise


def _make(tp: Any) -> _Convert:
    if tp is Any:
        return lambda value: value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union or origin is types.UnionType:
        arms = [a for a in args if a is not type(None)]
        if len(arms) != 1 or len(args) != 2:
            raise TypeError(f"jsondata: unsupported union {tp}")
        arm = _converter(arms[0])
        return lambda value: None if value is None else arm(value)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _make_dataclass(tp)
    if origin in (tuple, list):
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return _make_fixed_tuple([_converter(a) for a in args])
        item = _converter(args[0])
        make = tuple if origin is tuple else list

        def sequence(value: Any) -> Any:
            if not isinstance(value, list):
                raise _Bad(f"expected a list, got {_short(value)}")
            return make(_each(list(enumerate(value)), lambda _i, v: item(v),
                              lambda i: f"[{i}]"))
        return sequence
    if origin is dict:
        item = _converter(args[1])

        def mapping(value: Any) -> Any:
            if not isinstance(value, dict):
                raise _Bad(f"expected an object, got {_short(value)}")
            items = list(value.items())
            return dict(zip(value, _each(items, lambda _k, v: item(v), lambda k: f"[{k!r}]")))
        return mapping
    if tp in (int, float, str, bool):
        return _make_scalar(tp)
    raise TypeError(f"jsondata: unsupported annotation {tp}")


def _make_scalar(tp: type) -> _Convert:
    def scalar(value: Any) -> Any:
        if type(value) is tp:
            return value
        if tp is float and type(value) is int:
            return float(value)
        if tp is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Bad(f"expected {tp.__name__}, got {_short(value)}")
    return scalar


def _make_fixed_tuple(items: list[_Convert]) -> _Convert:
    def fixed(value: Any) -> Any:
        if not isinstance(value, list) or len(value) != len(items):
            raise _Bad(f"expected a list of {len(items)} items, got {_short(value)}")
        return tuple(_each(list(enumerate(value)), lambda i, v: items[i](v), lambda i: f"[{i}]"))
    return fixed


def _make_dataclass(cls: type) -> _Convert:
    fields = [f for f in dataclasses.fields(cls) if f.init]
    names = {f.name for f in fields}
    required = [f.name for f in fields if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]
    hints = typing.get_type_hints(cls)
    convert = {name: _converter(hints[name]) for name in names}

    def dataclass_(value: Any) -> Any:
        if not isinstance(value, dict):
            raise _Bad(f"expected an object, got {_short(value)}")
        if len(value) != len(names) or not names.issuperset(value):
            unknown = sorted(str(k) for k in value if k not in names)
            if unknown:
                raise _Bad(f"unknown field {unknown[0]!r} (known: {', '.join(sorted(names))})")
            missing = [n for n in required if n not in value]
            if missing:
                raise _Bad(f"missing field {missing[0]!r}")
        kwargs = dict(zip(value, _each(list(value.items()), lambda k, v: convert[k](v),
                                       lambda k: f".{k}")))
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise _Bad(str(exc)) from None
    return dataclass_


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
