"""One chunk of a table read by a source's snapshot reader, and the ``op: "r"`` events
built from it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import PermanentError, SourceError
from ..event import ChangeEvent
from ..lsn import format_lsn

__all__ = ["Chunk", "SnapshotInputError", "MODES", "read_events", "row_id", "place"]

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
    snapshot the rows were read in."""

    table: str
    rows: list[tuple[tuple, dict]]
    last_key: list | None
    done: bool
    watermark: Any
    key_columns: list[str] = field(default_factory=list)
    first_index: int = 0   # rows of this copy emitted before this chunk (set when emitted)
    copy_uid: str = ""     # the copy's identity, saved in the checkpoint (set when emitted)


def row_id(copy_uid: str, row: dict) -> str:
    """A snapshot row's id: the copy's identity and a hash of the row's values (stable
    across processes), so a row read again unchanged after a crash keeps its id."""
    return f"r-{copy_uid}-{hashlib.blake2b(orjson.dumps(row), digest_size=12).hexdigest()}"


def read_events(rows: list, place_prefix: str, first: int, key_names: list[str], base: dict, now: int,
                table: str, last: bool, copy_uid: str) -> list[ChangeEvent]:
    """The ``op: "r"`` events of a chunk's rows (``(key, row)`` pairs): ids by ``row_id``,
    one shared ``source`` block, ``snapshot: "last"`` on a copy's last row.  ``position``
    is the row's place in the stream, ``place_prefix + n`` from ``first`` (``place``)."""
    out = []
    new = ChangeEvent.__new__
    b2 = hashlib.blake2b
    dumps = orjson.dumps
    prefix = f"r-{copy_uid}-"
    for i, (key, row) in enumerate(rows, start=first):
        e = new(ChangeEvent)
        e.id = prefix + b2(dumps(row), digest_size=12).hexdigest(); e.op = "r"  # noqa: E702 - row_id inline
        e.before = None; e.after = row; e.key = dict(zip(key_names, key))  # noqa: E702
        e.source = base; e.ts_ms = now; e.table = table; e.position = f"{place_prefix}{i}"  # noqa: E702
        e.destination = None; e.message = None  # noqa: E702
        out.append(e)
    if last and out:
        out[-1].source = dict(base, snapshot="last")
    return out


def place(event: ChangeEvent) -> str:
    """Where a snapshot row stands among the stream's ids (PostgreSQL ``LSN:n``, MariaDB
    ``<GTID state>:s<n>``): what the database mirrors order it by.  An event rebuilt from
    its envelope (a dead letter) has lost its ``position``: the place of its chunk's first
    row, from ``source``."""
    if isinstance(event.position, str):
        return event.position
    src = event.source
    if src.get("connector") == "postgresql":
        return f"{format_lsn(src['lsn'])}:0"
    gtid = src.get("gtid")
    row = src.get("row", 0)
    return f"{gtid}:s{row}" if gtid else f"{src.get('file')}:{src.get('pos', 1) - 1}:s{row}"
