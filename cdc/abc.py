"""The interfaces of cdc's parts, as ``typing.Protocol``s.

The data flows one way::

    Source.poll() -> ChangeEvent / Commit -> Transform(...) -> Sink.write(batch)
                                                                   | acknowledged
    Source.confirm(position) <- CheckpointStore.save(position) <---+

A new sink is one class with ``open``, ``write`` and ``close``; its ``__init__``
keyword arguments are its YAML options (``cdc.config`` validates them from the
signature and the annotations).  ``write`` runs on the sink's own thread; when it
returns, the batch counts as durably delivered.

Optional capabilities are the smaller Protocols below.  cdc asks for them with
``isinstance(obj, Capability)``, never by probing attribute names:

=====================  ==========================  ===============================================
capability             implemented by              used by
=====================  ==========================  ===============================================
``Checkable``          a sink                      ``cdc check``: a probe instead of open/close
``DefaultBatchSize``   a sink class                the config: ``batch_size`` when none is given
``ReportsSkipped``     a sink (database mirrors)   ``cdc dlq replay``: entries superseded
``ReportsReadiness``   a sink (brokers)            ``/readyz``: down between deliveries
``KeepsAlive``         a sink (RabbitMQ)           AMQP heartbeats served while idle
``Pipelined``          a sink (Kafka, RabbitMQ,    the worker: several batches in flight
                       PostgreSQL mirror)
``Preflight``          a source                    ``cdc check``: settings, rights, retention
``Describable``        a source                    ``cdc status``, metrics: slot lag, retained WAL
``TableNaming``        a source class              the config: ``orders`` -> ``public.orders``
``CountsBytes``        a source                    the engine: ``max_in_flight_bytes``
``SlotOwner``          a source                    ``cdc checkpoint reset --drop-slot``
``PositionCheck``      a source                    ``cdc checkpoint set``: refuse a bad position
``ReadersSeen``        a source                    ``cdc checkpoint set|reset``: refuse while it runs elsewhere
``Timestamped``        a checkpoint store          ``cdc status``, ``cdc check``: checkpoint age
``RecordsDatabase``    a checkpoint store          refuse a position saved reading another database
``DeadLetterStore``    a dead-letter queue         ``cdc dlq list|replay``
``Countable``          a dead-letter sink          ``cdc status``: dead letters held
``WritesTables``       a sink (database mirrors)   ``cdc validate|check|run``: two sinks, one table;
                                                   ``cdc check``: the target tables exist, with a key
``Snapshottable``      a source                    the engine: copy existing rows (``docs/snapshots.md``)
``ReadsByBytes``       a snapshot reader           the copy: chunks bounded by ``max_in_flight_bytes``
``StartsOver``         a source                    the engine: ``snapshot: when_needed`` after a lost position
``Interruptible``      a source                    the engine: a stop ends a set-up that waits (``SetUpInterrupted``)
=====================  ==========================  ===============================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .event import ChangeEvent, Commit

if TYPE_CHECKING:
    from .deadletter.record import DeadLetter
    from .snapshot.chunk import Chunk

__all__ = ["Source", "Sink", "CheckpointStore", "Transform", "TransformResult", "Commit",
           "Checkable", "DefaultBatchSize", "Pipelined",
           "ReportsSkipped", "ReportsReadiness", "KeepsAlive", "Preflight", "Describable", "TableNaming",
           "CountsBytes", "SlotOwner", "PositionCheck", "ReadersSeen", "Timestamped", "DeadLetterStore", "Countable", "Problem",
           "RecordsDatabase", "Snapshottable", "SnapshotReader", "ReadsByBytes", "StartsOver", "WritesTables",
           "Interruptible"]

TransformResult = ChangeEvent | None | Iterable[ChangeEvent]


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
        """Keep the connection alive while the pipeline applies back-pressure or the
        main thread is busy (a slow transform).  Raise ``SourceConnectionError`` when
        the connection is known to be lost.  The engine's guard thread may call it
        while the main thread is elsewhere than in ``poll``/``confirm``; it must be safe
        for that (or do nothing)."""

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

    def events(self, chunk: Chunk, rows: list[tuple[tuple, ChangeEvent]], position: dict,
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
class ReadsByBytes(Protocol):
    """A snapshot reader that bounds its chunks in bytes: its ``read_chunk`` also takes
    ``max_bytes`` (rows past it are not kept: the chunk ends at the last row kept, at least
    one, and is not ``done``) and sets ``Chunk.nbytes``, the bytes of the rows kept."""

    def read_chunk(self, table: str, after: list | None, limit: int, where: str | None,
                   max_bytes: int | None = None) -> Chunk | None: ...

    def row_bytes(self, table: str) -> float | None:
        """The table's bytes per row by the server's statistics (sizes the first chunk), or None."""


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
class StartsOver(Protocol):
    """A source that can start again as on a first run when its saved position is lost
    (``open`` raised ``PositionLostError``): with ``snapshot: when_needed`` the runner
    then copies every table again (``docs/snapshots.md``)."""

    def start_over(self) -> None:
        """Forget every position read or saved, so that the next ``open(None)`` starts at
        the log's current end (PostgreSQL: creating the replication slot again)."""


@runtime_checkable
class Interruptible(Protocol):
    """A source whose ``open()`` can wait on other sessions (PostgreSQL: creating the slot
    waits for the transactions running at that moment)."""

    def interrupt(self) -> None:
        """A stop was asked for (from another thread or a signal handler): end what ``open()``
        waits for; it then raises ``SetUpInterrupted``."""


@runtime_checkable
class CheckpointStore(Protocol):
    def load(self) -> dict | None:
        """The last saved position, or None when there is none."""

    def save(self, position: dict) -> None:
        """Store ``position`` durably before returning."""

    def reset(self) -> None:
        """Forget the stored position."""

    def close(self) -> None: ...



# ---- optional capabilities ------------------------------------------------------------

#: A pre-flight finding: ``(level, message)`` with level ``"error"`` (blocks a run) or ``"warning"``.
Problem = tuple[str, str]


@runtime_checkable
class Checkable(Protocol):
    """A sink that can tell whether its destination is reachable and usable without
    the cost or side effects of ``open()``."""

    def check(self) -> None:
        """Return if ready; raise with a message that says what is wrong otherwise."""


@runtime_checkable
class DefaultBatchSize(Protocol):
    """A sink class whose best batch size is not 1000 (a class attribute)."""

    default_batch_size: int


@runtime_checkable
class Pipelined(Protocol):
    """A sink that keeps several batches in flight (a broker that acknowledges
    asynchronously), the asynchronous form of ``Sink.write``.

    The worker (``cdc/engine/worker.py``) calls ``send`` for each batch, up to the
    sink spec's ``max_batches_in_flight`` before the oldest is confirmed, and ``wait``
    for the oldest batch only; it acknowledges to the ``AckTracker`` strictly in the
    order of ``send``.  ``write`` stays, and must mean ``wait(send(events), ...)``:
    the worker uses it to deliver again after a failure, one batch at a time.

    - ``send(events)`` starts delivering ``events`` after everything sent before and
      returns a handle at once (it may block while a local buffer is full).  It
      raises as ``write`` does for what it finds before sending (an illegal topic).
    - ``wait(handle, timeout)`` returns True once this batch, and every batch sent
      before it, is durably accepted; False when that is still unknown after
      ``timeout`` seconds.  It raises ``TransientSinkError`` or ``PermanentSinkError``
      when the batch failed (a sink must also fail, rather than wait for ever, a batch
      without an outcome after its own delivery timeout).

    After any failure the worker sends nothing new: it delivers the failed batch and
    every later batch in flight again, in order, with ``write`` (the retry policy
    applies), so per-key order holds across the retry.  Batches sent again may
    already have been delivered: consumers deduplicate on the event id.
    """

    def send(self, events: Sequence[ChangeEvent]) -> object: ...

    def wait(self, handle: object, timeout: float) -> bool: ...


@runtime_checkable
class ReportsSkipped(Protocol):
    """A sink that may skip events it already applied (a database mirror's exactly-once
    position); after each ``write``, the ids it skipped."""

    skipped: list[str]


@runtime_checkable
class ReportsReadiness(Protocol):
    """A sink that knows its destination is unusable before a delivery fails (a broker
    connection state), so ``/readyz`` turns 503 while nothing is being sent."""

    def not_ready(self) -> str | None:
        """Why the sink cannot deliver now, or None when it can."""


@runtime_checkable
class KeepsAlive(Protocol):
    """A sink whose connection needs traffic while idle (AMQP heartbeats, a PING): its
    worker calls ``keepalive()`` every 2 s when it has nothing to write."""

    def keepalive(self) -> None:
        """Serve the connection's heartbeats and notice a lost connection (``not_ready``);
        an error raised here is logged at debug level and shows again at the next write."""


@runtime_checkable
class Preflight(Protocol):
    """A source that can check its server before a run (``cdc check``)."""

    def preflight(self, position: dict | None, checkpoint_age: float | None) -> list[Problem]:
        """Every problem, each with its fix; empty when ready."""


@runtime_checkable
class Describable(Protocol):
    """A source that reports server-side figures (slot lag, retained log) as a flat dict."""

    def describe(self) -> dict[str, Any]: ...


@runtime_checkable
class TableNaming(Protocol):
    """A source class that completes table names written in the config."""

    @staticmethod
    def qualify_table(name: str, options: dict) -> str: ...


@runtime_checkable
class CountsBytes(Protocol):
    """A source that counts the bytes of change log it has read (for ``max_in_flight_bytes``)."""

    bytes_read: int


@runtime_checkable
class SlotOwner(Protocol):
    """A source that holds a server-side replication slot."""

    slot: str

    def drop_slot(self) -> bool:
        """Drop the slot; False when there was none.  Raise if it is in use."""


@runtime_checkable
class ReadersSeen(Protocol):
    """A source whose server shows who reads its log now: a ``cdc run`` of it that the
    local lock cannot see (another machine sharing the checkpoint store)."""

    def reader_elsewhere(self, say: Callable[[str], None]) -> str | None:
        """What reads the source's log on the server now, in words for the operator, or
        None (nobody, or the server cannot be asked).  ``say``: progress while it waits."""


@runtime_checkable
class PositionCheck(Protocol):
    """A source that can tell whether a position an operator typed can be resumed from."""

    def check_position(self, position: dict) -> None:
        """Return if the server can resume at ``position``; raise ``ValueError`` saying why
        not (malformed, ahead of the server, or behind what the server still holds)."""


@runtime_checkable
class Timestamped(Protocol):
    """A checkpoint store that knows when it last saved."""

    def saved_at(self) -> float | None:
        """Seconds since the epoch of the last save, or None."""


@runtime_checkable
class WritesTables(Protocol):
    """A sink that writes each source table into a table of a database (the mirrors).  Two
    such sinks writing one table are not ordered against each other: the config warns."""

    def target_of(self, table: str) -> str:
        """Where the rows of source table ``table`` go: ``table NAME of HOST:PORT/DATABASE``."""

    def check_tables(self, tables: list[str]) -> list[Problem]:
        """``cdc check``: the problems of writing these source tables (a target table missing,
        or without a primary key or unique index to write on)."""


@runtime_checkable
class RecordsDatabase(Protocol):
    """A checkpoint store that saves which database its positions were read from, and
    refuses to load one saved reading another (resuming there would skip changes)."""

    def bind_database(self, database: str) -> None:
        """The database this source reads (e.g. PostgreSQL's database name)."""


@runtime_checkable
class DeadLetterStore(Protocol):
    """The read side of a dead-letter queue, for ``cdc dlq list`` and ``replay``."""

    def list(self) -> list[DeadLetter]: ...

    def remove(self, entry_id: str) -> None: ...


@runtime_checkable
class Countable(Protocol):
    """A dead-letter sink that can say how many events it holds."""

    def count(self) -> int: ...
