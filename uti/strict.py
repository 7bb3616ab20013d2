"""Strict construction of keyword-only dataclass configs from plain dicts (YAML/JSON/CLI).

Unknown keys are an error naming the key and the keys that are allowed, so a typo in a config
file never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from typing import Any, Mapping, TypeVar

from uti.errors import ConfigError

T = TypeVar("T")


def from_dict(cls: type[T], data: Any, *, where: str = "config") -> T:
    """Build dataclass `cls` from `data`, recursing into nested dataclass fields."""
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(repr(k) for k in unknown)} for {cls.__name__}; "
            f"allowed: {', '.join(sorted(fields))}"
        )
    hints = _type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, where=f"{where}.{name}")
    try:
        return cls(**kwargs)
    except TypeError as exc:  # missing required keys
        raise ConfigError(f"{where}: {exc}") from None


@functools.lru_cache(maxsize=None)
def _type_hints(cls: type) -> dict[str, Any]:
    """Resolved annotations of `cls`, once per class: resolving them evaluates every annotation string
    (~90 us), which dominates reading a manifest of 10^6 rows when done per row."""
    return typing.get_type_hints(cls)


def from_flags(cls: type[T], data: Any, *, flags: Mapping[str, str], where: str) -> T:
    """`from_dict` for a config built from CLI flags: an error names the flag the user typed
    (`--max-seq-len`), not the dataclass field (`max_seq_len`). `flags` maps field names (dotted for
    nested fields, e.g. `limits.max_x`) to flags; see `name_flags`."""
    try:
        return from_dict(cls, data, where=where)
    except ConfigError as exc:
        raise ConfigError(name_flags(str(exc), flags, where=where)) from None


def name_flags(message: str, flags: Mapping[str, str], *, where: str | None = None) -> str:
    """`message` with config field names replaced by their CLI flags.

    A name is replaced where it reads as an identifier: when it holds `_` or `.`, or when it starts the
    "field: problem" form. Single-word fields (`seed`, `address`) stay alone mid-sentence, where they are
    usually plain English. `where.field` (from `from_dict`) becomes `where: --flag`.
    """
    if not flags:
        return message
    if where:
        message = message.replace(f"{where}.", f"{where}: ")
    names = "|".join(re.escape(n) for n in sorted(flags, key=len, reverse=True))
    pattern = re.compile(rf"(?<![\w.-])({names})(?![\w-])(:?)")

    def swap(m: re.Match) -> str:
        name, colon = m.group(1), m.group(2)
        if colon or "_" in name or "." in name:
            return flags[name] + colon
        return m.group(0)

    return pattern.sub(swap, message)


def _coerce(hint: Any, value: Any, *, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where=where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where=where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return tuple(_coerce(inner, v, where=f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def to_dict(obj: Any) -> Any:
    """Plain-data view of a (nested) dataclass config, tuples as lists, for JSON/YAML output."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
