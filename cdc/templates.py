"""Destination templates such as ``{source}.{schema}.{table}``.

Fields: ``source`` (the source's name in the config), ``db``, ``schema``, ``table``,
``op``, ``destination`` (set by the ``route`` transform) and ``message_type``.
"""

from __future__ import annotations

import string
from typing import Any

from .errors import ConfigError, ConfigProblem
from .event import ChangeEvent

__all__ = ["Template", "FIELDS"]

FIELDS = ("source", "db", "schema", "table", "op", "destination", "message_type")


class Template:
    """A compiled template; ``render(event)`` is cached per table and op."""

    __slots__ = ("text", "_fields", "_cache")

    def __init__(self, text: str, option: str = "") -> None:
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

    def problems(self, path: str) -> list[ConfigProblem]:
        bad = [f for f in self._fields if f not in FIELDS]
        return [ConfigProblem(path, f"unknown template field {{{f}}} (fields: {', '.join(FIELDS)})")
                for f in bad]

    @property
    def is_constant(self) -> bool:
        return not self._fields

    def render(self, event: ChangeEvent) -> str:
        if not self._fields:
            return self.text
        key = (event.table, event.op, event.destination, event.source.get("name"),
               (event.message or {}).get("type"))
        out = self._cache.get(key)
        if out is None:
            src = event.source
            values = {"source": src.get("name", ""), "db": src.get("db", ""),
                      "schema": src.get("schema") or src.get("db", ""),
                      "table": src.get("table", ""), "op": event.op,
                      "destination": event.destination or "",
                      "message_type": (event.message or {}).get("type", "")}
            out = self.text.format(**{f: values.get(f, "") for f in self._fields})
            if len(self._cache) < 10_000:
                self._cache[key] = out
        return out
