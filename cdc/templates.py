"""Destination templates such as ``{source}.{schema}.{table}``.

Fields: ``source`` (the source's name in the config), ``db``, ``schema``, ``table``,
``op``, ``destination`` (set by the ``route`` transform) and ``message_type``.

Field values come from event data (an outbox's ``message_type`` is written by the
application), so they are data, never syntax: each sink gives its template an
``encode`` function for where the value lands (a path segment, a URL part) and a
``check`` of the whole result against what the destination accepts.  A value that
cannot be made safe raises ``UnsafeValue``; sinks turn it into a permanent error for
the event (the error policy decides), and nothing is written anywhere else.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from .errors import ConfigError, ConfigProblem
from .event import ChangeEvent

__all__ = ["Template", "FIELDS", "UnsafeValue", "path_segment", "url_part"]

FIELDS = ("source", "db", "schema", "table", "op", "destination", "message_type")


class UnsafeValue(ValueError):
    """A template field value that cannot be used where it would land."""


def path_segment(field: str, value: str) -> str:
    """A value inside one file-name segment: no ``/``, no ``..``, no NUL."""
    if "/" in value or ".." in value or "\0" in value or value == ".":
        raise UnsafeValue(f"{{{field}}} value {value!r} is not a safe file name"
                          " (no '/', '..' or NUL allowed)")
    return value


def url_part(field: str, value: str) -> str:
    """A value inside a URL path or query: percent-encoded; ``.`` and ``..`` refused
    (they are dot segments, which clients and servers resolve)."""
    if value in (".", ".."):
        raise UnsafeValue(f"{{{field}}} value {value!r} is a dot segment, not a URL part")
    return quote(value, safe="")


class Template:
    """A compiled template; ``render(event)`` is cached per table, op and values.

    ``encode(field, value)`` makes one field's value safe; ``check(text)`` validates
    the rendered result.  Either may raise ``UnsafeValue``.
    """

    __slots__ = ("text", "_fields", "_cache", "_encode", "_check")

    def __init__(self, text: str, option: str = "", encode: Callable[[str, str], str] | None = None,
                 check: Callable[[str], None] | None = None) -> None:
        """``option`` is the config key the text came from: an unknown field is a
        ``ConfigError`` naming it."""
        self.text = text
        try:
            self._fields = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
        except ValueError as exc:  # an unmatched { or }
            raise ConfigError([ConfigProblem(option, f"not a valid template ({exc}): write {{{{ for a literal {{")]) \
                from None
        self._cache: dict[Any, str] = {}
        problems = self.problems(option)
        if problems:
            raise ConfigError(problems)
        self._encode = encode
        self._check = check

    def problems(self, path: str) -> list[ConfigProblem]:
        bad = [f for f in self._fields if f not in FIELDS]
        return [ConfigProblem(path, f"unknown template field {{{f}}} (fields: {', '.join(FIELDS)})")
                for f in bad]

    @property
    def is_constant(self) -> bool:
        return not self._fields

    @property
    def prefix(self) -> str:
        """The constant text before the first field (all of it when there is none)."""
        for literal, field, _, _ in string.Formatter().parse(self.text):
            if field is not None:
                return literal if literal is not None else ""
        return self.text

    def render(self, event: ChangeEvent) -> str:
        if not self._fields:
            return self.text
        key = (event.table, event.op, event.destination, event.source.get("name"),
               (event.message or {}).get("type"))
        out = self._cache.get(key)
        if out is None:
            out = self.fill(self._values(event))
            if len(self._cache) < 10_000:
                self._cache[key] = out
        return out

    def fill(self, values: dict[str, str]) -> str:
        """The template filled with ``values`` (encoded and checked)."""
        encode = self._encode
        parts = {}
        for f in self._fields:
            value = values.get(f, "")
            value = "" if value is None else str(value)
            parts[f] = encode(f, value) if encode is not None else value
        out = self.text.format(**parts)
        if self._check is not None:
            self._check(out)
        return out

    @staticmethod
    def _values(event: ChangeEvent) -> dict[str, str]:
        src = event.source
        return {"source": src.get("name", ""), "db": src.get("db", ""),
                "schema": src.get("schema") or src.get("db", ""),
                "table": src.get("table", ""), "op": event.op,
                "destination": event.destination or "",
                "message_type": (event.message or {}).get("type", "")}
