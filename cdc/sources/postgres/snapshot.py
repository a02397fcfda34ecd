"""Reading PostgreSQL tables chunk by chunk for snapshots (``docs/snapshots.md``).

Each chunk is one short ``REPEATABLE READ READ ONLY`` transaction on a connection of
its own: ``pg_current_snapshot()`` (the chunk's snapshot: xmin, xmax, in-progress
xids), then ``COPY (SELECT ... ORDER BY key LIMIT n) TO STDOUT`` in text form, whose
values go through the same converters as pgoutput's (both are the types' text
output, with the replication connection's session settings).  After the commit a
non-transactional logical message (``pg_logical_emit_message``: WAL only, no table
write) marks the chunk's high watermark in the stream.
"""

from __future__ import annotations

import hashlib
import re
import select
import socket
import threading
import time
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import pq, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ...errors import SourceConnectionError, SourceSetupError
from ...event import ChangeEvent
from ...lsn import format_lsn, parse_lsn
from ...snapshot.chunk import Chunk, CopyRefused, SnapshotInputError, TableLocked, emit_events, key_changed
from ...snapshot.where import condition_problem
from .replication import SESSION_OPTIONS
from .types import _bool, _timestamp, converter_for, is_json

__all__ = ["PostgresSnapshotReader", "WATERMARK_PREFIX"]

WATERMARK_PREFIX = "cdc_heartbeat"  # the source turns these messages into commits
MAX_NOTED = 200_000                 # xids remembered for the check against a chunk's snapshot
_ESCAPE = re.compile(rb"\\(?:([0-7]{1,3})|x([0-9A-Fa-f]{1,2})|(.))", re.S)
_SIMPLE = {b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v"}


def _unescape(field: bytes) -> bytes:
    """COPY's text escapes undone (only called on fields holding a backslash)."""
    def sub(m: re.Match) -> bytes:
        if m.group(1):
            return bytes([int(m.group(1), 8) & 0xFF])
        if m.group(2):
            return bytes([int(m.group(2), 16)])
        c = m.group(3)
        return _SIMPLE.get(c, c)
    return _ESCAPE.sub(sub, field)



#: seconds the copy's connection waits to connect (a ``connect_timeout`` in the dsn wins), the
#: server's ``statement_timeout`` for its statements, and how long cdc waits for an answer to one
#: round trip before it takes the server for hung (longer: a live server ends a slow statement first)
CONNECT_TIMEOUT = 10
STATEMENT_TIMEOUT = 60.0
LOCK_TIMEOUT = 5.0  # seconds a chunk waits for a lock another session holds on its table, then tries later
READ_TIMEOUT = 90.0

# The server refuses the copy's connection and will go on refusing until someone acts: the copy
# is dropped.  Other refusals (starting up, too many clients overall, nothing listening) are retried.
_REFUSED = [
    ("password authentication failed", ": the dsn's user or password is not (or no longer) accepted; the "
                                       "replication stream, connected before, goes on until it reconnects"),
    ("too many connections for role", ": the copy needs a connection of its own besides the replication "
                                      "stream's: raise the role's limit (ALTER ROLE ... CONNECTION LIMIT n)"),
    ("no pg_hba.conf entry", ": allow the connection in pg_hba.conf (a replication entry is not enough)"),
    ("pg_hba.conf rejects connection", ": allow the connection in pg_hba.conf"),
    ("is not permitted to log in", ": ALTER ROLE ... LOGIN"),
    ("authentication failed", ""),
    ("permission denied for database", ": GRANT CONNECT ON DATABASE ... TO the dsn's user"),
    ("does not exist", ""),
]


def _server_message(exc: psycopg.OperationalError) -> str:
    """The server's (or libpq's) reason in a failed connection's error, on one line."""
    text = "; ".join(" ".join(line.split()) for line in str(exc).splitlines() if line.strip())
    for prefix in ("FATAL: ", "failed: "):
        if prefix in text:
            text = text.rsplit(prefix, 1)[1]
    return text


def _wait_readable(pgconn) -> None:
    """Wait for the server in ``select`` (which lets the sink threads run), then read."""
    select.select([pgconn.socket], [], [], 10.0)
    pgconn.consume_input()  # raises when the connection is lost


def _next_result(pgconn):
    """``get_result`` without blocking in libpq while the GIL is held."""
    while pgconn.is_busy():
        _wait_readable(pgconn)
    return pgconn.get_result()


def one(conn: psycopg.Connection, query: str) -> tuple:
    """The one row of a query that always returns one."""
    row = conn.execute(query).fetchone()
    assert row is not None
    return row

class _Watermark:
    __slots__ = ("xmin", "xmax", "xip", "high")

    def __init__(self, xmin: int, xmax: int, xip: frozenset, high: int) -> None:
        self.xmin, self.xmax, self.xip, self.high = xmin, xmax, xip, high

    def full(self, xid32: int) -> int:
        """A 32-bit xid from the stream as a 64-bit xid near this snapshot's."""
        x = (self.xmax & ~0xFFFFFFFF) | xid32
        if x > self.xmax + 0x80000000:
            x -= 1 << 32
        elif x < self.xmax - 0x80000000:
            x += 1 << 32
        return x

    def visible(self, xid32: int) -> bool:
        x = self.full(xid32)
        return x < self.xmin or (x < self.xmax and x not in self.xip)


# The table's shape: its oid, its columns (number, name, type), its primary key, its
# storage; read after each chunk's commit, in a snapshot of its own (in the chunk's, the
# catalog is as old as the rows).  A change since the columns were read: the chunk and
# the columns are read again.  DDL that commits after the COPY took its lock waits for
# the commit: a change that reached the chunk shows here.
_SHAPE = ("SELECT c.oid || '|' || coalesce((SELECT string_agg(a.attnum || ' ' || a.attname || ' ' || a.atttypid"
          " || ' ' || a.atttypmod, ',' ORDER BY a.attnum) FROM pg_attribute a WHERE a.attrelid = c.oid"
          " AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''), '') || '|'"
          " || coalesce((SELECT i.indkey::text FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), '')"
          " || '|' || c.relfilenode FROM pg_class c WHERE c.oid = {}::regclass")


class _Table:
    def __init__(self, table: str, names: list[str], converters: list, key: list[str],
                 types: list[tuple[str, str]] | None = None, shape: str = "") -> None:
        self.table = table
        self.shape = shape
        self.schema, self.name = table.split(".", 1)
        self.names = names
        self.converters = converters
        self.key = key
        self.key_index = [names.index(k) for k in key]
        # (format_type, typname) of the key columns: the last key read goes back as a literal of that type
        self.key_types = [types[i] for i in self.key_index] if types else [("", "")] * len(key)
        self.json = [i for i, conv in enumerate(converters) if is_json(conv)]
        self.decode = _compile(self)

    def slow(self, line: bytes, json_null: dict) -> tuple[tuple, dict]:
        """One line with NULLs or escapes (JSON nulls go to ``json_null``, as in ``decode``)."""
        values: list = []
        nulls = []
        for f, conv in zip(line[:-1].split(b"\t"), self.converters):
            if f == b"\\N":
                values.append(None)
                continue
            if b"\\" in f:
                f = _unescape(f)
            values.append(f.decode() if conv is None else conv(f))
            if values[-1] is None and is_json(conv):
                nulls.append(self.names[len(values) - 1])
        key = tuple([values[i] for i in self.key_index])
        if nulls:
            json_null[key] = nulls
        return key, dict(zip(self.names, values))


_INLINE = {int: "int({})", _bool: "{} == 't'",
           # " BC" (ends in C) takes the converter
           _timestamp: "({0}.replace(' ', 'T', 1) if {0}[-1] != 'C' else _timestamp({0}.encode()))"}


def _compile(t: _Table):
    """``decode(lines, json_null) -> [(key, event)]`` unrolled for the table's columns: each
    row's ``op: "r"`` event, prepared (``prepared_event``).  A line without a backslash has
    neither NULLs (``\\N``) nor escapes: it is split as text and each column converted
    inline; other lines take ``_Table.slow``.  The json columns of a row that hold JSON
    ``null`` go to ``json_null[key]``."""
    env = {"slow": t.slow, "new": ChangeEvent.__new__, "Event": ChangeEvent, "b2": hashlib.blake2b,
           "table": t.table, "key_names": t.key, "_timestamp": _timestamp}
    key = "".join(f"v{i}, " for i in t.key_index)
    key_dict = ", ".join(f"{name!r}: v{i}" for name, i in zip(t.key, t.key_index))
    code = ["def decode(lines, json_null, slow=slow, int=int, new=new, Event=Event, b2=b2, table=table, zip=zip,"
            " dict=dict):",
            "    out = []",
            "    append = out.append",
            "    for line in lines:",
            "        e = new(Event)",
            "        if 92 in line:",  # a backslash
            "            key, row = slow(line, json_null)",
            "            e.key = dict(zip(key_names, key))",
            "        else:",
            "            f = line[:-1].decode().split('\\t')"]
    for i, conv in enumerate(t.converters):
        if conv is None:
            expr = f"f[{i}]"
        elif conv in _INLINE:
            expr = _INLINE[conv].format(f"f[{i}]")
        else:
            env[f"c{i}"] = conv
            expr = f"c{i}(f[{i}].encode())"
        code.append(f"            v{i} = {expr}")
    row = ", ".join(f"{name!r}: v{i}" for i, name in enumerate(t.names))
    code += [f"            key = ({key})",
             f"            row = {{{row}}}",
             f"            e.key = {{{key_dict}}}"]
    if t.json:  # no \N on this line: None is JSON null
        pairs = ", ".join(f"({t.names[i]!r}, v{i})" for i in t.json)
        code += [f"            if {' or '.join(f'v{i} is None' for i in t.json)}:",
                 f"                json_null[key] = [n for n, v in ({pairs},) if v is None]"]
    code += [  # the row's text as the server sent it: the same values give the same digest
             "        e.id = b2(line, digest_size=12).hexdigest(); e.op = 'r'; e.before = None; e.after = row",
             "        e.table = table; e.destination = None; e.message = None",
             "        append((key, e))",
             "    return out"]
    exec("\n".join(code), env)  # noqa: S102 - generated from column names via repr()
    return env["decode"]


def _key_numbers(shape: str) -> str:
    """The primary key's column numbers in a ``_SHAPE``."""
    return shape.split("|")[2] if shape.count("|") >= 3 else ""


def _key_literal(value: Any, type_sql: str, typname: str) -> sql.Composable:
    """A key value as in the event, as the column's type: compared as the stored value is
    (a bytea is base64 in the event; a real read as numeric compares as another value)."""
    if value is None or not type_sql:
        return sql.Literal(value)
    if typname == "bytea" and isinstance(value, str):
        return sql.SQL("decode({}, 'base64')").format(sql.Literal(value))
    return sql.SQL("CAST({} AS {})").format(sql.Literal(value), sql.SQL(type_sql))


class PostgresSnapshotReader:
    def __init__(self, dsn: str, source_name: str, db: str) -> None:
        self.dsn = dsn
        self.source_name = source_name
        self.db = db
        params: dict[str, Any] = conninfo_to_dict(dsn)  # values parsed from a DSN string are strings
        options = " ".join(filter(None, [params.pop("options", ""), SESSION_OPTIONS]))
        self.conninfo = make_conninfo(**params, options=options,
                                      application_name=params.get("application_name", "cdc") + "_snapshot")
        self.params = params
        self.server = f"{params.get('host') or 'localhost'}:{params.get('port') or 5432}"
        self.conn: psycopg.Connection | None = None
        self._tables: dict[str, _Table] = {}
        self._noted: set[int] = set()        # xids of changes of copied tables handed on
        self._floor: dict[str, int] = {}     # table -> an xid taken when its copy (re)started here
        self._shapes: dict[str, tuple[list[str], str, str]] = {}  # table -> its key's names and numbers, its oid

    # ---- connection and metadata ----------------------------------------------------

    def _connect(self) -> psycopg.Connection:
        if self.conn is None or self.conn.closed:
            conninfo = self.conninfo if "connect_timeout" in self.params else \
                make_conninfo(self.conninfo, connect_timeout=CONNECT_TIMEOUT)  # the dsn's wins
            try:
                conn = psycopg.connect(conninfo, autocommit=True)
            except psycopg.OperationalError as exc:
                message = _server_message(exc)
                for pattern, hint in _REFUSED:
                    if pattern in message:
                        raise CopyRefused(f"the server {self.server} refuses the copy's connection: {message}{hint}",
                                       source=self.source_name) from None
                if "timeout expired" in message:
                    message = (f"the server {self.server} did not answer within "
                               f"{self.params.get('connect_timeout', CONNECT_TIMEOUT)} s (connect_timeout): it "
                               f"accepts connections but does not answer (stopped, hung or overloaded)")
                raise SourceConnectionError(f"snapshot connection to {self.server}: {message}",
                                            source=self.source_name) from exc
            self.conn = conn
            settings = [f"SET {name} = {int(seconds * 1000)}"
                        for name, seconds in (("statement_timeout", STATEMENT_TIMEOUT), ("lock_timeout", LOCK_TIMEOUT))
                        if name not in self.conninfo]  # the dsn's options win
            if settings:
                try:
                    with self._answer("the copy's session settings"):
                        conn.execute("; ".join(settings))
                except psycopg.Error as exc:
                    self.close()
                    raise SourceConnectionError(f"snapshot connection to {self.server}: {str(exc).strip()}",
                                                source=self.source_name) from exc
        return self.conn

    @contextmanager
    def _answer(self, what: str):
        """The server must answer within READ_TIMEOUT: past it, the connection's socket is shut
        (a server that accepts and never answers would hold this thread, and the stream, for
        ever) and the error names the server, ``what`` it did not answer and for how long."""
        conn = self.conn
        assert conn is not None
        fired = threading.Event()

        def shut() -> None:
            fired.set()
            try:
                sock = socket.socket(fileno=conn.pgconn.socket)
            except (OSError, psycopg.Error):
                return
            try:
                sock.shutdown(socket.SHUT_RDWR)  # the waiting thread sees the connection end
            except OSError:
                pass
            finally:
                sock.detach()  # the descriptor stays libpq's
        timer = threading.Timer(READ_TIMEOUT, shut)
        timer.daemon = True
        timer.start()
        try:
            yield
        except psycopg.Error as exc:
            if not fired.is_set():
                raise
            self.close()
            raise SourceConnectionError(
                f"the server {self.server} did not answer {what} within {READ_TIMEOUT:g} s: it accepts "
                f"connections but does not answer (stopped, hung or overloaded)", source=self.source_name) from exc
        finally:
            timer.cancel()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _table(self, table: str, after: list | None = None) -> _Table:
        t = self._tables.get(table)
        if t is not None:
            return t
        conn = self._connect()
        try:
            with self._answer(f"the query of the columns of {table}"):
                columns, key, shape = self._metadata(conn, table)
        except psycopg.OperationalError as exc:
            self.close()
            raise SourceConnectionError(f"snapshot: columns of {table} (server {self.server}): {str(exc).strip()}",
                                        source=self.source_name) from exc
        except psycopg.Error as exc:  # e.g. the table was dropped
            raise SnapshotInputError(f"cannot read {table}: {str(exc).strip()}", source=self.source_name) from None
        if not key:
            raise SnapshotInputError(f"table {table} has no primary key: a snapshot reads tables in key order "
                                     f"(add a primary key)", source=self.source_name)
        t = _Table(table, [c[0] for c in columns], [converter_for(c[1], c[2]) for c in columns], key,
                   [(c[3], c[2]) for c in columns], shape)
        old = self._shapes.get(table)
        if after is not None and old is not None and old[2] != shape.split("|", 1)[0]:
            raise SourceSetupError(
                f"table {table} was dropped and created again while it was copied: rows of the old table"
                f" copied before are not deleted downstream, rows of the new one up to key {list(after)} are not"
                f" copied, and PostgreSQL removed it from the publication, so its changes are not streamed"
                f" (those until cdc starts again are lost to the stream); cdc stops. Start cdc again (it puts the"
                f" table back in the publication), then copy it again: cdc snapshot CONFIG --source"
                f" {self.source_name} --table {table}; rows deleted meanwhile stay in database mirrors",
                source=self.source_name)
        if after is not None and (len(after) != len(key) or old is not None and old[1] != _key_numbers(shape)):
            was = f"from ({', '.join(old[0])}) " if old is not None else ""
            raise SnapshotInputError(key_changed(table, was, key, after, self.source_name), source=self.source_name)
        self._shapes[table] = (key, _key_numbers(shape), shape.split("|", 1)[0])
        self._tables[table] = t
        return t

    def _changed(self, conn: psycopg.Connection, t: _Table) -> bool:
        """The table's shape is not the one its columns were read with (their cache is
        dropped).  A dropped table raises (psycopg.Error)."""
        shape = one(conn, _SHAPE.format(sql.Literal(sql.Identifier(t.schema, t.name).as_string(conn))
                                        .as_string(conn)))[0]
        if shape == t.shape:
            return False
        self._tables.pop(t.table, None)
        return True

    @staticmethod
    def _metadata(conn: psycopg.Connection, table: str) -> tuple[list, list[str], str]:
        ident = sql.Identifier(*table.split(".", 1)).as_string(conn)
        columns = conn.execute(
            "SELECT a.attname, a.atttypid, t.typname, format_type(a.atttypid, a.atttypmod)"
            " FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
            " WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''"
            " ORDER BY a.attnum", (ident,)).fetchall()
        key = [r[0] for r in conn.execute(
            "SELECT a.attname FROM pg_index i"
            " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)"
            " WHERE i.indrelid = %s::regclass AND i.indisprimary ORDER BY array_position(i.indkey, a.attnum)",
            (ident,)).fetchall()]
        shape = one(conn, _SHAPE.format(sql.Literal(ident).as_string(conn)))[0]
        return columns, key, shape

    def estimate(self, table: str) -> int | None:
        try:
            conn = self._connect()
        except CopyRefused:  # read_chunk says it, with the way back
            return None
        try:
            with self._answer(f"the row estimate of {table}"):
                row = conn.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                                   (sql.Identifier(*table.split(".", 1)).as_string(conn),)).fetchone()
        except psycopg.Error:
            return None
        return int(row[0]) if row and row[0] >= 0 else None

    def row_bytes(self, table: str) -> float | None:
        """``ReadsByBytes``: the table's size (TOAST included, compressed) over its row count,
        from the last ANALYZE or VACUUM; None before either."""
        try:
            conn = self._connect()
            with self._answer(f"the row size of {table}"):
                row = conn.execute(
                    "SELECT pg_table_size(oid) / reltuples FROM pg_class WHERE oid = %s::regclass AND reltuples > 0",
                    (sql.Identifier(*table.split(".", 1)).as_string(conn),)).fetchone()
        except (psycopg.Error, SourceConnectionError, CopyRefused):
            return None
        return float(row[0]) if row and row[0] else None

    def check_where(self, table: str, where: str) -> None:
        """``cdc snapshot``: the table and the condition (SnapshotInputError), or the server's
        failure (another SourceError)."""
        try:
            self._table(table)  # a table without a primary key is refused here
        except CopyRefused as exc:  # the server's refusal, not the table's or the condition's
            raise SourceSetupError(exc.detail, source=self.source_name) from None
        self._one_condition(table, where)
        if where.strip().lower() == "true":  # no condition: the table was checked above
            return
        conn = self._connect()
        query = sql.SQL("EXPLAIN SELECT 1 FROM {} WHERE ({})").format(
            sql.Identifier(*table.split(".", 1)), sql.SQL(where))
        try:
            with self._answer("the check of --where"), conn.transaction():
                conn.execute("SET TRANSACTION READ ONLY")
                conn.execute(query)
        except psycopg.errors.LockNotAvailable:
            return  # a session holds the table (a migration): the copy checks the condition when it runs
        except psycopg.OperationalError as exc:
            self.close()
            raise SourceConnectionError(f"checking --where (server {self.server}): {str(exc).strip()}",
                                        source=self.source_name) from exc
        except psycopg.Error as exc:
            raise SnapshotInputError(f"--where {where!r} on {table}: {str(exc).strip()}",
                                     source=self.source_name) from None

    # ---- chunks ---------------------------------------------------------------------------

    def _one_condition(self, table: str, where: str | None) -> None:
        problem = condition_problem(where, mysql=False) if where else None
        if problem:
            raise SnapshotInputError(f"--where {where!r} on {table}: {problem}", source=self.source_name)

    def read_chunk(self, table: str, after: list | None, limit: int, where: str | None,
                   max_bytes: int | None = None) -> Chunk | None:
        try:
            return self._read_chunk(table, after, limit, where, max_bytes)
        except CopyRefused as exc:
            raise exc.dropped(table, after, where) from None

    def _read_chunk(self, table: str, after: list | None, limit: int, where: str | None,
                    max_bytes: int | None) -> Chunk | None:
        t = self._table(table, after)
        self._one_condition(table, where)  # a request that did not come through ``cdc snapshot``
        conn = self._connect()
        try:
            with self._answer(f"a chunk of {table}"):
                if table not in self._floor:
                    # every transaction committed before now is visible to the snapshots we
                    # accept (see docs/snapshots.md): remember an xid taken now
                    with conn.transaction(force_rollback=True):
                        self._floor[table] = int(one(conn, "SELECT pg_current_xact_id()::text")[0])
                query = self._query(t, after, limit + 1, where).as_bytes(conn)
                # Two round trips in the simple query protocol.  The high watermark message is
                # written after the snapshot was taken; the xid makes the commit flush the WAL
                # (the message alone would wait for the WAL writer).  And: a transaction
                # committed before this copy started but not visible in the snapshot makes the
                # snapshot unusable for now (see docs/snapshots.md).
                try:
                    text, lines, nbytes, cut = self._copy(
                        conn, b"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT pg_current_snapshot()::text; "
                        + query, max_bytes)
                    ident = sql.Literal(sql.Identifier(t.schema, t.name).as_string(conn)).as_string(conn)
                    high, racy, shape = self._simple(conn, (
                        f"SELECT pg_logical_emit_message(false, '{WATERMARK_PREFIX}', '')::text, pg_current_xact_id(),"
                        f" (SELECT count(*) FROM pg_snapshot_xip(pg_current_snapshot()) x"
                        f"  WHERE x < '{int(self._floor[table])}'::xid8 AND pg_xact_status(x) = 'committed'); COMMIT;"
                        f" {_SHAPE.format(ident)}"
                    ).encode())
                except BaseException:
                    if conn.pgconn.status == pq.ConnStatus.OK:
                        conn.pgconn.exec_(b"ROLLBACK")
                    raise
        except psycopg.errors.LockNotAvailable:
            raise TableLocked(f"a chunk of {table} waited {LOCK_TIMEOUT:g} s (lock_timeout) for a lock on it: "
                              f"{self._lock_holders(t)}", source=self.source_name) from None
        except psycopg.OperationalError as exc:
            self.close()
            raise SourceConnectionError(f"snapshot read of {table} (server {self.server}): {str(exc).strip()}",
                                        source=self.source_name) from exc
        except psycopg.Error as exc:
            try:  # e.g. a column renamed since the columns were read: read with the new ones
                if self._changed(conn, t):
                    return None
            except psycopg.Error:
                pass
            hint = ""
            if isinstance(exc, psycopg.errors.QueryCanceled) or "statement timeout" in str(exc):
                hint = (f" (a chunk's query took longer than the copy's statement_timeout, {STATEMENT_TIMEOUT:g} s"
                        f" unless the dsn's options set it: a --where no index helps, a large snapshot_chunk_size;"
                        f" lower snapshot_chunk_size, or set a longer one: ?options=-c%20statement_timeout=600s)")
            raise SnapshotInputError(f"cannot read {table}: {str(exc).strip()}{hint}",
                                     source=self.source_name) from None
        if shape != t.shape:
            # DDL since the columns were read, or since the chunk's snapshot (a table-rewriting
            # ALTER TABLE is not MVCC-safe: the snapshot sees the table empty): read again
            self._tables.pop(table, None)
            return None
        json_null: dict[tuple, list[str]] = {}
        rows = t.decode(lines, json_null)
        xmin, xmax, xip = text.split(":")
        wm = _Watermark(int(xmin), int(xmax), frozenset(int(x) for x in xip.split(",") if x),
                        parse_lsn(high))
        noted = self._noted
        if racy or any(not wm.visible(x) for x in noted):
            return None
        if noted:  # below xmin, visible to every later snapshot (xmin only grows)
            self._noted = {x for x in noted if wm.full(x) >= wm.xmin}
        done = len(rows) <= limit and not cut
        if len(rows) > limit:  # the row that tells the end is not the chunk's: nor are its bytes
            nbytes -= len(lines[limit])
            rows = rows[:limit]
        last_key = list(rows[-1][0]) if rows else after
        return Chunk(table, rows, last_key, done, wm, t.key, json_null=json_null, nbytes=nbytes)

    def _lock_holders(self, t: _Table) -> str:
        """The sessions a read of ``t`` waits for, for the message: those holding an ACCESS
        EXCLUSIVE lock on it, and those waiting for one (an ALTER TABLE queued behind another
        session's transaction, which the read queues behind) with the sessions they wait for."""
        try:
            with self._answer("who holds a lock on the table"):
                conn = self._connect()
                rows = conn.execute(
                    "SELECT l.pid, l.granted, CASE WHEN l.granted THEN '{}'::int[] ELSE pg_blocking_pids(l.pid) END"
                    " FROM pg_locks l WHERE l.relation = %s::regclass AND l.mode = 'AccessExclusiveLock'"
                    " ORDER BY l.granted DESC, l.pid", (sql.Identifier(t.schema, t.name).as_string(conn),)).fetchall()
                pids = sorted({pid for pid, _, _ in rows} | {b for _, _, blockers in rows for b in blockers})
                about = {row[0]: row[1:] for row in conn.execute(
                    "SELECT pid, state, application_name, usename, extract(epoch FROM now() - xact_start)::int"
                    " FROM pg_stat_activity WHERE pid = ANY (%s)", (pids,))}
        except (psycopg.Error, SourceConnectionError):
            return "another session (pg_locks names it)"
        if not rows:
            return "another session (gone by now)"

        def who(pid: int) -> str:
            state, app, user, secs = about.get(pid, (None, None, None, None))
            open_for = f", its transaction open for {secs} s" if secs is not None else ""
            return f"pid {pid} ({state or 'state hidden'}{open_for}, application {app or '?'}, user {user or '?'})"
        parts = [f"{who(pid)} holding an ACCESS EXCLUSIVE lock" if granted else
                 f"{who(pid)} waiting for an ACCESS EXCLUSIVE lock (an ALTER TABLE?)"
                 + (f" behind {', '.join(who(b) for b in blockers)}" if blockers else "")
                 for pid, granted, blockers in rows]
        return "; ".join(parts) + ": end those transactions (or SELECT pg_terminate_backend(pid)) to let the copy go on"

    def _query(self, t: _Table, after: list | None, limit: int, where: str | None) -> sql.Composed:
        key = sql.SQL(", ").join(sql.Identifier(k) for k in t.key)
        conditions = []
        if after is not None:
            conditions.append(sql.SQL("({}) > ({})").format(key, sql.SQL(", ").join(
                _key_literal(v, *typ) for v, typ in zip(after, t.key_types))))
        if where:
            conditions.append(sql.SQL("({})").format(sql.SQL(where)))
        return sql.SQL("COPY (SELECT {} FROM {}{} ORDER BY {} LIMIT {}) TO STDOUT").format(
            sql.SQL(", ").join(sql.Identifier(n) for n in t.names),
            sql.Identifier(t.schema, t.name),
            sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions) if conditions else sql.SQL(""),
            key, sql.Literal(limit))

    @staticmethod
    def _results(pgconn):
        """The results of a simple query, raising on an error (after reading them all)."""
        error = None
        while (result := _next_result(pgconn)) is not None:
            if result.status == pq.ExecStatus.FATAL_ERROR and error is None:
                error = result.error_message.decode(errors="replace").strip()
            elif result.status == pq.ExecStatus.COPY_OUT:
                yield result
                continue
            yield result
        if error is not None:
            raise (psycopg.OperationalError if pgconn.status != pq.ConnStatus.OK else psycopg.DataError)(error)

    def _send(self, conn: psycopg.Connection, query: bytes):
        pgconn = conn.pgconn
        pgconn.send_query(query)  # raises on failure
        while pgconn.flush():  # psycopg keeps the connection non-blocking
            select.select([], [pgconn.socket], [], 10.0)
        return pgconn

    def _simple(self, conn: psycopg.Connection, query: bytes) -> tuple[str, int, str]:
        """(watermark LSN, racy count, table shape) of the closing statement."""
        pgconn = self._send(conn, query)
        rows = [(result.get_value(0, 0) or b"").decode() if result.nfields == 1
                else (result.get_value(0, 0).decode(), int(result.get_value(0, 2)))
                for result in self._results(pgconn) if result.status == pq.ExecStatus.TUPLES_OK]
        if len(rows) != 2:
            raise psycopg.DataError("the watermark statement returned no row")
        return (*rows[0], rows[1])

    def _copy(self, conn: psycopg.Connection, query: bytes,
              max_bytes: int | None) -> tuple[str, list[bytes], int, bool]:
        """(the snapshot's text, the lines of the ``COPY ... TO STDOUT``, their bytes, whether
        lines were dropped), read
        with libpq's calls directly (psycopg's Copy object costs a few microseconds per row).
        Lines past ``max_bytes`` are read and dropped: the chunk ends at the last line kept."""
        pgconn = self._send(conn, query)
        snapshot = None
        lines: list[bytes] = []
        kept = 0
        cut = locked = False
        error = None
        while (result := _next_result(pgconn)) is not None:
            status = result.status
            if status == pq.ExecStatus.TUPLES_OK:
                snapshot = result.get_value(0, 0).decode()
            elif status == pq.ExecStatus.COPY_OUT:
                append = lines.append
                get = pgconn.get_copy_data
                room = max_bytes if max_bytes is not None else 1 << 62
                while True:
                    n, data = get(1)  # without waiting: libpq's blocking wait would hold the GIL
                    if n > 0:
                        if kept < room:
                            append(bytes(data))
                            kept += n
                        else:
                            cut = True
                        continue
                    if n < 0:
                        break
                    _wait_readable(pgconn)
                if n == -2:
                    error = pgconn.get_error_message().strip()
            elif status == pq.ExecStatus.FATAL_ERROR and error is None:
                error = result.error_message.decode(errors="replace").strip()
                sqlstate = result.error_field(pq.DiagnosticField.SQLSTATE)
                if sqlstate == b"55P03":  # lock_not_available: lock_timeout
                    locked = True
        if error is not None or snapshot is None:
            if locked and pgconn.status == pq.ConnStatus.OK:
                raise psycopg.errors.LockNotAvailable(error or "lock timeout")
            cls = psycopg.OperationalError if pgconn.status != pq.ConnStatus.OK else psycopg.DataError
            raise cls(error or "no snapshot")
        return snapshot, lines, kept, cut

    # ---- the stream side ---------------------------------------------------------------

    def note(self, event: ChangeEvent) -> None:
        xid = event.source.get("txId")
        if xid is not None and len(self._noted) < MAX_NOTED:
            self._noted.add(xid)

    def newer(self, event: ChangeEvent, watermark: _Watermark) -> bool:
        xid = event.source.get("txId")
        return xid is None or not watermark.visible(xid)

    def reached(self, position: dict, watermark: _Watermark) -> bool:
        lsn = position.get("lsn")
        return lsn is not None and parse_lsn(lsn) >= watermark.high

    def events(self, chunk: Chunk, rows: list[tuple[tuple, ChangeEvent]], position: dict, last: bool) -> list:
        # places sort between the transactions before and after ``position`` (see docs/snapshots.md)
        at = parse_lsn(position["lsn"]) - 1
        place_prefix = format_lsn(at) + ":"
        schema, name = chunk.table.split(".", 1)  # the columns may have been read again since
        now = int(time.time() * 1000)
        base = {"connector": "postgresql", "name": self.source_name, "db": self.db, "schema": schema,
                "table": name, "lsn": at, "txId": None, "ts_ms": now, "snapshot": True}
        return emit_events(rows, chunk.copy_uid, place_prefix, 0, base, now, last, chunk.json_null)
