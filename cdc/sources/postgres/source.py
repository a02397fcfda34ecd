"""``type: postgres``: logical replication with the built-in pgoutput plugin."""

from __future__ import annotations

import base64
import logging
import re
import struct
import time

import psycopg
from psycopg.conninfo import conninfo_to_dict

from ...config import Context
from ...errors import SourceConnectionError
from ...event import ChangeEvent, Commit
from . import setup
from .pgoutput import Decoder
from .replication import ReplicationStream, lsn_to_str, str_to_lsn

__all__ = ["PostgresSource", "HEARTBEAT_PREFIX"]

log = logging.getLogger("cdc.source.postgres")
HEARTBEAT_PREFIX = "cdc_heartbeat"
STATUS_INTERVAL = 10.0       # seconds between standby status updates
IDLE_CONFIRM_INTERVAL = 10.0  # seconds between positions taken from keepalives
_xlog_start = struct.Struct(">Q").unpack_from
_relid = struct.Struct(">I").unpack_from
_keepalive = struct.Struct(">QqB").unpack_from


def _default_name(source: str, db: str) -> str:
    """``cdc_<db>_<source>``: slots are per cluster, so the database is part of the name."""
    return ("cdc_" + re.sub(r"[^a-z0-9_]", "_", f"{db}_{source}".lower()))[:63]


class PostgresSource:
    """Options: ``dsn``, ``tables`` (``schema.table``), ``slot`` and ``publication``
    (default ``cdc_<db>_<source>``; created when missing unless ``create: false``),
    ``heartbeat_interval`` (seconds, 0: off) and ``messages`` (emit logical decoding
    messages as ``op: m`` events)."""

    def __init__(self, dsn: str, tables: list[str], slot: str | None = None,
                 publication: str | None = None, create: bool = True,
                 heartbeat_interval: float = 0.0, messages: bool = False,
                 max_poll_events: int = 5000, context: Context | None = None) -> None:
        self.name = context.source if context else "postgres"
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
        with setup.connect(self.dsn, self.name) as conn:
            setup.prepare(conn, self.tables, self.publication, self.slot, self.name, self.create)
            self.decoder = Decoder(setup.primary_keys(conn, self.tables))
        if self._tx is not None:  # reconnecting mid-transaction: skip what was emitted
            self._skip = (self._tx[0], self._index)
        self._tx = None
        start = str_to_lsn(position["lsn"]) if position else 0
        self.confirmed_lsn = max(self.confirmed_lsn, start)
        self._last_position = max(self._last_position, start)
        options = {"proto_version": "1", "publication_names": self.publication}
        if self.messages or self.heartbeat_interval:
            options["messages"] = "true"
        self.stream = ReplicationStream(self.dsn)
        self.stream.start(self.slot, start, options)
        log.info("source %s: streaming slot %s from %s", self.name, self.slot, lsn_to_str(start))

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
        out: list = []
        append = out.append
        read = self.stream.read
        decoder = self.decoder
        relations = decoder.relations
        name, db = self.name, self.db
        now_ms = 0
        wait = timeout
        while len(out) < self.max_poll_events:
            data = read(wait)
            if data is None:
                break
            if wait:
                wait = 0.0
                now_ms = int(time.time() * 1000)
            kind = data[0]
            if kind == 119:  # 'w' XLogData: start lsn, end lsn, time, then the message
                lsn = _xlog_start(data, 1)[0]
                msg = bytes(data[25:])
                self.bytes_read += len(msg)
                t = msg[0]
                if t == 73 or t == 85 or t == 68:  # Insert, Update, Delete
                    rel = relations[_relid(msg, 1)[0]]
                    index = self._index
                    self._index = index + 1
                    tx = self._tx
                    if self._skip[0] == tx[0] and index < self._skip[1]:
                        continue
                    before = None
                    if t == 73:
                        op = "c"
                        after, _ = decoder.tuple(msg, 6, rel)
                        keysrc = after
                    else:
                        pos = 5
                        if msg[pos] in (75, 79):  # 'K' key or 'O' old row
                            before, pos = decoder.tuple(msg, pos + 1, rel)
                            if msg[5] == 75:
                                before = {k: before[k] for k in rel.key}
                        if t == 85:
                            op = "u"
                            after, _ = decoder.tuple(msg, pos + 1, rel, before)
                            keysrc = after
                        else:
                            op, after, keysrc = "d", None, before
                    key = {k: keysrc[k] for k in rel.key} if keysrc is not None else None
                    append(ChangeEvent(
                        f"{tx[3]}{index}", op, before, after, key,
                        {"connector": "postgresql", "name": name, "db": db, "schema": rel.schema,
                         "table": rel.table, "lsn": lsn, "txId": tx[2], "ts_ms": tx[1]},
                        now_ms, rel.qualified, lsn))
                elif t == 66:  # Begin
                    final_lsn, ts_ms, xid = decoder.begin(msg)
                    self._tx = (final_lsn, ts_ms, xid, f"{lsn_to_str(final_lsn)}:")
                    self._index = 0
                elif t == 67:  # Commit
                    _, end_lsn, ts_ms = decoder.commit(msg)
                    self._tx = None
                    self._skip = (0, 0)
                    self._last_position = end_lsn
                    append(Commit({"lsn": lsn_to_str(end_lsn)}, ts_ms))
                elif t == 82:  # Relation
                    decoder.relation(msg)
                elif t == 89:  # Type
                    decoder.type(msg)
                elif t == 84:  # Truncate
                    self._truncate(msg, lsn, now_ms, append)
                elif t == 77:  # logical decoding message
                    self._message(msg, lsn, now_ms, append)
                self.stream.received_lsn = lsn
            elif kind == 107:  # 'k' keepalive: wal end, server time, reply requested
                wal_end, _, reply = _keepalive(data, 1)
                if reply:
                    self._send_status()
                now = time.monotonic()
                if (self._tx is None and wal_end > self._last_position
                        and now - self._last_idle_commit >= IDLE_CONFIRM_INTERVAL):
                    # Nothing is half-read: every commit before wal_end has reached us.
                    self._last_idle_commit = now
                    self._last_position = wal_end
                    append(Commit({"lsn": lsn_to_str(wal_end)}))
        self.keepalive()
        if self.heartbeat_interval:
            self._heartbeat()
        return out

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
                               {"connector": "postgresql", "name": self.name, "db": self.db,
                                "schema": rel.schema, "table": rel.table, "lsn": lsn,
                                "txId": tx[2], "ts_ms": tx[1]}, now_ms, rel.qualified, lsn))

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
        append(ChangeEvent(event_id, "m", None, None, None,
                           {"connector": "postgresql", "name": self.name, "db": self.db, "schema": "",
                            "table": "", "lsn": mlsn, "txId": xid, "ts_ms": ts},
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
