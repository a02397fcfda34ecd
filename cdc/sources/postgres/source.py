"""``type: postgres``: logical replication with the built-in pgoutput plugin."""

from __future__ import annotations

import base64
import logging
import re
import struct
import time
from typing import Literal, cast

import orjson
import psycopg
from psycopg.conninfo import conninfo_to_dict

from ...abc import Problem
from ...config.model import Context
from ...errors import CdcError, SetUpInterrupted, SourceConnectionError, SourceError, SourceSetupError
from ...event import ChangeEvent, Commit
from ...lsn import format_lsn, parse_lsn
from . import preflight, setup, slots
from .pgoutput import Decoder, decoder_kind
from .replication import ReplicationStream
from .side import SideConnection, SideError
from .snapshot import PostgresSnapshotReader

__all__ = ["PostgresSource", "HEARTBEAT_PREFIX"]

log = logging.getLogger("cdc.source.postgres")
HEARTBEAT_PREFIX = "cdc_heartbeat"
IDLE_CONFIRM_INTERVAL = 10.0  # seconds between positions taken from keepalives
TABLE_CHECK_INTERVAL = 5.0  # seconds between checks that the captured tables were not dropped
_i32 = struct.Struct(">i").unpack_from
new_event = ChangeEvent.__new__
_frame_head = struct.Struct(">iBQ").unpack_from  # frame length, CopyData kind, XLogData start
_type_relid = struct.Struct(">BI").unpack_from   # pgoutput message type, relation id
_keepalive = struct.Struct(">QqB").unpack_from


def _default_name(source: str, db: str) -> str:
    """``cdc_<db>_<source>``: slots are per cluster, so the database is part of the name."""
    return ("cdc_" + re.sub(r"[^a-z0-9_]", "_", f"{db}_{source}".lower()))[:63]


class PostgresSource:
    """Options: ``dsn``, ``tables`` (``schema.table``), ``slot`` and ``publication``
    (default ``cdc_<db>_<source>``; created when missing unless ``create: false``),
    ``heartbeat_interval`` (seconds, 0: off), ``messages`` (emit logical decoding
    messages as ``op: m`` events), and ``snapshot`` /
    ``snapshot_chunk_size`` / ``snapshot_parallelism`` (copying the existing rows:
    ``docs/snapshots.md``)."""

    def __init__(self, dsn: str, tables: list[str], slot: str | None = None,
                 publication: str | None = None, create: bool = True,
                 heartbeat_interval: float = 0.0, messages: bool = False,
                 max_poll_events: int = 1000,
                 snapshot: Literal["initial", "never", "initial_only", "when_needed"] = "initial",
                 snapshot_chunk_size: int = 10_000, snapshot_parallelism: int = 2,
                 context: Context | None = None) -> None:
        self.name = context.source if context else "postgres"
        self.snapshot = snapshot
        self.snapshot_chunk_size = snapshot_chunk_size
        self.snapshot_parallelism = snapshot_parallelism
        self.dsn = dsn
        self.tables = tables
        self.db = cast(str, conninfo_to_dict(dsn).get("dbname", ""))  # a DSN string parses to strings
        self.slot = slot or _default_name(self.name, self.db)
        self.publication = publication or _default_name(self.name, self.db)
        self.create = create
        self.heartbeat_interval = heartbeat_interval
        self.messages = messages
        self.max_poll_events = max_poll_events
        self.bytes_read = 0
        self.confirmed_lsn = 0
        self.stream: ReplicationStream | None = None
        self.decoder = Decoder()
        self._tx: tuple | None = None      # (final_lsn, ts_ms, xid, id prefix) while in a transaction
        self._index = 0                    # row changes seen in the current transaction
        self._skip: tuple[int, int] = (0, 0)
        self._last_idle_commit = 0.0
        self._last_position = 0
        # heartbeats and table checks, on one connection beside the stream (see side.py)
        self._side = SideConnection(dsn)
        self._last_heartbeat = 0.0
        self._started = False              # streamed before: the slot must not be re-created
        self._error: SourceError | None = None  # raised by the next poll (after what was read)
        self._oids: dict[int, str] = {}        # oid of a captured table -> its configured name
        self._partitions: dict[int, str] = {}  # oid of a partition -> its captured parent
        self._ignored: set[int] = set()        # relation ids of tables not in ``tables``
        self._gone: list[str] = []             # configured tables that did not exist at open()
        self._gone_until = 0                   # ... and the WAL position then
        self._recreated: set[str] = set()      # configured tables dropped and created again while read
        self._last_table_check = time.monotonic()
        self._opening: psycopg.Connection | None = None  # the set-up connection while open() runs
        self._interrupted = False                        # a stop was asked for (interrupt())
        self._base_types: dict[int, int] = {}  # user-defined type oid -> the oid its values convert as

    @staticmethod
    def qualify_table(name: str, options: dict) -> str:
        return name if "." in name else f"public.{name}"

    def preflight(self, position: dict | None, checkpoint_age: float | None) -> list[Problem]:
        return preflight.problems(self, position)

    def drop_slot(self) -> bool:
        return slots.drop(self.dsn, self.slot, self.name)

    def check_position(self, position: dict) -> None:
        slots.check_position(self.dsn, self.slot, self.name, position)

    def reader_elsewhere(self, say) -> str | None:
        """The slot in use on the server (``ReadersSeen``)."""
        try:
            active = self.describe().get("slot_active")
        except (CdcError, psycopg.Error):
            return None
        return (f"its replication slot {self.slot} is in use on the server (by a cdc run of this source, or "
                f"another replication client)") if active else None

    def describe(self) -> dict:
        """The slot's confirmed position and how many WAL bytes it is behind."""
        source = self
        with setup.connect(source.dsn, source.name) as conn:
            row = conn.execute(
                "SELECT confirmed_flush_lsn::text, active,"
                " pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,"
                " pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint"
                " FROM pg_replication_slots WHERE slot_name = %s", (source.slot,)).fetchone()
        if row is None:
            return {"slot": f"{source.slot} (missing)"}
        return {"slot": source.slot, "slot_confirmed_lsn": row[0], "slot_active": row[1],
                "lag_bytes": row[2], "slot_retained_bytes": row[3]}

    # ---- lifecycle -----------------------------------------------------------------

    def interrupt(self) -> None:
        """``Interruptible``: a stop was asked for; a set-up statement that waits (creating the
        slot waits for the transactions running now) is cancelled (the slot is not created)."""
        self._interrupted = True
        conn = self._opening
        if conn is not None:
            try:
                conn.cancel_safe(timeout=5.0)
            except Exception:  # gone meanwhile, or the server does not answer: open() ends on its own
                pass

    def open(self, position: dict | None) -> None:
        if position is not None:
            self._refuse_foreign_position(position)
        try:
            with setup.connect(self.dsn, self.name) as conn:
                self._opening = conn
                if self._interrupted:  # a stop asked for before the connection was there
                    raise SetUpInterrupted(f"stopped before the set-up of source {self.name}", source=self.name)
                # With a checkpoint (or after streaming once) the slot must exist: never
                # re-create it silently at the current position (what lies between is lost).
                self._gone = setup.prepare(conn, self.tables, self.publication, self.slot, self.name,
                                           self.create, position, dropped_while_reading=self._started,
                                           dsn=self.dsn)
                oids = setup.captured_oids(conn, self.tables)
                self._oids = {oid: table for table, oid in oids.items()}
                self._partitions = setup.partitions(conn, oids)
                self._ignored = set()
                self.decoder = Decoder(setup.primary_keys(conn, self.tables), key_lookup=self._primary_key,
                                       base_type=self._base_type)
                if self._gone:
                    current = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
                    assert current is not None  # one row
                    self._gone_until = parse_lsn(current[0])
                    log.warning("source %s: %s does not exist (renamed or dropped while cdc was stopped?): "
                                "reading what the WAL holds for it up to %s, then stopping", self.name,
                                ", ".join(self._gone), format_lsn(self._gone_until))
        except psycopg.errors.QueryCanceled as exc:
            if self._interrupted:  # by interrupt(): nothing set up past the statement cancelled
                raise SetUpInterrupted(f"the set-up of source {self.name} was stopped: {str(exc).strip()}",
                                       source=self.name) from None
            raise SourceConnectionError(f"set-up failed: {str(exc).strip()}", source=self.name) from exc
        except psycopg.OperationalError as exc:  # the connection broke during set-up
            raise SourceConnectionError(f"set-up failed: {str(exc).strip()}", source=self.name) from exc
        finally:
            self._opening = None
        self._error = None
        if self._tx is not None:  # reconnecting mid-transaction: skip what was emitted
            self._skip = (self._tx[0], self._index)
        self._tx = None
        start = parse_lsn(position["lsn"]) if position else 0
        self.confirmed_lsn = max(self.confirmed_lsn, start)
        self._last_position = max(self._last_position, start)
        options = {"proto_version": "1", "publication_names": self.publication}
        options["messages"] = "true"  # heartbeats, and snapshot watermarks (even with snapshot: never)
        self.stream = ReplicationStream(self.dsn)
        self.stream.start(self.slot, start, options)
        self._started = True
        log.info("source %s: streaming slot %s from %s (%s)", self.name, self.slot,
                 format_lsn(start) if start else "the slot's confirmed position (no checkpoint yet)",
                 decoder_kind())

    def start_over(self) -> None:
        """After a lost position (``snapshot: when_needed``): the next ``open(None)`` is a
        first run, which creates the slot when it is missing."""
        self._started = False
        self._tx, self._index, self._skip = None, 0, (0, 0)
        self.confirmed_lsn = self._last_position = 0

    def snapshot_reader(self) -> PostgresSnapshotReader:
        return PostgresSnapshotReader(self.dsn, self.name, self.db)

    def snapshot_position(self) -> dict | None:
        return {"lsn": format_lsn(self._last_position)} if self._last_position else None

    def _refuse_foreign_position(self, position) -> None:
        """A checkpoint that is not a PostgreSQL position (a typo, or another source's) is refused
        with the fix, not met with a traceback."""
        lsn = position.get("lsn") if isinstance(position, dict) else None
        if isinstance(lsn, str) and re.fullmatch(r"[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}", lsn):
            return
        raise SourceSetupError(f"the checkpoint {position!r} is not a PostgreSQL position (expected "
                               f'{{"lsn": "0/16B3748"}}); it may be another source\'s. Fix it with cdc checkpoint set, '
                               f"or start over with cdc checkpoint reset <config> --source {self.name}",
                               source=self.name)

    def close(self) -> None:
        if self.stream is not None:
            try:
                self.stream.send_status(self.confirmed_lsn)
            except SourceConnectionError:
                pass
            self.stream.close()
            self.stream = None
        self._side.close()

    def confirm(self, position: dict) -> None:
        self.confirmed_lsn = parse_lsn(position["lsn"])
        self._send_status()

    def keepalive(self) -> None:
        """Status updates and the silence watchdog (``ReplicationStream.keepalive``);
        the engine may call it from its guard thread while the main thread is busy."""
        stream = self.stream
        if stream is not None:
            stream.keepalive(self.confirmed_lsn)

    def _send_status(self) -> None:
        if self.stream is not None:
            self.stream.send_status(self.confirmed_lsn)

    # ---- reading -------------------------------------------------------------------

    def poll(self, timeout: float) -> list:
        if self._error is not None:
            raise self._error
        stream = self.stream
        received = stream.receive(timeout)
        if received is None:
            self._idle()
            return []
        buf, start = received
        tx, index = self._tx, self._index   # the open transaction, kept in locals while reading
        skip_final, skip_count = self._skip
        saved = (tx, index, self._skip, self._last_position)
        try:
            out, pos, lsn, tx, index, skip_final, skip_count = self._read_frames(
                buf, start, len(buf), tx, index, skip_final, skip_count, int(time.time() * 1000),
                self.max_poll_events, [])
        except BaseException as exc:
            # What this poll read is lost with the exception: forget it, so that the
            # skip after a reconnect counts only events that were handed on.
            self._tx, self._index, self._skip, self._last_position = saved
            if isinstance(exc, Exception) and not isinstance(exc, CdcError):  # malformed input, whatever it broke
                raise SourceError(f"cannot decode the replication stream after "
                                  f"{format_lsn(stream.received_lsn)}: {type(exc).__name__}: {exc}",
                                  source=self.name) from exc
            raise
        self._tx, self._index, self._skip = tx, index, (skip_final, skip_count)
        if self._gone and tx is None and self._last_position >= self._gone_until:
            self._tables_gone()
        stream.keep(buf, pos)
        self.bytes_read += pos - start
        if lsn:
            stream.received_lsn = lsn
        self._idle()
        return out

    def _read_frames(self, buf, pos, size, tx, index, skip_final, skip_count, now_ms, limit, out):
        """The hot loop of ``poll``: the CopyData frames of ``buf[pos:size]`` -> events and commits."""
        append = out.append
        relations = self.decoder.relations
        decoder = self.decoder
        bases: dict[int, dict] = {}  # relation id -> the source block of this transaction
        lsn = 0
        while pos + 5 <= size:
            try:  # frame length, CopyData kind, XLogData start LSN in one read
                length, kind, start_lsn = _frame_head(buf, pos + 1)
            except struct.error:  # a short frame at the end of the buffer
                length, kind, start_lsn = _i32(buf, pos + 1)[0], 0, 0
            if length < 4: raise struct.error(f"frame length {length} at byte {pos}")  # noqa: E701 - no silent skip, no hang
            end = pos + 1 + length
            if end > size or len(out) >= limit:
                break
            frame, pos = pos, end
            if buf[frame] != 100:  # not CopyData: an error, or the end of the stream
                self._not_copy_data(buf[frame:end])
                continue
            if kind == 119:  # 'w' XLogData: start lsn, end lsn, time, then the message
                lsn = start_lsn
                p = frame + 30  # the pgoutput message
                t, relid = _type_relid(buf, p)
                if t == 73 or t == 85 or t == 68:  # Insert, Update, Delete
                    i = index
                    index += 1
                    try:
                        rel = relations[relid]
                    except KeyError:
                        if relid in self._ignored:
                            continue  # not in tables: (e.g. removed from the config)
                        raise
                    if i < skip_count and tx[0] == skip_final:
                        continue  # emitted before a reconnect
                    if t == 73:
                        op, before = "c", None
                        after, key, q, json_null = rel.decode(buf, p + 6, None)
                    else:
                        before = None
                        q = p + 5
                        if buf[q] == 79:  # 'O': the old row (REPLICA IDENTITY FULL)
                            before, key, q, _ = rel.decode(buf, q + 1, None)
                        elif buf[q] == 75:  # 'K': the old key, when it changed
                            _, key, q, _ = rel.decode(buf, q + 1, None)
                            before = dict(key)
                        if t == 85:
                            op = "u"
                            after, key, q, json_null = rel.decode(buf, q + 1, before)
                        else:
                            op, after, json_null = "d", None, None
                    if q != end:  # the row must end where its message does: values are not read from the next
                        raise struct.error(f"a {chr(t)} message of {end - p} bytes whose row ends at byte {q - p}")
                    source = bases.get(relid)
                    if source is None:  # once per table and transaction; copies are cheaper
                        source = bases[relid] = self._source_block(rel.schema, rel.table, 0, tx[2], tx[1])
                    source = source.copy()
                    source["lsn"] = lsn
                    if json_null:  # columns of after holding JSON null, not SQL NULL
                        source["json_null"] = json_null
                    # ChangeEvent.__init__, inlined: slot stores without a call
                    e = new_event(ChangeEvent)
                    e.id = f"{tx[3]}{i}"; e.op = op; e.before = before; e.after = after  # noqa: E702
                    e.key = key; e.source = source; e.ts_ms = now_ms; e.table = rel.qualified  # noqa: E702
                    e.position = lsn; e.destination = None; e.message = None  # noqa: E702
                    append(e)
                    continue
                msg = buf[p:end]
                if t == 66:  # Begin
                    final_lsn, ts_ms, xid = decoder.begin(msg)
                    tx, index = (final_lsn, ts_ms, xid, f"{format_lsn(final_lsn)}:"), 0
                    bases = {}
                elif t == 67:  # Commit
                    _, end_lsn, ts_ms = decoder.commit(msg)
                    tx = None
                    skip_final = skip_count = 0
                    self._last_position = end_lsn
                    append(Commit({"lsn": format_lsn(end_lsn)}, ts_ms))
                elif t == 82:  # Relation
                    if self._relation(decoder.relation(msg), lsn):
                        pos = frame  # not consumed: the next poll raises self._error
                        break
                    bases = {}
                elif t == 89:  # Type
                    decoder.type(msg)
                else:  # Truncate, logical decoding message: rare, so via self
                    self._tx, self._index, self._skip = tx, index, (skip_final, skip_count)
                    if t == 84:
                        self._truncate(msg, lsn, now_ms, append)
                    elif t == 77:
                        self._message(msg, lsn, now_ms, append)
                    index = self._index
            elif kind == 107:  # 'k' keepalive: wal end, server time, reply requested
                self._keepalive_message(buf, frame + 6, append, in_tx=tx is not None)
        return out, pos, lsn, tx, index, skip_final, skip_count

    def _relation(self, rel, lsn: int) -> bool:
        """Per Relation message: name a partition's changes after its captured parent, ignore
        tables not in ``tables``, and stop (True) at a captured table renamed under us."""
        oid = rel.oid
        root = self._partitions.get(oid)
        if root is not None:
            rel.schema, rel.table = root.split(".", 1)
            rel.qualified = root
            return False
        known = self._oids.get(oid)
        if known is not None and known != rel.qualified:
            now = self._current_name(oid)
            if now == known:  # the WAL still names the table as it was before a rename to the configured name
                log.info("source %s: %s was named %s when these changes were made; they are reported as %s",
                         self.name, known, rel.qualified, known)
                rel.schema, rel.table = known.split(".", 1)
                rel.qualified = known
                return False
            new = now or rel.qualified
            self._error = SourceSetupError(
                f"table {known} was renamed to {new} (seen at {format_lsn(lsn)}); every change "
                f"before that was delivered. Put {new} in place of {known} in tables: of source "
                f"{self.name} (and in pipelines' tables: and transforms that name it), then start cdc "
                f"again", source=self.name)
            return True
        if known is None:
            if rel.qualified not in self.tables:
                del self.decoder.relations[oid]
                self._ignored.add(oid)
                return False
            self._oids[oid] = rel.qualified  # e.g. a table re-created, or gone at open()
        self._ignored.discard(oid)
        return False

    def _current_name(self, oid: int) -> str | None:
        """``schema.table`` of the table ``oid`` now (None: dropped)."""
        with setup.connect(self.dsn, self.name) as conn:
            row = conn.execute("SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n"
                               " ON n.oid = c.relnamespace WHERE c.oid = %s", (oid,)).fetchone()
        return row[0] if row else None

    def _tables_gone(self) -> None:
        """Everything the WAL held when we started has been read: say what to change about
        the configured tables that no longer exist."""
        known = {table: oid for oid, table in self._oids.items()}
        lines = []
        try:
            with setup.connect(self.dsn, self.name) as conn:
                for table in self._gone:
                    if table in self._recreated:
                        lines.append(
                            f"table {table} was dropped and created again while cdc ran: the new table is not in "
                            f"the publication, so its changes since it was created are not captured, and the rows "
                            f"of the dropped table stay downstream (a drop sends no deletes). Nothing in the config "
                            f"needs to change for it: empty {table} in the destination (a mirror's target table), "
                            f"start cdc again (it puts the table back in the publication), then copy its rows: "
                            f"cdc snapshot CONFIG --source {self.name} --table {table}")
                        continue
                    row = None
                    if table in known:
                        row = conn.execute("SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN"
                                           " pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s",
                                           (known[table],)).fetchone()
                    lines.append(f"table {table} was renamed to {row[0]}: put {row[0]} in its place in tables:"
                                 if row else f"table {table} does not exist any more (dropped, or renamed while "
                                 f"cdc was stopped): remove it from tables:, or put its new name there")
        except psycopg.Error as exc:
            lines = [f"table {t} does not exist any more ({str(exc).strip()})" for t in self._gone]
        self._error = SourceSetupError(
            f"every change the WAL held up to {format_lsn(self._gone_until)} was delivered, including those "
            f"of the missing tables; now, for each, do what it says, then start cdc again:\n  - "
            + "\n  - ".join(lines), source=self.name)
        self._gone = []
        self._recreated = set()

    def _base_type(self, oid: int) -> int:
        """A domain's values convert as its base type's (a domain over int is a number);
        other user-defined types (enums...) stay as they are.  Per Relation, cached."""
        base = self._base_types.get(oid)
        if base is None:
            base = oid
            try:
                with setup.connect(self.dsn, self.name) as conn:
                    for _ in range(32):  # a domain over a domain...
                        row = conn.execute("SELECT typtype, typbasetype FROM pg_type WHERE oid = %s",
                                           (base,)).fetchone()
                        if row is None or row[0] != "d":
                            break
                        base = row[1]
            except (psycopg.Error, SourceError) as exc:
                log.warning("source %s: cannot read type %s: %s", self.name, oid, exc)
                return oid
            self._base_types[oid] = base
        return base

    def _primary_key(self, oid: int) -> list[str] | None:
        """The key of a table whose replica identity is not its primary key, read afresh."""
        try:
            with setup.connect(self.dsn, self.name) as conn:
                return setup.primary_key_of(conn, oid)
        except (psycopg.Error, SourceError) as exc:
            log.warning("source %s: cannot read the primary key of relation %s: %s", self.name, oid, exc)
            return None

    def _source_block(self, schema: str, table: str, lsn: int, xid: int | None, ts_ms: int) -> dict:
        """The event's ``source`` (Debezium's field names)."""
        return {"connector": "postgresql", "name": self.name, "db": self.db, "schema": schema,
                "table": table, "lsn": lsn, "txId": xid, "ts_ms": ts_ms}

    def _idle(self) -> None:
        """Per poll, not per message: status updates and the optional heartbeat."""
        self.keepalive()
        if self.heartbeat_interval:
            self._heartbeat()
        self._check_tables()

    def _check_tables(self) -> None:
        """Every ``TABLE_CHECK_INTERVAL``: a captured table dropped while cdc reads (its oid
        gone; a rename keeps it) left the publication, and a table created again under its
        name is not captured.  The stream is read up to now (the drop included), then cdc
        stops naming it (``_tables_gone``).  A failed check is tried again next time."""
        now = time.monotonic()
        if now - self._last_table_check < TABLE_CHECK_INTERVAL or self._gone or not self._oids:
            return
        self._last_table_check = now
        tables = [{"o": oid, "t": ".".join('"' + part.replace('"', '""') + '"' for part in name.split(".", 1))}
                  for oid, name in self._oids.items()]
        try:
            found = self._side.query(
                b"SELECT o, to_regclass(t) IS NOT NULL, pg_current_wal_lsn()::text"
                b" FROM jsonb_to_recordset($1::jsonb) AS x(o oid, t text)"
                b" WHERE NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = o)", [orjson.dumps(tables)])
        except SideError as exc:
            log.debug("source %s: checking the captured tables failed: %s", self.name, exc)
            return
        rows = [(int(oid or 0), again == b"t", (lsn or b"").decode()) for oid, again, lsn in found]
        if not rows:
            return
        self._gone = [self._oids[oid] for oid, _, _ in rows]
        self._recreated = {self._oids[oid] for oid, again, _ in rows if again}
        self._gone_until = parse_lsn(rows[0][2])
        log.warning("source %s: %s dropped while cdc runs: reading what the WAL holds up to %s, then stopping",
                    self.name, ", ".join(self._gone), format_lsn(self._gone_until))

    def _keepalive_message(self, buf: bytes, pos: int, append, in_tx: bool) -> None:
        wal_end, _, reply = _keepalive(buf, pos)
        if reply:
            self._send_status()
        now = time.monotonic()
        if not in_tx and self._gone and wal_end >= self._gone_until:
            self._last_position = max(self._last_position, wal_end)
            append(Commit({"lsn": format_lsn(wal_end)}))
            return
        if (not in_tx and wal_end > self._last_position
                and now - self._last_idle_commit >= IDLE_CONFIRM_INTERVAL):
            # Nothing is half-read: every commit before wal_end has reached us.
            self._last_idle_commit = now
            self._last_position = wal_end
            append(Commit({"lsn": format_lsn(wal_end)}))

    @staticmethod
    def _not_copy_data(frame: bytes) -> None:
        kind = chr(frame[0])
        if kind == "E":  # ErrorResponse: fields of a type byte and a C string
            fields = {f[:1]: f[1:].decode(errors="replace") for f in frame[5:].split(b"\0") if f}
            raise SourceConnectionError(f"replication stream error: {fields.get(b'M', '?')} "
                                        f"(SQLSTATE {fields.get(b'C', '?')})")
        if kind == "c":  # CopyDone
            raise SourceConnectionError("the server ended the replication stream")
        # N (notice), S (parameter status) and the like need no action

    def _truncate(self, msg: bytes, lsn: int, now_ms: int, append) -> None:
        relids, _ = self.decoder.truncate(msg)
        tx = self._tx
        assert tx is not None  # pgoutput sends Truncate inside a transaction (rare: not the row path)
        for relid in relids:
            index = self._index
            self._index += 1
            if relid in self._ignored:
                continue
            rel = self.decoder.relations[relid]
            if self._skip[0] == tx[0] and index < self._skip[1]:
                continue
            append(ChangeEvent(f"{tx[3]}{index}", "t", None, None, None,
                               self._source_block(rel.schema, rel.table, lsn, tx[2], tx[1]),
                               now_ms, rel.qualified, lsn))

    def _message(self, msg: bytes, lsn: int, now_ms: int, append) -> None:
        transactional, mlsn, prefix, content = self.decoder.message(msg)
        if prefix == HEARTBEAT_PREFIX:
            if not transactional and self._tx is None:
                self._last_position = max(self._last_position, mlsn)
                append(Commit({"lsn": format_lsn(mlsn)}))
            return
        if not self.messages:
            return
        try:
            body = {"prefix": prefix, "content": content.decode()}
        except UnicodeDecodeError:
            body = {"prefix": prefix, "content": base64.b64encode(content).decode(), "encoding": "base64"}
        tx = self._tx
        if tx is not None:
            index = self._index
            self._index += 1
            if self._skip[0] == tx[0] and index < self._skip[1]:
                return
            event_id, xid, ts = f"{tx[3]}{index}", tx[2], tx[1]
        else:
            event_id, xid, ts = f"{format_lsn(mlsn)}:m", None, now_ms
        append(ChangeEvent(event_id, "m", None, None, None, self._source_block("", "", mlsn, xid, ts),
                           now_ms, "", mlsn, message=body))
        if tx is None:
            append(Commit({"lsn": format_lsn(mlsn)}))

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if now - self._last_heartbeat < self.heartbeat_interval:
            return
        self._last_heartbeat = now
        try:
            self._side.query(b"SELECT pg_logical_emit_message(false, $1, '')", [HEARTBEAT_PREFIX.encode()])
        except SideError as exc:  # the next one tries again on a new connection
            log.warning("source %s: heartbeat failed: %s", self.name, exc)
