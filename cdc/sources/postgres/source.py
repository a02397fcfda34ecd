"""``type: postgres``: logical replication with the built-in pgoutput plugin."""

from __future__ import annotations

import base64
import logging
import re
import struct
import time
from typing import Literal

import psycopg
from psycopg.conninfo import conninfo_to_dict

from ...config import Context
from ...errors import SourceConnectionError, SourceError
from ...event import ChangeEvent, Commit
from . import setup
from .pgoutput import Decoder
from .replication import ReplicationStream, lsn_to_str, str_to_lsn
from .snapshot import PostgresSnapshotReader

__all__ = ["PostgresSource", "HEARTBEAT_PREFIX"]

log = logging.getLogger("cdc.source.postgres")
HEARTBEAT_PREFIX = "cdc_heartbeat"
STATUS_INTERVAL = 10.0       # seconds between standby status updates
IDLE_CONFIRM_INTERVAL = 10.0  # seconds between positions taken from keepalives
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
        self.db = conninfo_to_dict(dsn).get("dbname", "")
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
        self._last_status = 0.0
        self._last_idle_commit = 0.0
        self._last_position = 0
        self._heartbeat_conn: psycopg.Connection | None = None
        self._last_heartbeat = 0.0

    @staticmethod
    def qualify_table(name: str, options: dict) -> str:
        return name if "." in name else f"public.{name}"

    @staticmethod
    def describe(source: PostgresSource) -> dict:
        """The slot's confirmed position and how many WAL bytes it is behind."""
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

    def open(self, position: dict | None) -> None:
        try:
            with setup.connect(self.dsn, self.name) as conn:
                setup.prepare(conn, self.tables, self.publication, self.slot, self.name, self.create)
                self.decoder = Decoder(setup.primary_keys(conn, self.tables))
        except psycopg.OperationalError as exc:  # the connection broke during set-up
            raise SourceConnectionError(f"set-up failed: {str(exc).strip()}", source=self.name) from exc
        if self._tx is not None:  # reconnecting mid-transaction: skip what was emitted
            self._skip = (self._tx[0], self._index)
        self._tx = None
        start = str_to_lsn(position["lsn"]) if position else 0
        self.confirmed_lsn = max(self.confirmed_lsn, start)
        self._last_position = max(self._last_position, start)
        options = {"proto_version": "1", "publication_names": self.publication}
        options["messages"] = "true"  # heartbeats, and snapshot watermarks (even with snapshot: never)
        self.stream = ReplicationStream(self.dsn)
        self.stream.start(self.slot, start, options)
        log.info("source %s: streaming slot %s from %s", self.name, self.slot, lsn_to_str(start))

    def snapshot_reader(self) -> PostgresSnapshotReader:
        return PostgresSnapshotReader(self.dsn, self.name, self.db)

    def snapshot_position(self) -> dict | None:
        return {"lsn": lsn_to_str(self._last_position)} if self._last_position else None

    def close(self) -> None:
        if self.stream is not None:
            try:
                self.stream.send_status(self.confirmed_lsn)
            except SourceConnectionError:
                pass
            self.stream.close()
            self.stream = None
        if self._heartbeat_conn is not None:
            self._heartbeat_conn.close()
            self._heartbeat_conn = None

    def confirm(self, position: dict) -> None:
        self.confirmed_lsn = str_to_lsn(position["lsn"])
        self._send_status()

    def keepalive(self) -> None:
        if time.monotonic() - self._last_status >= STATUS_INTERVAL:
            self._send_status()

    def _send_status(self) -> None:
        if self.stream is not None:
            self.stream.send_status(self.confirmed_lsn)
            self._last_status = time.monotonic()

    # ---- reading -------------------------------------------------------------------

    def poll(self, timeout: float) -> list:
        stream = self.stream
        buf = stream.receive(timeout)
        if buf is None:
            self._idle()
            return []
        tx, index = self._tx, self._index   # the open transaction, kept in locals while reading
        skip_final, skip_count = self._skip
        saved = (tx, index, self._skip, self._last_position)
        try:
            out, pos, lsn, tx, index, skip_final, skip_count = self._read_frames(
                buf, len(buf), tx, index, skip_final, skip_count, int(time.time() * 1000),
                self.max_poll_events, [])
        except BaseException as exc:
            # What this poll read is lost with the exception: forget it, so that the
            # skip after a reconnect counts only events that were handed on.
            self._tx, self._index, self._skip, self._last_position = saved
            if isinstance(exc, (struct.error, UnicodeDecodeError, IndexError, KeyError, ValueError)):
                raise SourceError(f"cannot decode the replication stream after "
                                  f"{lsn_to_str(stream.received_lsn)}: {type(exc).__name__}: {exc}",
                                  source=self.name) from exc
            raise
        self._tx, self._index, self._skip = tx, index, (skip_final, skip_count)
        stream.keep(buf, pos)
        self.bytes_read += pos
        if lsn:
            stream.received_lsn = lsn
        self._idle()
        return out

    def _read_frames(self, buf, size, tx, index, skip_final, skip_count, now_ms, limit, out):
        """The hot loop of ``poll``: CopyData frames -> events and commits."""
        append = out.append
        relations = self.decoder.relations
        decoder = self.decoder
        bases: dict[int, dict] = {}  # relation id -> the source block of this transaction
        pos = 0
        lsn = 0
        while pos + 5 <= size:
            try:  # frame length, CopyData kind, XLogData start LSN in one read
                length, kind, start_lsn = _frame_head(buf, pos + 1)
            except struct.error:  # a short frame at the end of the buffer
                length, kind, start_lsn = _i32(buf, pos + 1)[0], 0, 0
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
                    rel = relations[relid]
                    i = index
                    index += 1
                    if i < skip_count and tx[0] == skip_final:
                        continue  # emitted before a reconnect
                    if t == 73:
                        op, before = "c", None
                        after, key, _ = rel.decode(buf, p + 6, None)
                    else:
                        before = None
                        q = p + 5
                        if buf[q] == 79:  # 'O': the old row (REPLICA IDENTITY FULL)
                            before, key, q = rel.decode(buf, q + 1, None)
                        elif buf[q] == 75:  # 'K': the old key, when it changed
                            _, key, q = rel.decode(buf, q + 1, None)
                            before = dict(key)
                        if t == 85:
                            op = "u"
                            after, key, _ = rel.decode(buf, q + 1, before)
                        else:
                            op, after = "d", None
                    source = bases.get(relid)
                    if source is None:  # once per table and transaction; copies are cheaper
                        source = bases[relid] = self._source_block(rel.schema, rel.table, 0, tx[2], tx[1])
                    source = source.copy()
                    source["lsn"] = lsn
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
                    tx, index = (final_lsn, ts_ms, xid, f"{lsn_to_str(final_lsn)}:"), 0
                    bases = {}
                elif t == 67:  # Commit
                    _, end_lsn, ts_ms = decoder.commit(msg)
                    tx = None
                    skip_final = skip_count = 0
                    self._last_position = end_lsn
                    append(Commit({"lsn": lsn_to_str(end_lsn)}, ts_ms))
                elif t == 82:  # Relation
                    decoder.relation(msg)
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

    def _source_block(self, schema: str, table: str, lsn: int, xid: int | None, ts_ms: int) -> dict:
        """The event's ``source`` (Debezium's field names)."""
        return {"connector": "postgresql", "name": self.name, "db": self.db, "schema": schema,
                "table": table, "lsn": lsn, "txId": xid, "ts_ms": ts_ms}

    def _idle(self) -> None:
        """Per poll, not per message: status updates and the optional heartbeat."""
        self.keepalive()
        if self.heartbeat_interval:
            self._heartbeat()

    def _keepalive_message(self, buf: bytes, pos: int, append, in_tx: bool) -> None:
        wal_end, _, reply = _keepalive(buf, pos)
        if reply:
            self._send_status()
        now = time.monotonic()
        if (not in_tx and wal_end > self._last_position
                and now - self._last_idle_commit >= IDLE_CONFIRM_INTERVAL):
            # Nothing is half-read: every commit before wal_end has reached us.
            self._last_idle_commit = now
            self._last_position = wal_end
            append(Commit({"lsn": lsn_to_str(wal_end)}))

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
        for relid in relids:
            rel = self.decoder.relations[relid]
            index = self._index
            self._index += 1
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
                append(Commit({"lsn": lsn_to_str(mlsn)}))
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
            event_id, xid, ts = f"{lsn_to_str(mlsn)}:m", None, now_ms
        append(ChangeEvent(event_id, "m", None, None, None, self._source_block("", "", mlsn, xid, ts),
                           now_ms, "", mlsn, message=body))
        if tx is None:
            append(Commit({"lsn": lsn_to_str(mlsn)}))

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if now - self._last_heartbeat < self.heartbeat_interval:
            return
        self._last_heartbeat = now
        try:
            if self._heartbeat_conn is None or self._heartbeat_conn.closed:
                self._heartbeat_conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
            self._heartbeat_conn.execute("SELECT pg_logical_emit_message(false, %s, '')", (HEARTBEAT_PREFIX,))
        except psycopg.Error as exc:
            log.warning("source %s: heartbeat failed: %s", self.name, str(exc).strip())
            self._heartbeat_conn = None
