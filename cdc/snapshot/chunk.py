"""One chunk of a table read by a source's snapshot reader."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import PermanentError, SourceError
from ..event import ChangeEvent

__all__ = ["Chunk", "SnapshotInputError", "MODES", "read_events"]

#: ``snapshot:`` modes, with Debezium's meanings
MODES = ("initial", "never", "initial_only", "when_needed")


class SnapshotInputError(SourceError, PermanentError):
    """A snapshot that cannot run as asked (no primary key, a bad ``where``): the
    snapshot is dropped, the pipeline goes on streaming."""


@dataclass
class Chunk:
    """Rows of ``table`` with keys after ``after``, read in one snapshot.

    ``rows`` are ``(key tuple, row dict)`` in key order; ``last_key`` is the key of the
    last row read (the next chunk starts after it); ``done`` is True when the table has
    no rows after this chunk; ``watermark`` is the reader's opaque description of the
    snapshot the rows were read in; ``json_null``: key tuple -> the json columns of that
    row holding JSON ``null`` (not SQL NULL), for rows that have any."""

    table: str
    rows: list[tuple[tuple, dict]]
    last_key: list | None
    done: bool
    watermark: Any
    key_columns: list[str] = field(default_factory=list)
    first_index: int = 0   # rows of this copy emitted before this chunk (set when emitted)
    json_null: dict[tuple, list[str]] = field(default_factory=dict)


def read_events(rows: list, prefix: str, first: int, key_names: list[str], base: dict, now: int,
                table: str, position: Any, last: bool, json_null: dict | None = None) -> list[ChangeEvent]:
    """The ``op: "r"`` events of a chunk's rows (``(key, row)`` pairs): ids ``prefix + n``
    from ``first``, one shared ``source`` block, ``snapshot: "last"`` on a copy's last row,
    ``json_null`` (``Chunk.json_null``) in the source block of the rows it names."""
    out = []
    new = ChangeEvent.__new__
    for i, (key, row) in enumerate(rows, start=first):
        e = new(ChangeEvent)
        e.id = f"{prefix}{i}"; e.op = "r"; e.before = None; e.after = row  # noqa: E702
        e.key = dict(zip(key_names, key)); e.source = base; e.ts_ms = now  # noqa: E702
        e.table = table; e.position = position; e.destination = None; e.message = None  # noqa: E702
        out.append(e)
    if json_null:
        for e, (key, _) in zip(out, rows):
            if key in json_null:
                e.source = dict(base, json_null=json_null[key])
    if last and out:
        out[-1].source = dict(out[-1].source, snapshot="last")
    return out
