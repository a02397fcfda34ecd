"""``type: mysql``: the MySQL / MariaDB binlog, read as a replica with python-mysql-replication.

The library handles the connection, the framing, GTIDs and the TableMap metadata;
row images are decoded by ``decoder.TableDecoder`` (compiled per table layout).
"""

from __future__ import annotations

import logging
import select
import struct
import time
import zlib
from typing import Literal

import pymysql
import pymysql.cursors
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.binlogstream import MYSQL_EXPECTED_ERROR_CODES
from pymysqlreplication.constants import FORMAT_DESCRIPTION_EVENT, ROTATE_EVENT, TABLE_MAP_EVENT
from pymysqlreplication.packet import BinLogPacketWrapper
from pymysqlreplication.event import GtidEvent, MariadbGtidEvent, QueryEvent, RotateEvent, XidEvent
from pymysqlreplication.row_event import DeleteRowsEvent, TableMapEvent, UpdateRowsEvent, WriteRowsEvent

from ...config import Context
from ...errors import ConfigError, ConfigProblem, SourceConnectionError, SourceError, SourceSetupError
from ...event import ChangeEvent, Commit
from . import settings as checks
from .decoder import TableDecoder
from .position import GtidState
from .snapshot import MySQLSnapshotReader

__all__ = ["MySQLSource"]

log = logging.getLogger("cdc.source.mysql")
_ROWS = {WriteRowsEvent: "c", UpdateRowsEvent: "u", DeleteRowsEvent: "d"}
_RAW_ROWS = {23: "c", 24: "u", 25: "d"}  # v1 rows events (what MariaDB writes)
_HEADER = struct.Struct("<I1xIII").unpack_from  # timestamp, (type), server id, event size, next position
_from = int.from_bytes
READ_BUFFER = 1 << 20
_INSIDE = ("SAVEPOINT", "ROLLBACK TO", "RELEASE SAVEPOINT", "XA ")


class _Reader(BinLogStreamReader):
    """The library's reader, minus its silent reconnect: that one restarts from the
    original start position (upstream issue #367).  We raise instead, and the
    runner reopens the source at its checkpoint."""

    _connected_once = False

    def _BinLogStreamReader__connect_to_stream(self):  # noqa: N802 - overrides a private method
        if self._connected_once:
            raise SourceConnectionError("binlog connection lost")
        self._connected_once = True
        BinLogStreamReader._BinLogStreamReader__connect_to_stream(self)
        # Read the stream in large chunks: one recv() for many events, not one (or two) each.
        # Nothing of the stream has been read yet (the dump request was just sent).
        conn = self._stream_connection
        conn._rfile = conn._sock.makefile("rb", buffering=READ_BUFFER)

    def connect_ctl(self) -> None:
        self._BinLogStreamReader__connect_to_ctl()

    def connect_stream(self) -> None:
        self._BinLogStreamReader__connect_to_stream()

    # fetchone(), split in two so that the source can read some packets itself:
    # next_packet() reads one, wrap() is the library's handling of it.

    def next_packet(self):
        """The next event packet of the stream (untouched), or None at its end."""
        while True:
            try:
                packet = self._stream_connection._read_packet()
            except pymysql.OperationalError as error:
                if error.args and error.args[0] in MYSQL_EXPECTED_ERROR_CODES:
                    self._stream_connection.close()
                    self._BinLogStreamReader__connected_stream = False
                    raise SourceConnectionError("binlog connection lost") from error
                raise
            if packet.is_eof_packet():
                self.close()
                return None
            if packet.is_ok_packet():
                return packet

    def wrap(self, packet):
        """The library's event for ``packet`` (None: filtered), with fetchone()'s bookkeeping
        (we set neither end_log_pos nor skip_to_timestamp)."""
        mangled = "_BinLogStreamReader__"
        wrapper = BinLogPacketWrapper(
            packet, self.table_map, self._ctl_connection, self.mysql_version,
            *(getattr(self, mangled + name) for name in (
                "use_checksum", "allowed_events_in_packet", "only_tables", "ignored_tables",
                "only_schemas", "ignored_schemas", "freeze_schema", "ignore_decode_errors",
                "verify_checksum", "optional_meta_data", "enable_logging", "use_column_name_cache",
                "post_header_lengths")))
        ev = wrapper.event
        kind = wrapper.event_type
        if kind == ROTATE_EVENT:
            self.log_pos, self.log_file = ev.position, ev.next_binlog
            if wrapper.timestamp != 0:
                self.table_map = {}
        elif wrapper.log_pos:
            self.log_pos = wrapper.log_pos
        if kind == FORMAT_DESCRIPTION_EVENT and ev is not None:
            self.mysql_version = ev.mysql_version
            self._BinLogStreamReader__post_header_lengths = ev.post_header_len
        if kind == TABLE_MAP_EVENT and ev is not None:
            self.table_map[ev.table_id] = ev.get_table()
        if ev is None or ev.__class__ not in self._BinLogStreamReader__allowed_events:
            return None
        return ev

    def row_offset(self, kind: int) -> int:
        """Where a v1 rows event's body starts in the packet (after the OK byte, the header,
        table id and flags); 0 when the declared post-header is not the known one."""
        lengths = self._BinLogStreamReader__post_header_lengths
        if lengths and len(lengths) >= kind and lengths[kind - 1] != 8:
            return 0
        return 28

    @property
    def checksum_size(self) -> int:
        return 4 if self._BinLogStreamReader__use_checksum else 0


def _table_name(data: bytes) -> tuple[str, str]:
    """(schema, table) of a raw TableMap packet: after the header and the 8-byte post-header,
    two length-prefixed, NUL-terminated names."""
    n = data[28]
    m = data[30 + n]
    return data[29:29 + n].decode(), data[31 + n:31 + n + m].decode()


def _default_server_id(name: str) -> int:
    return 100_000 + zlib.crc32(name.encode()) % 1_000_000_000


class MySQLSource:
    """Options: ``dsn`` (``mysql://user:pass@host:3306/db``), ``tables`` (``db.table``),
    ``server_id`` (unique among the server's replicas; default: derived from the source
    name), ``max_poll_events``, ``heartbeat_interval`` (seconds the server may stay silent),
    ``fast_decoder`` (false: the library's decoding for every table), and ``snapshot`` /
    ``snapshot_chunk_size`` / ``snapshot_parallelism`` (copying the existing rows:
    ``docs/snapshots.md``)."""

    def __init__(self, dsn: str, tables: list[str], server_id: int | None = None,
                 max_poll_events: int = 1000, heartbeat_interval: float = 10.0,
                 fast_decoder: bool = True,
                 snapshot: Literal["initial", "never", "initial_only", "when_needed"] = "initial",
                 snapshot_chunk_size: int = 10_000, snapshot_parallelism: int = 2,
                 context: Context | None = None) -> None:
        self.name = context.source if context else "mysql"
        self.snapshot = snapshot
        self.snapshot_chunk_size = snapshot_chunk_size
        self.snapshot_parallelism = snapshot_parallelism
        self.dsn = dsn
        try:
            self.settings = checks.parse_dsn(dsn)
        except ValueError as exc:
            raise ConfigError([ConfigProblem(f"sources.{self.name}.dsn", str(exc))]) from None
        self.db = self.settings.get("db") or ""
        self.tables = tables
        self.server_id = server_id or _default_server_id(self.name)
        self.max_poll_events = max_poll_events
        self.heartbeat_interval = heartbeat_interval
        self.fast_decoder = fast_decoder
        self.bytes_read = 0
        self.confirmed: dict | None = None
        self.reader: _Reader | None = None
        self.info: dict = {}
        self.gtids: GtidState | None = None
        self.file, self.pos = "", 0
        self._position: dict | None = None   # the last transaction boundary
        self._tables: dict[int, tuple] = {}   # table id -> (qualified, db, table, decoder, key)
        self._layouts: dict[tuple, TableDecoder] = {}
        self._json: dict[str, set[str]] = {}
        self._tx: tuple | None = None         # (key, id prefix, gtid, ts_ms) while in a transaction
        self._index = 0
        self._skip: tuple = (None, 0)
        self._error: SourceConnectionError | None = None

    @staticmethod
    def qualify_table(name: str, options: dict) -> str:
        if "." in name:
            return name
        try:
            db = checks.parse_dsn(options.get("dsn", "")).get("db") or ""
        except ValueError:
            db = ""
        return f"{db}.{name}"

    # ---- lifecycle -----------------------------------------------------------------

    def open(self, position: dict | None) -> None:
        stream = {"connect_timeout": 10, **{k: v for k, v in self.settings.items() if k != "db"}}
        if self.heartbeat_interval:  # the server sends a heartbeat when idle: silence means it is gone
            stream.setdefault("read_timeout", max(30, int(3 * self.heartbeat_interval)))
        reader = _Reader(
            stream, self.server_id, blocking=True, resume_stream=True,
            # every event comes back to poll(): fetchone() would block on a filtered last event
            only_events=None, filter_non_implemented_events=False,
            only_schemas=sorted({t.split(".", 1)[0] for t in self.tables}),
            only_tables=sorted({t.split(".", 1)[1] for t in self.tables}),
            slave_heartbeat=self.heartbeat_interval or None, enable_logging=False,
            freeze_schema=True)  # a known table id is not parsed again; DDL clears them (see _ddl)
        try:
            reader.connect_ctl()  # the library's metadata connection serves our checks too
            conn = reader._ctl_connection
            checks.require(conn, self.tables, self.server_id, self.name)
            self.info = checks.server_info(conn)
            self._json = checks.json_columns(conn, self.tables) if self.info["mariadb"] else {}
            position = position or self._position or self._current(conn)
            self.file, self.pos = position.get("file", ""), position.get("pos", 4)
            gtid = position.get("gtid") if self.info["gtid"] else None
            reader.is_mariadb = self.info["mariadb"]
            reader.auto_position, reader.log_file, reader.log_pos = gtid, self.file or None, self.pos
            reader.connect_stream()
        except pymysql.MySQLError as exc:
            reader.close()
            raise SourceConnectionError(f"cannot start the binlog stream: {exc.args[-1]}",
                                        source=self.name) from exc
        except BaseException:
            reader.close()
            raise
        self.reader = reader
        self._tables = {}
        self._error = None
        if self._tx is not None:  # reopening mid-transaction: skip what was emitted
            self._skip = (self._tx[0], self._index)
        self._tx = None
        self._position = position
        self.gtids = GtidState(gtid or "", self.info["mariadb"]) if self.info["gtid"] else None
        log.info("source %s: reading the binlog of %s from %s", self.name, self.info["version"], position)

    def _current(self, conn: pymysql.Connection) -> dict:
        """The end of the binlog now (without SHOW MASTER STATUS, gone in MySQL 8.4)."""
        with conn.cursor(pymysql.cursors.Cursor) as cur:
            cur.execute("SHOW BINARY LOGS")
            file, size = cur.fetchall()[-1][:2]
            position = {"file": file, "pos": int(size)}
            if self.info["gtid"]:
                cur.execute("SELECT @@global.gtid_binlog_pos" if self.info["mariadb"]
                            else "SELECT @@global.gtid_executed")
                position["gtid"] = cur.fetchone()[0] or ""
        return position

    def snapshot_reader(self) -> MySQLSnapshotReader:
        return MySQLSnapshotReader(self.settings, self.name)

    def snapshot_position(self) -> dict | None:
        return self._position

    def close(self) -> None:
        if self.reader is not None:
            try:
                self.reader.close()
            except Exception:  # the socket may already be gone
                pass
            self.reader = None

    def confirm(self, position: dict) -> None:
        self.confirmed = position  # a replica has nothing to tell the server

    def keepalive(self) -> None:
        pass

    # ---- reading -------------------------------------------------------------------

    def _ready(self, timeout: float) -> bool:
        """Is an event (or an error) waiting?  pymysql buffers, so peek before select."""
        conn = self.reader._stream_connection
        sock = conn._sock
        if sock is None:
            return True
        if select.select([sock], [], [], 0)[0]:
            return True
        previous = sock.gettimeout()
        sock.setblocking(False)
        try:
            if conn._rfile.peek(1):
                return True
        except OSError:
            return True
        finally:
            sock.settimeout(previous)
        return timeout > 0 and bool(select.select([sock], [], [], timeout)[0])

    def _failed(self, exc: pymysql.MySQLError) -> SourceError:
        if isinstance(exc, pymysql.OperationalError):
            code = exc.args[0] if exc.args else 0
            if code == 1236:  # the binlog at our position is gone
                return SourceSetupError(f"cannot resume from {self._position}: {exc.args[-1]}", source=self.name)
            return SourceConnectionError(f"binlog stream failed: {exc.args[-1]}", source=self.name)
        return SourceError(f"binlog stream failed: {exc}", source=self.name)

    def poll(self, timeout: float) -> list:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if self.reader is None:
            raise SourceConnectionError("not connected", source=self.name)
        out: list = []
        try:
            self._read(out, timeout)
        except SourceConnectionError as exc:
            if not out:
                raise
            self._error = exc  # hand over what was read first: the skip counts it as emitted
        return out

    def _read(self, out: list, timeout: float) -> None:
        try:
            self._read_events(out, timeout)
        except pymysql.MySQLError as exc:
            raise self._failed(exc) from exc
        except (struct.error, UnicodeDecodeError, IndexError, KeyError, ValueError) as exc:
            raise SourceError(f"cannot decode the binlog near {self.file}:{self.pos}: "
                              f"{type(exc).__name__}: {exc}", source=self.name) from exc

    def _read_events(self, out: list, timeout: float) -> None:
        wait = timeout
        now_ms = int(time.time() * 1000)
        reader = self.reader
        tables = self._tables
        # Inside a transaction the rest of it is already in the binlog: read on without waiting.
        while len(out) < self.max_poll_events and (self._tx is not None or self._ready(wait)):
            wait = 0.0
            packet = reader.next_packet()
            if packet is None:
                raise SourceConnectionError("the server ended the binlog stream", source=self.name)
            data = packet._data
            kind_byte = data[5]
            if kind_byte == TABLE_MAP_EVENT:
                # A restarted server numbers its tables from zero again: when a table id now
                # names another table, forget the old one (even if the new one is not captured).
                table_id = _from(data[20:26], "little")
                known = tables.get(table_id)
                if known is not None and _table_name(data) != (known[1], known[2]):
                    del tables[table_id]
            op = _RAW_ROWS.get(kind_byte)
            if op is not None:  # a rows event of a captured table: read straight from the packet
                table_id = _from(data[20:26], "little")
                table = tables.get(table_id)
                if (table is not None and table_id in reader.table_map
                        and self._raw_rows(data, op, table, now_ms, out)):
                    continue
            ev = reader.wrap(packet)
            if ev is None:
                continue
            kind = ev.__class__
            self.bytes_read += ev.packet.event_size
            if kind in _ROWS:
                self._rows(ev, _ROWS[kind], now_ms, out)
            elif kind is XidEvent:
                self._commit(ev, out)
            elif kind is TableMapEvent:
                self._table_map(ev)
            elif kind is MariadbGtidEvent or kind is GtidEvent:
                self._begin(ev.gtid, ev)
            elif kind is QueryEvent:
                query = ev.query.strip().upper()
                if query == "BEGIN":
                    if self._tx is None or self._tx[2] is None:
                        self._begin(None, ev)
                elif query.startswith(_INSIDE):  # savepoints and XA steps do not end a transaction
                    pass
                else:  # COMMIT, ROLLBACK, or a DDL statement: all end a transaction
                    if query != "COMMIT" and query != "ROLLBACK":
                        self._ddl()
                    self._commit(ev, out)
            elif kind is RotateEvent:
                self.file, self.pos = ev.next_binlog, ev.position

    def _begin(self, gtid: str | None, ev) -> None:
        packet = ev.packet
        self._start(gtid, packet.log_pos - packet.event_size, packet.timestamp)

    def _start(self, gtid: str | None, pos: int, timestamp: int) -> None:
        key = gtid if gtid is not None else f"{self.file}:{pos}"
        self._tx = (key, f"{key}:", gtid, timestamp * 1000)
        self._index = 0

    def _commit(self, ev, out: list) -> None:
        tx = self._tx
        if tx is not None and tx[2] is not None and self.gtids is not None:
            self.gtids.add(tx[2])
        self.pos = ev.packet.log_pos
        position = {"file": self.file, "pos": self.pos}
        if self.gtids is not None:
            position["gtid"] = str(self.gtids)
        self._position = position
        self._tx = None
        self._skip = (None, 0)
        out.append(Commit(position, ev.packet.timestamp * 1000))

    def _ddl(self) -> None:
        """A statement that may change a table: read the next TableMaps afresh."""
        self.reader.table_map.clear()
        self._tables.clear()

    def _table_map(self, ev) -> None:
        qualified = f"{ev.schema}.{ev.table}"
        if qualified not in self.tables:
            return
        columns = ev.columns
        json = self._json.get(qualified, set())
        # the TableMap body after table id and flags: names, types, metadata
        layout = ev.packet.packet._data[28:20 + ev.event_size]
        cache_key = (layout, frozenset(json))  # the same layout may gain or lose JSON columns
        decoder = self._layouts.get(cache_key)
        if decoder is None:
            decoder = self._layouts[cache_key] = TableDecoder(columns, self.fast_decoder, json)
            log.debug("source %s: %s decoder for %s", self.name, "fast" if decoder.fast else "library",
                      qualified)
        key = [c.name for c in columns if c.is_primary] or None
        self._tables[ev.table_id] = (qualified, ev.schema, ev.table, decoder, key)

    def _raw_rows(self, data: bytes, op: str, table: tuple, now_ms: int, out: list) -> bool:
        """A v1 rows event read from the packet bytes by the compiled decoder; False (nothing
        done) when it needs the library (another post-header, a partial row image...)."""
        reader = self.reader
        start = reader.row_offset(data[5])
        if not start:
            return False
        timestamp, server_id, size, log_pos = _HEADER(data, 1)
        decoder = table[3]
        end = 1 + size - reader.checksum_size
        p = decoder.raw_start(data, start, end, op == "u")
        if p is None:
            return False
        self.bytes_read += size
        reader.log_pos = log_pos
        pos = log_pos - size
        if self._tx is None:  # rows outside BEGIN (should not happen): key them by position
            self._start(None, pos, timestamp)
        self._emit(table, op, server_id, pos, now_ms, out, decoder.raw_emit, (data, p, end))
        return True

    def _rows(self, ev, op: str, now_ms: int, out: list) -> None:
        table = self._tables.get(ev.table_id)
        if table is None:
            return
        if self._tx is None:  # rows outside BEGIN (should not happen): key them by position
            self._begin(None, ev)
        packet = ev.packet
        self._emit(table, op, packet.server_id, packet.log_pos - packet.event_size, now_ms, out,
                   table[3].emit, (ev,))

    def _emit(self, table: tuple, op: str, server_id: int, pos: int, now_ms: int, out: list,
              emit, args: tuple) -> None:
        qualified, db, name, decoder, key_names = table
        key, prefix, gtid, ts_ms = self._tx
        base = {"connector": "mysql", "name": self.name, "db": db, "table": name, "file": self.file,
                "pos": pos, "row": 0, "gtid": gtid, "server_id": server_id, "ts_ms": ts_ms}
        index = self._index
        # rows emitted before a reconnect are skipped (their number is the first to emit)
        first = self._skip[1] - index if self._skip[0] == key and index < self._skip[1] else 0
        count = emit(*args, op, first, index, prefix, base, now_ms, qualified, pos, out.append)
        if count is None:  # the library's decoding (emit() is then the library event's)
            count = self._library_rows(args[0], op, first, index, prefix, base, now_ms, qualified, pos, out)
        self._index = index + count

    def _library_rows(self, ev, op, first, index, prefix, base, now_ms, qualified, pos, out) -> int:
        pairs = self._tables[ev.table_id][3].library_rows(ev)
        key_names = self._tables[ev.table_id][4]
        for rowno in range(first, len(pairs)):
            before, after = pairs[rowno]
            row = after if after is not None else before
            src = dict(base, row=rowno)
            out.append(ChangeEvent(f"{prefix}{index + rowno}", op, before, after,
                                   {k: row[k] for k in key_names} if key_names else None,
                                   src, now_ms, qualified, pos))
        return len(pairs)
