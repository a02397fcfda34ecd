"""The interfaces of cdc's parts, as ``typing.Protocol``s.

The data flows one way::

    Source.poll() -> ChangeEvent / Commit -> Transform(...) -> Sink.write(batch)
                                                                   | acknowledged
    Source.confirm(position) <- CheckpointStore.save(position) <---+

A new sink is one class with ``open``, ``write`` and ``close``; its ``__init__``
keyword arguments are its YAML options (``cdc.config`` validates them from the
signature and the annotations).  ``write`` runs on the sink's own thread; when it
returns, the batch counts as durably delivered.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Protocol, Union, runtime_checkable

from .event import ChangeEvent, Commit

if TYPE_CHECKING:
    from .snapshot.chunk import Chunk

__all__ = ["Source", "Sink", "CheckpointStore", "Transform", "TransformResult", "Commit",
           "Snapshottable", "SnapshotReader"]

TransformResult = Union[ChangeEvent, None, Iterable[ChangeEvent]]


@runtime_checkable
class Transform(Protocol):
    """A plain callable: return the event (changed or not), ``None`` to drop it, or
    several events.  Never mutate the argument: return ``event.replace(...)``."""

    def __call__(self, event: ChangeEvent) -> TransformResult: ...


@runtime_checkable
class Sink(Protocol):
    def open(self) -> None:
        """Connect.  Raise ``TransientSinkError`` if the destination is down."""

    def write(self, events: Sequence[ChangeEvent]) -> None:
        """Deliver ``events`` in order and return once the destination has durably
        accepted all of them.  Raise ``TransientSinkError`` (retry) or
        ``PermanentSinkError`` (the error policy decides)."""

    def close(self) -> None:
        """Flush and disconnect."""


@runtime_checkable
class Source(Protocol):
    name: str

    def open(self, position: dict | None) -> None:
        """Connect and start reading after ``position`` (None: from now on)."""

    def poll(self, timeout: float) -> list[ChangeEvent | Commit]:
        """Committed changes in commit order, each transaction closed by a ``Commit``.
        Returns an empty list when nothing arrived within ``timeout`` seconds."""

    def keepalive(self) -> None:
        """Keep the connection alive while the pipeline applies back-pressure."""

    def confirm(self, position: dict) -> None:
        """Tell the server everything up to ``position`` is safely stored."""

    def close(self) -> None: ...


@runtime_checkable
class SnapshotReader(Protocol):
    """Reads a source's tables chunk by chunk for snapshots (see ``docs/snapshots.md``).
    Used by the runner's thread only, on its own connection (not the stream's)."""

    def read_chunk(self, table: str, after: list | None, limit: int, where: str | None) -> Chunk | None:
        """Up to ``limit`` rows of ``table`` with keys after ``after`` (None: from the start),
        in key order, read in a new snapshot, with that snapshot's watermark.  None when
        the snapshot cannot be used yet (try again a moment later).  Raises
        ``SnapshotInputError`` for a table without a primary key or a bad ``where``."""

    def newer(self, event: ChangeEvent, watermark: object) -> bool:
        """Is this streamed change of a chunk's table newer than the chunk's snapshot?"""

    def note(self, event: ChangeEvent) -> None:
        """A change of a table being copied was handed on (PostgreSQL remembers its xid)."""

    def reached(self, position: dict, watermark: object) -> bool:
        """Has the stream, at transaction boundary ``position``, passed every change
        that the chunk's snapshot includes?"""

    def events(self, chunk: Chunk, rows: list[tuple[tuple, dict]], position: dict,
               last: bool) -> list[ChangeEvent]:
        """The ``op: "r"`` events of ``rows``, placed just after ``position``; ``last``
        marks the last row of the table (``source.snapshot: "last"``)."""

    def estimate(self, table: str) -> int | None:
        """The table's approximate row count (for progress), or None."""

    def check_where(self, table: str, where: str) -> None:
        """Raise ``SnapshotInputError`` when ``where`` is not a valid condition on ``table``,
        or the table cannot be copied (no primary key)."""

    def close(self) -> None: ...


@runtime_checkable
class Snapshottable(Protocol):
    """A source that can copy its existing rows.  Its ``snapshot*`` constructor options
    are the YAML options (``snapshot: initial | never | initial_only | when_needed``,
    ``snapshot_chunk_size``, ``snapshot_parallelism``: chunks open at once)."""

    snapshot: str
    snapshot_chunk_size: int
    snapshot_parallelism: int

    def snapshot_reader(self) -> SnapshotReader:
        """A new reader on its own connection."""

    def snapshot_position(self) -> dict | None:
        """The position of the last transaction boundary ``poll`` handed on (or opened at)."""


@runtime_checkable
class CheckpointStore(Protocol):
    def load(self) -> dict | None:
        """The last saved position, or None when there is none."""

    def save(self, position: dict) -> None:
        """Store ``position`` durably before returning."""

    def reset(self) -> None:
        """Forget the stored position."""

    def close(self) -> None: ...

