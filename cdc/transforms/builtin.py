"""Built-in transforms: filter, select, rename, mask, route and python.

Each is a class whose constructor takes its YAML options and whose instances are
plain callables over one event.  None of them changes its input event.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from ..config.model import Context
from ..config.registry import PluginNotFound, import_ref
from ..errors import ConfigError, ConfigProblem
from ..event import ChangeEvent
from ..templates import Template

__all__ = ["Filter", "Select", "Rename", "Mask", "Route", "Python"]

_OPERATORS = ("eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "null", "changed")


def _number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return Decimal(value)
        except InvalidOperation:
            return value
    return value


def _condition(field: str, spec: Any, path: str) -> Callable[[ChangeEvent], bool]:
    """Compile one ``where`` entry to a predicate over an event."""
    if field == "op":
        ops = frozenset(spec if isinstance(spec, list) else [spec])
        return lambda e: e.op in ops
    if field == "table":
        tables = frozenset(spec if isinstance(spec, list) else [spec])
        return lambda e: e.table in tables or e.source.get("table") in tables

    def value(e: ChangeEvent) -> Any:
        row = e.after if e.after is not None else e.before
        return None if row is None else row.get(field)

    if not isinstance(spec, dict):
        wanted = frozenset(map(str, spec)) if isinstance(spec, list) else None
        if wanted is not None:
            return lambda e: str(value(e)) in wanted
        return lambda e: value(e) == spec or (value(e) is not None and str(value(e)) == str(spec))
    checks: list[Callable[..., bool]] = []  # each called as check(event)
    for op, arg in spec.items():
        if op not in _OPERATORS:
            raise ConfigError([ConfigProblem(f"{path}.{field}.{op}", f"unknown operator (one of {', '.join(_OPERATORS)})")])
        if op == "null":
            checks.append(lambda e, a=bool(arg): (value(e) is None) == a)
        elif op == "changed":
            checks.append(lambda e, a=bool(arg): ((e.before or {}).get(field) != (e.after or {}).get(field)) == a)
        elif op in ("in", "not_in"):
            items = frozenset(map(str, arg if isinstance(arg, list) else [arg]))
            neg = op == "not_in"
            checks.append(lambda e, s=items, n=neg: (str(value(e)) in s) != n)
        else:
            target = _number(arg)
            compare = {"eq": lambda a, b: a == b, "ne": lambda a, b: a != b,
                       "gt": lambda a, b: a > b, "gte": lambda a, b: a >= b,
                       "lt": lambda a, b: a < b, "lte": lambda a, b: a <= b}[op]

            def check(e: ChangeEvent, c=compare, t=target) -> bool:
                v = value(e)
                if v is None:
                    return False
                try:
                    return c(_number(v) if isinstance(t, Decimal) or isinstance(t, (int, float)) else v, t)
                except (TypeError, ArithmeticError):  # e.g. NaN (decimal.InvalidOperation): no match
                    return False
            checks.append(check)
    return lambda e: all(c(e) for c in checks)


class Filter:
    """Keep (or with ``drop: true``, drop) the events that match every ``where`` entry.

    ``where`` keys are ``op``, ``table`` or a column name; a value is a literal, a
    list (any of), or operators: eq, ne, in, not_in, gt, gte, lt, lte, null, changed.
    """

    def __init__(self, where: dict[str, Any], drop: bool = False) -> None:
        self.checks = [_condition(field, spec, "where") for field, spec in where.items()]
        self.drop = drop

    def __call__(self, event: ChangeEvent) -> ChangeEvent | None:
        matched = all(check(event) for check in self.checks)
        return event if matched != self.drop else None


def _map_rows(event: ChangeEvent, fn: Callable[[dict], dict]) -> ChangeEvent:
    return event.replace(before=None if event.before is None else fn(event.before),
                         after=None if event.after is None else fn(event.after))


def _json_null(changed: ChangeEvent, names: Callable[[list], list]) -> ChangeEvent:
    """``source.json_null`` (the columns of ``after`` holding JSON null) of a changed copy,
    passed through ``names``; the source block is replaced, never changed in place."""
    listed = changed.source.get("json_null")
    if not listed:
        return changed
    kept = names(listed)
    source = {k: v for k, v in changed.source.items() if k != "json_null"}
    if kept:
        source["json_null"] = kept
    changed.source = source
    return changed


class Select:
    """Keep only ``fields`` in ``before`` and ``after`` (the key is kept whole)."""

    def __init__(self, fields: list[str]) -> None:
        self.fields = tuple(fields)

    def __call__(self, event: ChangeEvent) -> ChangeEvent:
        fields = self.fields
        changed = _map_rows(event, lambda row: {f: row[f] for f in fields if f in row})
        return _json_null(changed, lambda names: [n for n in names if n in fields])


class Rename:
    """Rename columns in ``before``, ``after`` and ``key``: ``fields: {old: new}``."""

    def __init__(self, fields: dict[str, str]) -> None:
        self.mapping = dict(fields)

    def _rename(self, row: dict) -> dict:
        m = self.mapping
        return {m.get(k, k): v for k, v in row.items()}

    def __call__(self, event: ChangeEvent) -> ChangeEvent:
        changed = _map_rows(event, self._rename)
        if event.key is not None:
            changed.key = self._rename(event.key)
        return _json_null(changed, lambda names: [self.mapping.get(n, n) for n in names])


class Mask:
    """Hide column values: ``hash`` (SHA-256 hex of salt + value, so equal values
    still join) or ``redact`` (the value becomes null)."""

    def __init__(self, fields: list[str], method: Literal["hash", "redact"] = "hash",
                 salt: str = "") -> None:
        self.fields = frozenset(fields)
        self.method = method
        self.salt = salt.encode()

    def _value(self, v: Any) -> Any:
        if self.method == "redact" or v is None:
            return None
        return hashlib.sha256(self.salt + str(v).encode()).hexdigest()

    def _mask(self, row: dict) -> dict:
        f = self.fields
        return {k: (self._value(v) if k in f else v) for k, v in row.items()}

    def __call__(self, event: ChangeEvent) -> ChangeEvent:
        changed = _map_rows(event, self._mask)
        if event.key is not None and self.fields & event.key.keys():
            changed.key = self._mask(event.key)
        return _json_null(changed, lambda names: [n for n in names if n not in self.fields])


class Route:
    """Set the event's destination (topic, queue, file) from a template such as
    ``{schema}.{table}``; fields: source, db, schema, table, op, destination."""

    def __init__(self, destination: str) -> None:
        self.template = Template(destination, "destination")
        problems = self.template.problems("destination")
        if problems:
            raise ConfigError(problems)

    def __call__(self, event: ChangeEvent) -> ChangeEvent:
        return event.replace(destination=self.template.render(event))


def takes_one_event(fn: Any) -> bool:
    """Can ``fn(event)`` be called?  (Builtins without a signature are given the benefit of the doubt.)"""
    try:
        inspect.signature(fn).bind(None)
    except TypeError:
        return False
    except ValueError:
        return True
    return True


class Python:
    """A plugin function ``module:function``; with ``options`` the function is a
    factory called once as ``function(**options)`` that returns the transform."""

    def __init__(self, function: str, options: dict[str, Any] | None = None,
                 context: Context | None = None) -> None:
        search = str(context.config_dir) if context else None
        try:
            fn = import_ref(function, search)
        except PluginNotFound as exc:
            raise ConfigError([ConfigProblem("function", str(exc))]) from None
        self.fn = fn(**options) if options is not None else fn
        if not callable(self.fn):
            raise ConfigError([ConfigProblem("function", f"{function} is not callable")])
        if not takes_one_event(self.fn):
            raise ConfigError([ConfigProblem("function", f"{function} cannot be called with one event "
                                                         f"(a transform is fn(event); a factory needs options:)")])
        self.name = function

    def __call__(self, event: ChangeEvent) -> Any:
        return self.fn(event)
