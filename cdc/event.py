"""The one event type that every source, transform and sink uses.

A ``ChangeEvent`` is one committed row change, shaped like Debezium's envelope::

    {"id": "0/1A2B3C8:0", "op": "u",
     "before": {"id": 7, "status": "new"}, "after": {"id": 7, "status": "paid"},
     "key": {"id": 7},
     "source": {"connector": "postgresql", "name": "shop", "db": "shop",
                "schema": "public", "table": "orders", "lsn": 27405256,
                "txId": 771, "ts_ms": 1764091000123},
     "ts_ms": 1764091000456}

- ``op``: ``c`` insert, ``u`` update, ``d`` delete, ``t`` truncate, ``m`` logical message,
  ``r`` a row read by a snapshot (``docs/snapshots.md``).
- ``id``: stable across redelivery (derived from the log position), so consumers can
  deduplicate.  ``key``: the primary-key (replica identity) columns.
- Column values are already JSON values (see the README's type table): integers are
  ``int``, numeric is an exact ``str``, timestamps are ISO 8601 ``str``, json is nested.
  A json column holding the JSON value ``null`` is None, as SQL NULL is; ``source``
  then has ``json_null``: the list of such columns of ``after`` (absent when none).

Events are treated as immutable: a transform that changes one returns
``event.replace(...)``, because the same event object is shared by every pipeline
on the source.
"""

from __future__ import annotations

from typing import Any

import orjson

from .lsn import format_lsn

__all__ = ["ChangeEvent", "Commit", "UNAVAILABLE"]

#: Placeholder for a value the log does not carry (PostgreSQL's unchanged TOAST).
UNAVAILABLE = "__cdc_unavailable_value"

_dumps = orjson.dumps
_NEWLINE = orjson.OPT_APPEND_NEWLINE


class ChangeEvent:
    """One row change.  ``table`` is ``schema.table``; ``destination`` is set by ``route``."""

    __slots__ = ("id", "op", "before", "after", "key", "source", "ts_ms",
                 "table", "position", "destination", "message")

    def __init__(self, id: str, op: str, before: dict | None, after: dict | None,
                 key: dict | None, source: dict, ts_ms: int, table: str,
                 position: Any = None, destination: str | None = None,
                 message: dict | None = None) -> None:
        self.id = id
        self.op = op
        self.before = before
        self.after = after
        self.key = key
        self.source = source
        self.ts_ms = ts_ms
        self.table = table
        self.position = position
        self.destination = destination
        self.message = message

    @property
    def schema(self) -> str:
        return self.source.get("schema") or self.source.get("db", "")

    @property
    def row(self) -> dict | None:
        """The row as it is now: ``after``, or ``before`` for a delete."""
        return self.after if self.after is not None else self.before

    def replace(self, **changes: Any) -> ChangeEvent:
        """A copy with some attributes changed; the original is left as it was."""
        new = ChangeEvent.__new__(ChangeEvent)
        for name in ChangeEvent.__slots__:
            setattr(new, name, changes.pop(name) if name in changes else getattr(self, name))
        if changes:
            raise TypeError(f"ChangeEvent has no field(s) {sorted(changes)}")
        return new

    def to_dict(self) -> dict[str, Any]:
        """The JSON envelope as a dict (``destination``/``position`` are internal)."""
        d = {"id": self.id, "op": self.op, "before": self.before, "after": self.after,
             "key": self.key, "source": self.source, "ts_ms": self.ts_ms}
        if self.message is not None:
            d["message"] = self.message
        return d

    def to_json(self) -> bytes:
        """The envelope as compact UTF-8 JSON."""
        if self.message is None:
            return _dumps({"id": self.id, "op": self.op, "before": self.before,
                           "after": self.after, "key": self.key, "source": self.source,
                           "ts_ms": self.ts_ms})
        return _dumps(self.to_dict())

    def to_json_line(self) -> bytes:
        """``to_json()`` followed by ``\n``, in one buffer (JSON Lines without a join)."""
        if self.message is None:
            return _dumps({"id": self.id, "op": self.op, "before": self.before,
                           "after": self.after, "key": self.key, "source": self.source,
                           "ts_ms": self.ts_ms}, option=_NEWLINE)
        return _dumps(self.to_dict(), option=_NEWLINE)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, position: Any = None) -> ChangeEvent:
        """Rebuild an event from its envelope (dead letters, replays, tests)."""
        src = d.get("source") or {}
        schema = src.get("schema") or src.get("db") or ""
        table = f"{schema}.{src.get('table', '')}" if schema else src.get("table", "")
        return cls(d["id"], d["op"], d.get("before"), d.get("after"), d.get("key"),
                   src, d.get("ts_ms", 0), table, position, None, d.get("message"))

    def position_text(self) -> str:
        """The log position for messages (a PostgreSQL LSN as ``0/16B3748``)."""
        p = self.position if self.position is not None else self.source.get("lsn", self.source.get("pos"))
        if isinstance(p, int) and self.source.get("connector") == "postgresql":
            return format_lsn(p)
        return "?" if p is None else str(p)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ChangeEvent):
            return NotImplemented
        return self.to_dict() == other.to_dict() and self.destination == other.destination

    def __repr__(self) -> str:
        return f"<ChangeEvent {self.id} {self.op} {self.table}>"


class Commit:
    """A transaction boundary in the source stream: a position safe to resume from.

    ``position`` is the source's JSON-able checkpoint (e.g. ``{"lsn": "0/1A2B3C8"}``).
    """

    __slots__ = ("position", "ts_ms")

    def __init__(self, position: dict, ts_ms: int = 0) -> None:
        self.position = position
        self.ts_ms = ts_ms

    def __repr__(self) -> str:
        return f"<Commit {self.position}>"
