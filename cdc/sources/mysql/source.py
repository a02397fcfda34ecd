"""``type: mysql``: the MySQL / MariaDB binlog, read as a replica with python-mysql-replication.

The library handles the connection, the framing, GTIDs and the TableMap metadata;
row images are decoded by ``decoder.TableDecoder`` (compiled per table layout).
"""

from __future__ import annotations

import logging
import re
import select
import ssl
import struct
import time
import zlib
from typing import Literal

import pymysql
import pymysql.connections
import pymysql.cursors
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.binlogstream import MYSQL_EXPECTED_ERROR_CODES
from pymysqlreplication.constants import FORMAT_DESCRIPTION_EVENT, ROTATE_EVENT, TABLE_MAP_EVENT
from pymysqlreplication.event import GtidEvent, MariadbGtidEvent, QueryEvent, RotateEvent, XidEvent
from pymysqlreplication.packet import BinLogPacketWrapper
from pymysqlreplication.row_event import DeleteRowsEvent, TableMapEvent, UpdateRowsEvent, WriteRowsEvent

from ...abc import Problem
from ...config.model import Context
from ...errors import ConfigError, ConfigProblem, PositionLostError, SourceConnectionError, SourceError, SourceSetupError
from ...event import ChangeEvent, Commit
from . import preflight, replicas
from . import settings as checks
from .decoder import TableDecoder, decoder_kind
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
_COMMENTS = r"\s*(?:/\*.*?\*/\s*|#[^\n]*\n\s*|--[^\n]*\n\s*)*"
_DML = re.compile(_COMMENTS + r"(INSERT|REPLACE|UPDATE|DELETE|LOAD\s+(?:DATA|XML))\b", re.I | re.S)
# The part of a DML statement that names the tables it writes (not those it only reads).
_TARGETS = [re.compile(_COMMENTS + p, re.I | re.S) for p in (
    r"(?:INSERT|REPLACE)\s+(?:(?:LOW_PRIORITY|DELAYED|HIGH_PRIORITY|IGNORE)\s+)*(?:INTO\s+)?([`\w$.]+)",
    r"UPDATE\s+(.*?)\bSET\b",
    r"DELETE\s+(.*?)(?:\bWHERE\b|\bORDER\b|\bLIMIT\b|$)",
    r"LOAD\s+(?:DATA|XML)\b.*?\bINTO\s+TABLE\s+([`\w$.]+)")]
_TRUNCATE = re.compile(_COMMENTS + r"TRUNCATE\s+(?:TABLE\s+)?([`\w$.\s]+?)\s*;?\s*$", re.I | re.S)
_RENAME = re.compile(_COMMENTS + r"RENAME\s+TABLES?\s+(.*)$", re.I | re.S)
# Statements after which a captured table's rows are gone without a row event. TEMPORARY tables
# do not match: they shadow a table of the same name without touching it.
_DROP_TABLE = re.compile(_COMMENTS + r"DROP\s+TABLES?\s+(?:IF\s+EXISTS\s+)?(.*)$", re.I | re.S)
_DROP_DATABASE = re.compile(_COMMENTS + r"DROP\s+(?:DATABASE|SCHEMA)\s+(?:IF\s+EXISTS\s+)?([`\w$]+)", re.I | re.S)
_REPLACE_TABLE = re.compile(_COMMENTS + r"CREATE\s+OR\s+REPLACE\s+TABLE\s+([`\w$.]+)", re.I | re.S)
_DROP_OPTIONS = re.compile(r"(?:\s+(?:RESTRICT|CASCADE|NOWAIT|WAIT\s+\d+))+\s*$", re.I)
_MARIADB_GTID = re.compile(r"^\d+-\d+-\d+$")
_ALTER_RENAME = re.compile(_COMMENTS + r"ALTER\s+(?:ONLINE\s+|IGNORE\s+)*TABLE\s+([`\w$.]+)\s+.*?"
                           r"\bRENAME\s+(?!(?:COLUMN|INDEX|KEY)\b)(?:TO\s+|AS\s+)?([`\w$.]+)", re.I | re.S)


class _Connection(pymysql.connections.Connection):
    """pymysql's connection, with a lighter TLS context for its PREFERRED mode (no ``ssl``
    options: TLS when the server offers it, the certificate not verified).  pymysql builds
    that context with ``ssl.create_default_context()``, which loads the system's CA bundle
    only to set ``CERT_NONE`` afterwards: ~50-150 ms of start-up per connection, profiled.
    Explicit ``ssl`` options still get pymysql's own context."""

    def _create_ssl_ctx(self, sslp):
        if sslp:
            return super()._create_ssl_ctx(sslp)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # as create_default_context(), minus the CAs
        ctx.verify_flags &= ~ssl.VERIFY_X509_STRICT  # the rest as pymysql sets it for no options
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.options |= ssl.OP_NO_SSLv2 | ssl.OP_NO_SSLv3
        return ctx


class _Reader(BinLogStreamReader):
    """The library's reader, minus its silent reconnect: that one restarts from the
    original start position (upstream issue #367).  We raise instead, and the
    runner reopens the source at its checkpoint."""

    _connected_once = False
    # the library's attributes (set by BinLogStreamReader.__init__), reassigned in wrap()
    table_map: dict
    mysql_version: tuple

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


def _name(text: str, schema: str) -> str:
    """``db.table`` of an identifier as a statement writes it (backquotes, default schema)."""
    parts = [p.strip().strip("`") for p in text.strip().split(".")]
    return ".".join(parts) if len(parts) == 2 else f"{schema}.{parts[-1]}"


def silence_check(source: MySQLSource, now: float) -> None:
    """The watchdog of an idle stream: the server sends a heartbeat every
    ``heartbeat_interval`` seconds when it has nothing else, so a longer silence
    (a half-open connection, a stopped server) is a lost connection."""
    silent = now - source._heard_at
    if silent > max(3 * source.heartbeat_interval, 5.0):
        raise SourceConnectionError(f"nothing from the server for {silent:.0f}s, not even a heartbeat "
                                    f"(heartbeat_interval {source.heartbeat_interval:g}s): the binlog "
                                    f"connection is presumed lost", source=source.name)


def _default_server_id(name: str) -> int:
    return 100_000 + zlib.crc32(name.encode()) % 1_000_000_000


MAX_POLL_BYTES = 1 << 20  # binlog bytes per poll (one larger event may exceed it)


def _end_dump(reader: _Reader) -> None:
    """End the server's binlog dump thread of ``reader``: closing the socket alone leaves it
    until the server's next two writes to it fail (heartbeats apart), and until then the
    server shows the source as read (``cdc checkpoint set`` waits for it).  The stream's own
    session, so no privilege is needed; two seconds at most, and any failure is ignored."""
    stream, ctl = reader._stream_connection, reader._ctl_connection
    if stream is None or ctl is None or not stream.open or not ctl.open:
        return
    try:
        ctl._read_timeout = ctl._write_timeout = 2.0  # PyMySQL sets the socket's from these
        with ctl.cursor() as cur:
            cur.execute("KILL CONNECTION %s", (stream.thread_id(),))
    except Exception as exc:  # gone already, a server not answering: the socket's close will do
        log.debug("binlog dump not ended: %s", exc)


class MySQLSource:
    """Options: ``dsn`` (``mysql://user:pass@host:3306/db``), ``tables`` (``db.table``),
    ``server_id`` (unique among the server's replicas; default: derived from the source
    name), ``max_poll_events``, ``heartbeat_interval`` (seconds the server may stay silent),
    ``fast_decoder`` (false: the library's decoding for every table), ``statement_dml``
    (``stop``, the default: an INSERT/UPDATE/DELETE on a captured table written in
    statement format stops the source with its position and the fix; ``skip``: such
    statements are skipped with a warning, and the rows they changed are not captured),
    and ``snapshot`` / ``snapshot_chunk_size`` / ``snapshot_parallelism`` (copying the existing rows:
    ``docs/snapshots.md``)."""

    def __init__(self, dsn: str, tables: list[str], server_id: int | None = None,
                 max_poll_events: int = 1000, heartbeat_interval: float = 10.0,
                 fast_decoder: bool = True, statement_dml: Literal["stop", "skip"] = "stop",
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
            raise ConfigError([ConfigProblem("dsn", str(exc))]) from None  # the caller adds sources.NAME
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
        self._error: SourceError | None = None
        self._heard = False                   # a packet that emitted nothing (a heartbeat) came
        self._heard_at = 0.0                  # when the server was last heard (monotonic)
        self.statement_dml = statement_dml
        self._in_begin = False                # a BEGIN was read: Query events are inside the transaction
        self._start_commit: Commit | None = None  # a first run's start position, handed out first
        self._gone: list[str] = []            # configured tables that did not exist at open()
        self._gone_until: tuple = ("", 0)     # ... and the end of the binlog then
        self._renamed: dict[str, str] = {}
        self._dropped: dict[str, str] = {}    # captured tables dropped in this transaction -> how
        self._server: dict = {}               # the server read: server_id, host (recorded in positions)
        self._seen: set[tuple[str, str]] = set()  # (db, table) of TableMaps read for uncaptured tables
        self._patterns = [(t, re.compile(rf"(?<![\w$`.])`?{re.escape(t.split('.', 1)[0])}`?\s*\.\s*"
                                         rf"`?{re.escape(t.split('.', 1)[1])}`?(?![\w$])", re.I),
                           re.compile(rf"(?<![\w$`.])`?{re.escape(t.split('.', 1)[1])}`?(?![\w$])", re.I))
                          for t in tables]

    def preflight(self, position: dict | None, checkpoint_age: float | None) -> list[Problem]:
        return preflight.problems(self, position, checkpoint_age)

    def reader_elsewhere(self, say) -> str | None:
        """A binlog dump of this source's user or server_id (``ReadersSeen``)."""
        return replicas.reader_elsewhere(self, say)

    def check_position(self, position: dict) -> None:
        preflight.check_position(self, position)

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
        if position is not None:
            self._refuse_foreign_position(position)
        stream = {"connect_timeout": 10, **{k: v for k, v in self.settings.items() if k != "db"}}
        # A read waits at most this long: inside a transaction the rest of it is already in the
        # binlog, and an idle server sends heartbeats; silence means the server is gone.
        stream.setdefault("read_timeout", max(30, int(3 * self.heartbeat_interval)))
        stream.setdefault("write_timeout", stream["read_timeout"])
        reader = _Reader(
            stream, self.server_id, blocking=True, resume_stream=True,
            # every event comes back to poll(): fetchone() would block on a filtered last event
            only_events=None, filter_non_implemented_events=False,
            only_schemas=sorted({t.split(".", 1)[0] for t in self.tables}),
            only_tables=sorted({t.split(".", 1)[1] for t in self.tables}),
            slave_heartbeat=self.heartbeat_interval or None, enable_logging=False, pymysql_wrapper=_Connection,
            freeze_schema=True)  # a known table id is not parsed again; DDL clears them (see _ddl)
        try:
            reader.connect_ctl()  # the library's metadata connection serves our checks too
            conn = reader._ctl_connection
            resuming = position is not None or self._position is not None
            checks.require(conn, self.tables, self.server_id, self.name, missing_ok=resuming)
            self.info = checks.server_info(conn)
            self._server = {"server_id": self.info["server_id"], "host": self.info["host"]}
            if resuming and self.info["mariadb"]:
                self._same_binlog(conn, position or self._position)
            self._json = checks.json_columns(conn, self.tables) if self.info["mariadb"] else {}
            self._gone = checks.missing_tables(conn, self.tables) if resuming else []
            if self._gone:
                end = self._current(conn)
                self._gone_until = (end["file"], end["pos"])
                log.warning("source %s: %s does not exist (renamed or dropped while cdc was stopped?): reading "
                            "what the binlog holds for it up to %s, then stopping", self.name,
                            ", ".join(self._gone), end)
            # A first run stores where it starts before it reads anything (the first poll hands
            # this position out): otherwise a restart before the first acknowledgement would
            # begin at the then current end of the binlog, and lose everything in between.
            if not resuming:
                self._start_commit = Commit(self._current(conn))
            position = position or self._position or self._start_commit.position
            self.file, self.pos = position.get("file", ""), position.get("pos", 4)
            gtid = position.get("gtid") if self.info["gtid"] else None
            reader.is_mariadb = self.info["mariadb"]
            reader.auto_position, reader.log_file, reader.log_pos = gtid, self.file or None, self.pos
            reader.connect_stream()
        except pymysql.MySQLError as exc:
            reader.close()
            within = checks.no_answer(exc, stream)
            why = (f"the server {checks.address(self.settings)} did not answer {within}: it accepts connections "
                   f"but does not answer (stopped, hung or overloaded)" if within
                   else f"{exc.args[-1]} (server {checks.address(self.settings)})")
            raise SourceConnectionError(f"cannot start the binlog stream: {why}", source=self.name) from exc
        except BaseException:
            reader.close()
            raise
        self.reader = reader
        self._tables = {}
        self._error = None
        self._dropped = {}
        self._heard_at = time.monotonic()
        if self._tx is not None:  # reopening mid-transaction: skip what was emitted
            self._skip = (self._tx[0], self._index)
        self._tx = None
        self._in_begin = False
        self._position = position
        self.gtids = GtidState(gtid or "", self.info["mariadb"]) if self.info["gtid"] else None
        log.info("source %s: reading the binlog of %s from %s (%s)", self.name, self.info["version"], position,
                 decoder_kind())

    def _refuse_foreign_position(self, position) -> None:
        """A checkpoint that is not a binlog position (a typo, or another source's) is refused
        with the fix, not met with a traceback (``check_position`` also asks the server)."""
        if not (
                isinstance(position, dict) and (isinstance(position.get("gtid"), str)
                                                or (isinstance(position.get("file"), str)
                                                    and isinstance(position.get("pos"), int)))):
            raise SourceSetupError(
                f"the checkpoint {position!r} is not a binlog position (expected {{\"gtid\": \"0-1-4711\", "
                f"\"file\": \"binlog.000003\", \"pos\": 81234}}); it may be another source's. Fix it with cdc "
                f"checkpoint set, or start over with cdc checkpoint reset <config> --source {self.name}",
                source=self.name)

    def _current(self, conn: pymysql.Connection) -> dict:
        """The end of the binlog now (without SHOW MASTER STATUS, gone in MySQL 8.4)."""
        with conn.cursor(pymysql.cursors.Cursor) as cur:
            cur.execute("SHOW BINARY LOGS")
            file, size = cur.fetchall()[-1][:2]
            position: dict = {"file": file, "pos": int(size)}
            if self.info["gtid"]:
                # MariaDB: the GTIDs at that very file and position (a commit in between would
                # otherwise make the GTIDs ahead of the file position)
                cur.execute("SELECT BINLOG_GTID_POS(%s, %s)" if self.info["mariadb"]
                            else "SELECT @@global.gtid_executed", (file, int(size)) if self.info["mariadb"] else None)
                gtid = cur.fetchone()[0]
                if gtid is None:  # not an event boundary (should not happen): the server's last GTIDs
                    cur.execute("SELECT @@global.gtid_binlog_pos")
                    gtid = cur.fetchone()[0]
                # in domain order, as gtid_binlog_pos and every later position have it (ids use it)
                position["gtid"] = str(GtidState(gtid or "", True)) if self.info["mariadb"] else gtid or ""
        position["server"] = self._server
        return position

    def _same_binlog(self, conn: pymysql.Connection, position: dict | None) -> None:
        """MariaDB: was ``position`` read from this server's binlog? Each position records (in
        ``server``) the GTID of the transaction it ends and the offset of that transaction's GTID
        event in the file: the server's event there must be that GTID. Another server, or this
        one with its data directory made again, has something else there (or no event), whatever
        its address or server_id. Another binlog is accepted only as a failover: this server holds,
        replicated, the transactions of the checkpoint (``gtid_binlog_state``) and is not the
        server_id the checkpoint was read from. Not checked: a position without that record (saved
        before cdc recorded it, a first run's start, one typed with ``cdc checkpoint set``: the
        next save records it), and a purged file (the server says when a position is lost)."""
        if not isinstance(position, dict):
            return
        gtid, file = position.get("gtid"), position.get("file")
        saved: dict = position["server"] if isinstance(position.get("server"), dict) else {}
        last, at = saved.get("gtid"), saved.get("at")
        if (not isinstance(gtid, str) or not isinstance(file, str) or not isinstance(last, str)
                or not _MARIADB_GTID.match(last) or not isinstance(at, int) or isinstance(at, bool)):
            return
        wanted = {g.split("-", 1)[0]: g for g in gtid.replace(" ", "").split(",") if g}
        if not all(_MARIADB_GTID.match(g) for g in wanted.values()):
            return
        with conn.cursor(pymysql.cursors.Cursor) as cur:
            cur.execute("SHOW BINARY LOGS")
            logs = [row[0] for row in cur.fetchall()]
            if file in logs:
                try:
                    cur.execute("SHOW BINLOG EVENTS IN %s FROM %s LIMIT 1", (file, at))
                    row = cur.fetchone()
                except pymysql.MySQLError as exc:  # not the start of an event
                    if checks.gone(conn, exc):  # a timeout or a lost connection: not an answer
                        raise
                    row = None
                if row is not None and row[2] == "Gtid" and last in str(row[5]).split():
                    return  # the binlog the checkpoint was read from
                found = (f"has {str(row[5]).strip()} at {file}:{at}" if row is not None
                         else f"has no binlog event at {file}:{at}")
            elif logs and file.rsplit(".", 1)[0] == logs[0].rsplit(".", 1)[0] and file < logs[0]:
                return  # purged: resuming says whether the position is lost
            else:
                found = f"has no binlog {file} (it has {logs[0] if logs else '-'} .. {logs[-1] if logs else '-'})"
            cur.execute("SELECT @@server_id, @@gtid_binlog_state")
            server_id, state = cur.fetchone()
        have = {tuple(g.split("-")[:2]): int(g.split("-")[2]) for g in (state or "").split(",") if g}
        missing = [g for g in wanted.values() if have.get(tuple(g.split("-")[:2]), -1) < int(g.split("-")[2])]
        same_id = saved.get("server_id") == server_id
        here = f"{self.info['host']} (server_id {server_id})"
        read_from = f"{saved.get('host', '?')} (server_id {saved.get('server_id', '?')})"
        if not missing and not same_id:
            log.warning("source %s: the checkpoint %s was read from %s; %s holds its transactions in another "
                        "binlog: resuming there by GTID, as after a failover", self.name, gtid, read_from, here)
            return
        why = ("it has the server_id of the server the checkpoint was read from, so it is another server with the "
               "same server_id, or that server with its data directory made again"
               if same_id else f"it does not hold {', '.join(missing)}, so it is not a replica of that server")
        raise PositionLostError(
            f"the checkpoint of source {self.name} ({gtid} at {file}:{position.get('pos')}, its last transaction "
            f"{last} at {file}:{at}) was read from {read_from}, but {here} {found}: {why}. Resuming here from that "
            f"position would skip this server's changes up to it, or deliver other ones. If the dsn points at the "
            f"wrong server, point it back. To read this server: cdc checkpoint reset CONFIG --source {self.name} "
            f"(a first run: snapshot: initial copies the tables again), or cdc checkpoint set CONFIG --source "
            f"{self.name} --position JSON with a position of this server; or set snapshot: when_needed, and cdc "
            f"starts over on this server with a full re-copy",
            source=self.name, position=position,
            reason=f"the checkpoint was read from another server's binlog ({read_from}), not from {here}")

    def start_over(self) -> None:
        """After a lost position (``snapshot: when_needed``): the next ``open(None)`` is a
        first run, from the current end of the binlog."""
        self._position = self._start_commit = self._tx = None
        self._index, self._skip, self._error = 0, (None, 0), None
        self.gtids, self.file, self.pos = None, "", 0

    def snapshot_reader(self) -> MySQLSnapshotReader:
        return MySQLSnapshotReader(self.settings, self.name)

    def snapshot_position(self) -> dict | None:
        return self._position

    def close(self) -> None:
        if self.reader is not None:
            _end_dump(self.reader)
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
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True  # decrypted bytes held by the TLS layer, which select cannot see
        previous = sock.gettimeout()
        sock.setblocking(False)
        try:
            if conn._rfile.peek(1):
                return True
        except (BlockingIOError, ssl.SSLWantReadError):
            pass  # nothing buffered (TLS: "want read" is no data, not an error)
        except OSError:
            return True  # let the read raise it
        finally:
            sock.settimeout(previous)
        return timeout > 0 and bool(select.select([sock], [], [], timeout)[0])

    def _failed(self, exc: pymysql.MySQLError) -> SourceError:
        if isinstance(exc, pymysql.OperationalError):
            code = exc.args[0] if exc.args else 0
            if code == 4052 or "same server_uuid/server_id" in str(exc.args[-1]):
                # MariaDB's ER_SLAVE_SAME_ID; MySQL says it with 1236, which is not a lost position
                server = f"{self.settings.get('host')}:{self.settings.get('port')}"
                return SourceSetupError(
                    f"another binlog reader with server_id {self.server_id} connected to {server}, and the server "
                    f"keeps only the newest: a second cdc run of this source, or another source or replica with "
                    f"server_id {self.server_id}. cdc stopped rather than take turns with it (nothing read is "
                    f"lost: the checkpoint is where this run stopped). Stop the other one, or give each its own "
                    f"server_id: (sources.{self.name}.server_id, unique among the server's replicas)",
                    source=self.name)
            if code == 1236:  # the binlog at our position is gone
                return PositionLostError(f"cannot resume from {self._position}: {exc.args[-1]}. The changes "
                                         f"after it that cdc had not delivered are lost to cdc. To start over "
                                         f"from now, accepting the loss: cdc checkpoint reset <config> --source "
                                         f"{self.name}, then re-snapshot the captured tables or reconcile the "
                                         f"destinations (snapshot: when_needed does both by itself)",
                                         source=self.name, position=self._position,
                                         reason=f"the server cannot serve it: {exc.args[-1]}")
            return SourceConnectionError(f"binlog stream failed: {exc.args[-1]}", source=self.name)
        return SourceError(f"binlog stream failed: {exc}", source=self.name)

    def poll(self, timeout: float) -> list:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if self.reader is None:
            raise SourceConnectionError("not connected", source=self.name)
        if self._start_commit is not None:
            start, self._start_commit = self._start_commit, None
            return [start]
        out: list = []
        try:
            self._read(out, timeout)
        except SourceError as exc:
            if not out:
                raise
            self._error = exc  # hand over what was read first: the skip counts it as emitted
        if out or self._heard:
            self._heard, self._heard_at = False, time.monotonic()
        elif self.heartbeat_interval:
            silence_check(self, time.monotonic())
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
        # Inside a transaction the rest of it is already in the binlog: read on without waiting,
        # but not past MAX_POLL_BYTES: the engine's max_in_flight_bytes is checked between polls,
        # so a transaction of wide rows must not arrive in one poll.
        stop_at = self.bytes_read + MAX_POLL_BYTES
        while (len(out) < self.max_poll_events and self.bytes_read < stop_at
               and (self._tx is not None or self._ready(wait))):
            wait = 0.0
            packet = reader.next_packet()
            if packet is None:
                raise SourceConnectionError("the server ended the binlog stream", source=self.name)
            self._heard = True  # any packet, a heartbeat too: the server is there
            data = packet._data
            kind_byte = data[5]
            if kind_byte == TABLE_MAP_EVENT:
                # A restarted server numbers its tables from zero again: when a table id now
                # names another table, forget the old one (even if the new one is not captured).
                table_id = _from(data[20:26], "little")
                known = tables.get(table_id)
                if known is None:  # names of other tables with changes: see _ddl (renames)
                    self._seen.add(_table_name(data))
                elif _table_name(data) != (known[1], known[2]):
                    del tables[table_id]
            op = _RAW_ROWS.get(kind_byte)
            if op is not None:  # a rows event of a captured table: read straight from the packet
                table_id = _from(data[20:26], "little")
                table = tables.get(table_id)
                if (table is not None and table_id in reader.table_map
                        and self._raw_rows(data, op, table, now_ms, out)):
                    continue
            ev = reader.wrap(packet)
            if ev is None:  # an event of another table, or one cdc does not need
                continue
            kind = ev.__class__
            self.bytes_read += ev.packet.event_size
            if kind in _ROWS:
                self._rows(ev, _ROWS[kind], now_ms, out)
            elif kind is XidEvent:
                self._commit(ev, out)
                if self._error is not None:  # after a captured table was dropped in the transaction
                    return
            elif kind is TableMapEvent:
                self._table_map(ev)
            elif kind is MariadbGtidEvent:
                self._begin(ev.gtid, ev)
                self._in_begin = not ev.flags & 1  # FL_STANDALONE: DDL, no BEGIN ... COMMIT
            elif kind is GtidEvent:  # MySQL writes a BEGIN Query event when there is one
                self._begin(ev.gtid, ev)
            elif kind is QueryEvent:
                self._query(ev, now_ms, out)
                if self._error is not None:  # after a DDL that needs the operator
                    return
            elif kind is RotateEvent:
                self.file, self.pos = ev.next_binlog, ev.position

    def _begin(self, gtid: str | None, ev) -> None:
        packet = ev.packet
        self._in_begin = False
        self._start(gtid, packet.log_pos - packet.event_size, packet.timestamp)

    def _query(self, ev, now_ms: int, out: list) -> None:
        """A Query event: BEGIN, COMMIT, a savepoint, DDL, or DML in statement format."""
        text = ev.query.strip()
        query = text.upper()
        if query == "BEGIN":
            if self._tx is None or self._tx[2] is None:
                self._begin(None, ev)
            self._in_begin = True
            return
        if query.startswith(_INSIDE):  # savepoints and XA steps do not end a transaction
            return
        if query == "COMMIT" or query == "ROLLBACK":
            self._commit(ev, out)
            return
        schema = ev.schema.decode(errors="replace") if isinstance(ev.schema, bytes) else (ev.schema or "")
        if _DML.match(text):  # statement format: no row events for what it changed
            target = next((m.group(1) for m in map(lambda p: p.match(text), _TARGETS) if m), text)
            table = self._captured_in(schema, target)
            if table is not None:
                self._statement_dml(table, text, ev)
            if self._in_begin:
                return  # inside a transaction: not a boundary
            self._commit(ev, out)  # a statement on its own (a non-transactional table)
            return
        # DDL: a transaction of its own
        truncate = _TRUNCATE.match(text)
        if truncate:
            self._truncate(_name(truncate.group(1), schema), ev, now_ms, out)
        renamed = self._ddl(text, schema)
        for table, how in self._dropped_by(text, schema):
            self._dropped.setdefault(table, how)
        if self._in_begin:  # CREATE ... SELECT: its rows follow, the XID ends it (and stops after a drop)
            return
        self._commit(ev, out)
        if renamed and self._error is None:
            old, new = renamed[0]
            fix = (f"{new} is in tables: already: remove {old} from tables:" if new in self.tables else
                   f"Put {new} in place of {old} in tables:")
            self._error = SourceSetupError(
                f"table {old} was renamed to {new} at GTID {self._tx_gtid or '-'} ({self.file}:{self.pos}); "
                f"every change before that was delivered. {fix} of source {self.name} (and in pipelines' "
                f"tables: and transforms that name it), then start cdc again", source=self.name)

    _tx_gtid: str | None = None
    _tx_at = 0  # where the current transaction's first event (its GTID event) starts

    def _captured_in(self, schema: str, text: str) -> str | None:
        """The captured table a statement names, if any (a conservative text match)."""
        for table, qualified, bare in self._patterns:
            if qualified.search(text) or (schema == table.split(".", 1)[0] and bare.search(text)):
                return table
        return None

    def _statement_dml(self, table: str, text: str, ev) -> None:
        gtid = self._tx[2] if self._tx is not None else None
        where = f"GTID {gtid} ({self.file}:{ev.packet.log_pos - ev.packet.event_size})" if gtid \
            else f"{self.file}:{ev.packet.log_pos - ev.packet.event_size}"
        statement = " ".join(text.split())[:200]
        if self.statement_dml == "skip":
            log.warning("source %s: skipped a statement-format change of %s at %s (statement_dml: skip); "
                        "the rows it changed are not captured: %s", self.name, table, where, statement)
            return
        raise SourceSetupError(
            f"a change of captured table {table} was written to the binlog as an SQL statement, not as rows, "
            f"at {where}: {statement!r}. The session that wrote it used binlog_format STATEMENT or MIXED, "
            f"and cdc reads row events only, so the rows it changed cannot be captured. Fix the writer: "
            f"SET SESSION binlog_format = 'ROW' (and check that nothing sets STATEMENT or MIXED). To go on: "
            f"re-snapshot or reconcile {table}, then either move the checkpoint past this transaction "
            f"(cdc checkpoint set) or set statement_dml: skip on source {self.name} to skip such statements "
            f"with a warning", source=self.name)

    def _truncate(self, qualified: str, ev, now_ms: int, out: list) -> None:
        """TRUNCATE of a captured table: an ``op: "t"`` event, as the PostgreSQL source emits."""
        if qualified not in self.tables:
            return
        if self._tx is None:
            self._begin(None, ev)
        key, prefix, gtid, ts_ms = self._tx  # type: ignore[misc]  # _begin set it
        index = self._index
        self._index += 1
        if self._skip[0] == key and index < self._skip[1]:
            return
        packet = ev.packet
        pos = packet.log_pos - packet.event_size
        db, name = qualified.split(".", 1)
        source = {"connector": "mysql", "name": self.name, "db": db, "table": name, "file": self.file,
                  "pos": pos, "row": 0, "gtid": gtid, "server_id": packet.server_id, "ts_ms": ts_ms}
        out.append(ChangeEvent(f"{prefix}{index}", "t", None, None, None, source, now_ms, qualified, pos))

    def _start(self, gtid: str | None, pos: int, timestamp: int) -> None:
        key = gtid if gtid is not None else f"{self.file}:{pos}"
        self._tx = (key, f"{key}:", gtid, timestamp * 1000)
        self._tx_at = pos
        self._index = 0

    def _commit(self, ev, out: list) -> None:
        tx = self._tx
        self._in_begin = False
        self._tx_gtid = tx[2] if tx is not None else None
        if tx is not None and tx[2] is not None and self.gtids is not None:
            self.gtids.add(tx[2])
        self.pos = ev.packet.log_pos
        position = {"file": self.file, "pos": self.pos}
        if self.gtids is not None:
            position["gtid"] = str(self.gtids)
        # the server, and where this transaction's GTID event is (_same_binlog checks it there)
        position["server"] = ({**self._server, "gtid": tx[2], "at": self._tx_at} if tx is not None and tx[2]
                              else self._server)
        self._position = position
        self._tx = None
        self._skip = (None, 0)
        out.append(Commit(position, ev.packet.timestamp * 1000))
        if self._dropped and self._error is None:
            self._error = self._drop_error()
        if self._gone and (self.file, self.pos) >= self._gone_until and self._error is None:
            self._tables_gone()

    def _ddl(self, text: str = "", schema: str = "") -> list[tuple[str, str]]:
        """A statement that may change a table: read the next TableMaps afresh, and the
        JSON columns (MariaDB's are text with a CHECK, which TableMaps do not show)."""
        self.reader.table_map.clear()
        self._tables.clear()
        if self.info.get("mariadb") and self._captured_in(schema, text) is not None:
            self._json = checks.json_columns(self.reader._ctl_connection, self.tables)
        pairs = []
        rename = _RENAME.match(text)
        if rename:
            pairs = [p.split() for p in re.split(r"\s*,\s*", rename.group(1).strip().rstrip(";"))]
            pairs = [(p[0], p[2]) for p in pairs if len(p) == 3 and p[1].upper() == "TO"]
        alter = _ALTER_RENAME.match(text)
        if alter:
            pairs = [(alter.group(1), alter.group(2))]
        renamed = []
        for old, new in pairs:
            old, new = _name(old, schema), _name(new, schema)
            if old in self.tables and old != new:
                self._renamed[old] = new
                renamed.append((old, new))
            elif new in self.tables and tuple(old.split(".", 1)) in self._seen and self._error is None:
                # the config already names the new name: what was written under the old one was not read
                self._error = SourceSetupError(
                    f"captured table {new} was called {old} until this rename at {self.file}:{self.pos} "
                    f"(GTID {self._tx[2] if self._tx else '-'}), and {old} is not in tables:, so the changes "
                    f"made to it under that name since this run started were not captured. Re-snapshot "
                    f"{new} or reconcile the destinations with it; started again, cdc goes on after the "
                    f"rename. (To capture such changes, rename while cdc runs: it stops after the rename, "
                    f"then change tables:.)", source=self.name)
        return renamed

    def _dropped_by(self, text: str, schema: str) -> list[tuple[str, str]]:
        """The captured tables a DDL statement drops or replaces, with how."""
        drop = _DROP_TABLE.match(text)
        if drop:
            names = _DROP_OPTIONS.sub("", re.sub(r"/\*.*?\*/", " ", drop.group(1)).strip().rstrip(";"))
            dropped = {_name(n, schema) for n in names.split(",") if n.strip()}
            return [(t, "dropped") for t in self.tables if t in dropped]
        database = _DROP_DATABASE.match(text)
        if database:
            name = database.group(1).strip("`")
            return [(t, f"dropped with its database (DROP DATABASE {name})") for t in self.tables
                    if t.split(".", 1)[0] == name]
        replace = _REPLACE_TABLE.match(text)
        if replace and _name(replace.group(1), schema) in self.tables:
            return [(_name(replace.group(1), schema), "replaced by CREATE OR REPLACE TABLE")]
        return []

    def _drop_error(self) -> SourceSetupError:
        """A captured table was dropped (or replaced): its rows stay downstream with no event
        saying so. Stop after the drop with what is at risk and the fix, as for a rename."""
        dropped, self._dropped = self._dropped, {}
        try:
            missing = set(checks.missing_tables(self.reader._ctl_connection, list(dropped)))
        except (pymysql.MySQLError, AttributeError):  # cannot tell: say both fixes
            missing = None
        lines = []
        for table, how in dropped.items():
            copy = f"cdc snapshot CONFIG --source {self.name} --table {table}"
            if missing is not None and table not in missing:
                fix = (f"{table} exists again now: start cdc again and it streams the new table from after the "
                       f"drop (its rows arrive as inserts); for a destination equal to the new table, empty "
                       f"{table} there first, or copy it again afterwards with {copy}. (Not to capture it any more: "
                       f"remove it from tables: of source {self.name}.)")
            else:
                fix = (f"{table} does not exist now: remove it from tables: of source {self.name} (and from "
                       f"pipelines' tables: and transforms that name it), then start cdc again; or create "
                       f"it again, start cdc again, and copy it with {copy}")
            lines.append(f"table {table} was {how}: the rows it held stay in the sinks (a database mirror "
                         f"keeps them: a drop sends no delete events); delete them there if they must go. {fix}")
        return SourceSetupError(
            f"at GTID {self._tx_gtid or '-'} ({self.file}:{self.pos}) a captured table was dropped; every change "
            f"before that was delivered and nothing after it was read:\n  - " + "\n  - ".join(lines),
            source=self.name)

    def _tables_gone(self) -> None:
        """Everything the binlog held when we started has been read: say what to change
        about the configured tables that no longer exist."""
        lines = [f"table {t} was renamed to {self._renamed[t]}: put {self._renamed[t]} in its place in tables:"
                 if t in self._renamed else f"table {t} does not exist any more (dropped, or renamed while cdc "
                 f"was stopped): remove it from tables:, or put its new name there" for t in self._gone]
        self._error = SourceSetupError(
            f"every change the binlog held up to {self._gone_until[0]}:{self._gone_until[1]} was delivered, "
            f"including those of the missing tables; now change the config of source {self.name} (and "
            f"pipelines' tables:), then start cdc again:\n  - " + "\n  - ".join(lines), source=self.name)
        self._gone = []

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
        key, prefix, gtid, ts_ms = self._tx  # type: ignore[misc]  # callers start a transaction first; no check on the hot path
        base = {"connector": "mysql", "name": self.name, "db": db, "table": name, "file": self.file,
                "pos": pos, "row": 0, "gtid": gtid, "server_id": server_id, "ts_ms": ts_ms}
        index = self._index
        # rows emitted before a reconnect are skipped (their number is the first to emit)
        first = self._skip[1] - index if self._skip[0] == key and index < self._skip[1] else 0
        had = len(out)
        try:
            count = emit(*args, op, first, index, prefix, base, now_ms, qualified, pos, out.append)
            if count is None:  # the library's decoding (emit() is then the library event's)
                count = self._library_rows(args[0], op, first, index, prefix, base, now_ms, qualified, pos, out)
        except BaseException:
            del out[had:]  # a rows event is handed on whole or not at all (a row that fails to decode)
            raise
        self._index = index + count

    def _library_rows(self, ev, op, first, index, prefix, base, now_ms, qualified, pos, out) -> int:
        json_null: list = []
        pairs = self._tables[ev.table_id][3].library_rows(ev, json_null)
        key_names = self._tables[ev.table_id][4]
        for rowno in range(first, len(pairs)):
            before, after = pairs[rowno]
            row = after if after is not None else before
            src = dict(base, row=rowno)
            if json_null[rowno]:
                src["json_null"] = json_null[rowno]
            out.append(ChangeEvent(f"{prefix}{index + rowno}", op, before, after,
                                   {k: row[k] for k in key_names} if key_names else None,
                                   src, now_ms, qualified, pos))
        return len(pairs)
