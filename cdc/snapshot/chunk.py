"""One chunk of a table read by a source's snapshot reader, and the ``op: "r"`` events
built from it."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

from ..errors import PermanentError, SourceConnectionError, SourceError
from ..event import ChangeEvent
from ..lsn import format_lsn

__all__ = ["Chunk", "SnapshotInputError", "TableLocked", "CopyRefused", "copy_again", "MODES", "emit_events", "place",
           "key_changed", "no_key_warning"]

#: ``snapshot:`` modes, with Debezium's meanings
MODES = ("initial", "never", "initial_only", "when_needed")


class SnapshotInputError(SourceError, PermanentError):
    """A snapshot that cannot run as asked (no primary key, a bad ``where``): the
    snapshot is dropped, the pipeline goes on streaming."""


def copy_again(source: str, table: str, where: str | None = None) -> str:
    """The command that copies ``table`` again (a dropped or refused copy's way back)."""
    command = f"cdc snapshot CONFIG --source {source} --table {table}"
    return f"{command} --where {shlex.quote(where)}" if where else command


class TableLocked(SourceConnectionError):
    """A chunk waited its lock timeout for a lock another session holds on the table (a
    migration): that table's copy tries again later; the other tables' copies go on."""


class CopyRefused(SnapshotInputError):
    """The server refused the copy's connection for a reason that does not pass by itself."""

    def __init__(self, detail: str, source: str) -> None:
        self.detail = detail
        super().__init__(detail, source=source)

    def dropped(self, table: str, after: list | None, where: str | None) -> SnapshotInputError:
        """The copy of ``table`` is dropped: what was not copied, and the command that copies it later."""
        again = copy_again(self.source or "", table, where)
        rows = (f"its rows after key {after} are not copied (those before were)" if after is not None
                else "its rows are not copied")
        return SnapshotInputError(f"{self.detail}; {rows}, its changes are still streamed; once the server "
                                  f"accepts the connection, copy it again: {again}", source=self.source)


@dataclass
class Chunk:
    """Rows of ``table`` with keys after ``after``, read in one snapshot.

    ``rows`` are ``(key tuple, prepared op r event)`` in key order (``emit_events``);
    ``last_key`` is the key of the last row read (the next chunk starts after it);
    ``done`` is True when the table has no rows after this chunk; ``watermark`` is the
    reader's opaque description of the snapshot the rows were read in; ``json_null``:
    key tuple -> the json columns of that row holding JSON ``null`` (not SQL NULL), for
    rows that have any; ``nbytes``: the bytes the rows came in.  A chunk cut at
    ``read_chunk``'s ``max_bytes`` ends at its last row and is not ``done``."""

    table: str
    rows: list[tuple[tuple, ChangeEvent]]
    last_key: list | None
    done: bool
    watermark: Any
    key_columns: list[str] = field(default_factory=list)
    first_index: int = 0   # rows of this copy emitted before this chunk (set when emitted)
    copy_uid: str = ""     # the copy's identity, saved in the checkpoint (set when emitted)
    json_null: dict[tuple, list[str]] = field(default_factory=dict)
    nbytes: int = 0        # the bytes the rows came in (counted in ``max_in_flight_bytes``)


def key_changed(table: str, was: str, key: list[str], after: list, source: str) -> str:
    """The error of a copy whose table's primary key changed while it ran."""
    return (f"the primary key of {table} changed {was}to ({', '.join(key)}) while it was copied: its rows after"
            f" key {list(after)} are not copied (the copy goes in key order); copy the table again:"
            f" cdc snapshot CONFIG --source {source} --table {table}")


def no_key_warning(table: str) -> str:
    """``cdc check``'s warning for a captured table without a primary key (both sources)."""
    return (f"{table} has no primary key: its changes are captured, but a snapshot reads tables in key order, "
            f"so its existing rows are not copied (the initial copy and cdc snapshot --table drop it with an "
            f"ERROR). Add a primary key, or set snapshot: never on this source if only changes matter")


def emit_events(rows: list, copy_uid: str, place_prefix: str, first: int, base: dict, now: int,
                last: bool, json_null: dict | None = None) -> list[ChangeEvent]:
    """A chunk's ``op: "r"`` events, from its ``(key, prepared event)`` pairs (the reader
    set ``op``, ``before``, ``after``, ``key``, ``table``, ``destination``, ``message``, and
    ``id`` to a blake2b digest (96 bits, hex) of the row's values as read: stable across
    processes, unlike ``hash()``): id ``r-<copy uid>-<digest>``, one shared ``source``
    block, ``snapshot: "last"`` on a copy's last row, and ``position`` the row's place in
    the stream, ``place_prefix + n`` from ``first`` (``place``); ``json_null``
    (``Chunk.json_null``) in the source block of the rows it names.  Each event is emitted once."""
    out: list[ChangeEvent] = []
    append = out.append
    prefix = f"r-{copy_uid}-"
    for i, (_, e) in enumerate(rows, start=first):
        e.id = prefix + e.id; e.source = base; e.ts_ms = now; e.position = f"{place_prefix}{i}"  # noqa: E702
        append(e)
    if json_null:
        for key, e in rows:
            if key in json_null:
                e.source = dict(base, json_null=json_null[key])
    if last and out:
        out[-1].source = dict(out[-1].source, snapshot="last")
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
