"""Reading MariaDB / MySQL tables chunk by chunk for snapshots (``docs/snapshots.md``).

Each chunk is one short ``START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY``
on a connection of its own.  MariaDB's ``binlog_snapshot_file`` /
``binlog_snapshot_position`` status variables give the exact binlog position of
that snapshot without a global lock: a binlog transaction is included in the
snapshot if and only if it ends at or before that position.  MySQL 8 has no such
variables; there the chunk reader refuses (see the docs).

Values are read as the server's text and turned into the same JSON values the
binlog decoder produces (``types.py``).
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
import time
from typing import Any

import orjson
import pymysql
import pymysql.converters
import pymysql.cursors

from ...errors import SourceConnectionError, SourceSetupError
from ...event import ChangeEvent
from ...snapshot.chunk import Chunk, CopyRefused, SnapshotInputError, TableLocked, emit_events, key_changed
from ...snapshot.where import condition_problem
from . import settings as checks
from .types import float32

_ENCODERS = pymysql.converters.encoders

__all__ = ["MySQLSnapshotReader"]


def _frac_strip(text: str) -> str:
    """``12:00:01.500000`` -> ``12:00:01.5``; ``.000000`` goes entirely (as the binlog decoder)."""
    if "." in text:
        head, _, frac = text.partition(".")
        frac = frac.rstrip("0")
        return f"{head}.{frac}" if frac else head
    return text


def _datetime(text: str):
    if text.startswith("0000-00-00"):
        return None
    return _frac_strip(text.replace(" ", "T", 1))


def _timestamp(text: str):
    if text.startswith("0000-00-00"):
        return None
    return _frac_strip(text.replace(" ", "T", 1)) + "Z"


def _date(text: str):
    return None if text.startswith("0000-00-00") else text


def _year(text: str):
    value = int(text)
    return None if value == 0 else value


def _binary(value):
    return base64.b64encode(value if isinstance(value, bytes) else value.encode()).decode()


def _converter(data_type: str, column_type: str, is_json: bool):
    t = data_type.lower()
    if is_json or t == "json":
        return orjson.loads
    if t in ("tinyint", "smallint", "mediumint", "int", "integer", "bigint"):
        return int
    if t == "year":
        return _year
    if t == "float":
        return lambda s: float32(float(s))
    if t in ("double", "real"):
        return float
    if t == "datetime":
        return _datetime
    if t == "timestamp":
        return _timestamp
    if t == "date":
        return _date
    if t == "time":
        return _frac_strip
    if t in ("binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"):
        return _binary
    if t == "bit":
        width = int(column_type[column_type.index("(") + 1:column_type.index(")")]) if "(" in column_type else 1
        return lambda b: format(int.from_bytes(b, "big"), f"0{width}b")
    return None  # decimal (already exact with its scale), strings, enum, set


_BINARY = ("binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob")


def _exact_float(value: float, float32: bool) -> str:
    """A double literal (``e``: not a DECIMAL) of exactly the stored value."""
    if float32:
        value = struct.unpack("<f", struct.pack("<f", value))[0]
    return format(value, ".17e")


def _key_literal(data_type: str, column_type: str):
    """value as in the event -> the SQL literal that compares with the column as the stored
    value does (None: the value escaped as it is).  Keyset pagination depends on it."""
    t = data_type.lower()
    if t in _BINARY:
        return lambda v: "X'" + base64.b64decode(v).hex() + "'"
    if t == "bit":
        return lambda v: f"b'{v or 0}'"
    if t in ("enum", "set"):  # ordered and compared by the member's number, not its name
        members = [m.replace("''", "'") for m in re.findall(r"'((?:[^']|'')*)'", column_type)]
        if t == "enum":
            return lambda v: str(members.index(v) + 1 if v in members else 0)
        return lambda v: str(sum(1 << members.index(m) for m in v.split(",") if m in members) if v else 0)
    if t in ("float", "double", "real"):
        return lambda v: _exact_float(v, t == "float")
    return None


class _Table:
    def __init__(self, table: str, names: list[str], converters: list, key: list[str],
                 types: list[tuple[str, str]] | None = None) -> None:
        self.table = table
        self.shape: tuple = ((), ())  # MySQLSnapshotReader._shape when the columns were read
        self.db, self.name = table.split(".", 1)
        self.names = names
        self.converters = converters
        self.key = key
        self.key_index = [names.index(k) for k in key]
        types = types or [("", "")] * len(names)
        self.key_literals = [_key_literal(*types[i]) for i in self.key_index]
        # a float column's text has 6 digits: read as a double, its exact value (as the binlog has it)
        self.select = ", ".join(f"CAST({_q(n)} AS DOUBLE)" if dt.lower() == "float" else _q(n)
                                for n, (dt, _) in zip(names, types))
        self.json = [i for i, conv in enumerate(converters) if conv is orjson.loads]
        self._parsers: dict[tuple, tuple] = {}

    def parsers(self, encodings: tuple):
        """``(parse, parse_one)`` for a result whose columns pymysql would decode with
        ``encodings`` (None: bytes), compiled once (``_compile``)."""
        found = self._parsers.get(encodings)
        if found is None:
            found = self._parsers[encodings] = _compile(self, encodings)
        return found


def _lenenc_span(buf: bytes, p: int) -> tuple[int, int]:
    """The value at ``p`` whose length prefix is 0xfc, 0xfd or 0xfe: (start, end)."""
    n = buf[p]
    if n == 0xfc:
        return p + 3, p + 3 + int.from_bytes(buf[p + 1:p + 3], "little")
    if n == 0xfd:
        return p + 4, p + 4 + int.from_bytes(buf[p + 1:p + 4], "little")
    return p + 9, p + 9 + int.from_bytes(buf[p + 1:p + 9], "little")


#: converter -> the same conversion inline for the common text (``n``: its length in bytes):
#: no fraction to strip, not a zero date (its year starts with 0)
_SHORTCUTS = {
    _datetime: "(d.replace(' ', 'T') if (d := {text})[0] != '0' and n == 19 else {conv}(d))",
    _timestamp: "(d.replace(' ', 'T') + 'Z' if (d := {text})[0] != '0' and n == 19 else {conv}(d))",
    _date: "(d if (d := {text})[0] != '0' else {conv}(d))",
}


def _compile(t: _Table, encodings: tuple) -> tuple:
    """The table's row-packet readers, unrolled for its columns.

    ``parse(buf, pos, end, out, json_null) -> pos`` reads the text-protocol row packets of
    ``buf[pos:end]`` (length-encoded strings, NULL 0xfb) into ``(key, op r event)`` pairs on
    ``out`` (prepared for ``emit_events``: the id is the blake2b digest of the row's packet),
    and stops at the first packet that is incomplete, not a row (EOF, error) or in several
    parts (a row of 16 MiB or more): the caller looks at it.  ``parse_one(payload, out,
    json_null)`` reads one such row.  Values are converted as pymysql would decode them
    (``encodings``), then by the column's converter: the binlog decoder's JSON values."""
    env = {"new": ChangeEvent.__new__, "Event": ChangeEvent, "b2": hashlib.blake2b, "span": _lenenc_span,
           "table": t.table}
    body = []
    for i, (conv, encoding) in enumerate(zip(t.converters, encodings)):
        if encoding is None:
            text = "buf[a:q]"
        elif encoding in ("utf8", "utf-8", "ascii") and conv is not int:
            text = "buf[a:q].decode()"  # ascii is utf-8
        elif conv is int:
            text = "buf[a:q]"  # int() takes the digits as bytes
        else:
            env[f"e{i}"] = encoding
            text = f"buf[a:q].decode(e{i})"
        if conv is None:
            value = text
        elif conv is int:
            value = f"int({text})"
        else:
            env[f"c{i}"] = conv
            value = f"c{i}({text})"
            if conv in _SHORTCUTS and encoding is not None:  # the common case inline, else the converter
                value = _SHORTCUTS[conv].format(text=text, conv=f"c{i}")
        body += ["n = buf[p]",
                 "if n < 251:",
                 f"    a = p + 1; q = a + n; v{i} = {value}; p = q",
                 "elif n == 251:",
                 f"    v{i} = None; p += 1",
                 "else:",
                 f"    a, q = span(buf, p); v{i} = {value}; p = q"]
        if i in t.json:  # the text 'null' is JSON null (None, named in json_null), SQL NULL is 0xfb
            body += [f"if v{i} is None and n != 251:",
                     f"    jn = (jn or []) + [{t.names[i]!r}]"]
    key = "".join(f"v{i}, " for i in t.key_index)
    key_dict = ", ".join(f"{name!r}: v{i}" for name, i in zip(t.key, t.key_index))
    row = ", ".join(f"{name!r}: v{i}" for i, name in enumerate(t.names))
    body += ["e = new(Event)",
             f"e.after = {{{row}}}",
             f"e.key = {{{key_dict}}}",
             "e.id = b2(buf[start:stop], digest_size=12).hexdigest(); e.op = 'r'; e.before = None",
             "e.table = table; e.destination = None; e.message = None",
             f"append((({key}), e))"]
    if t.json:
        body = ["jn = None"] + body + [f"if jn: json_null[({key})] = jn"]
    code = ["def parse(buf, pos, end, out, json_null):",
            "    append = out.append",
            "    while pos + 4 <= end:",
            "        size = buf[pos] | buf[pos + 1] << 8 | buf[pos + 2] << 16",
            "        start = p = pos + 4",
            "        stop = start + size",
            "        if stop > end or size == 0xffffff or (buf[p] >= 0xfe and (buf[p] == 0xff or size < 9)):",
            "            return pos",
            *("        " + line for line in body),
            "        pos = stop",
            "    return pos",
            "",
            "def parse_one(buf, out, json_null):",
            "    append = out.append",
            "    start = p = 0",
            "    stop = len(buf)",
            *("    " + line for line in body)]
    exec("\n".join(code), env)  # noqa: S102 - generated from column names via repr()
    return env["parse"], env["parse_one"]


#: bytes asked of the socket at once while a chunk is read
_READ_SIZE = 1 << 18
_LONG = 0xffffff  # a packet of this size is continued in the next one


def _read_rows(conn: pymysql.Connection, t: _Table, query: str,
               max_bytes: int | None = None) -> tuple[list, dict, int, bool]:
    """The rows of ``query`` as ``(key, event)`` pairs, the chunk's ``json_null``, the bytes
    they came in, and whether rows were dropped: those after ``max_bytes`` are read and not
    kept.  Parsed from the socket's bytes as they come (``_compile``) rather than by pymysql's
    per-field loop.  Any failure but an error the server reported closes the connection
    (the rest of the result is unread)."""
    conn.query(query, unbuffered=True)  # sends it, reads the column descriptions
    result = conn._result
    parse, parse_one = t.parsers(tuple(encoding for encoding, _ in result.converters))
    rfile = conn._rfile
    out: list = []
    json_null: dict = {}
    kept, kept_json_null = out, json_null
    nbytes = 0  # the bytes of the rows kept
    room = max_bytes if max_bytes is not None else 1 << 62
    dropped = 0
    buf = b""
    pos = 0
    try:
        while True:
            start = pos
            pos = parse(buf, pos, len(buf), out, json_null)
            if out is not kept:
                dropped += len(out)
                out.clear()
                json_null.clear()
            else:
                nbytes += pos - start
                if nbytes >= room and kept:  # the rest is read and dropped
                    out, json_null = [], {}
            end = len(buf)
            if pos + 4 <= end:
                size = buf[pos] | buf[pos + 1] << 8 | buf[pos + 2] << 16
                if pos + 4 + size <= end and size != _LONG:  # not a row: the end of the result
                    payload = buf[pos + 4:pos + 4 + size]
                    if payload[0] == 0xff:
                        pymysql.err.raise_mysql_exception(payload)
                    return kept, kept_json_null, nbytes, dropped > 0
                if size == _LONG:  # a row in several packets
                    payload, rest = _long_payload(rfile, buf[pos:])
                    parse_one(payload, out, json_null)
                    if out is kept:
                        nbytes += len(payload)
                        if nbytes >= room:
                            out, json_null = [], {}
                    else:
                        dropped += len(out)
                        out.clear()
                        json_null.clear()
                    buf, pos = rest, 0
                    continue
                want = pos + 4 + size - end  # the rest of this packet, in one read
            else:
                want = 0
            data = rfile.read(want) if want > _READ_SIZE else rfile.read1(_READ_SIZE)
            if not data:
                raise pymysql.err.OperationalError(2013, "Lost connection to server during query")
            buf = buf[pos:] + data
            pos = 0
    except pymysql.err.MySQLError as exc:
        if isinstance(exc, pymysql.err.OperationalError):
            conn._force_close()
        raise
    except OSError as exc:
        conn._force_close()
        raise pymysql.err.OperationalError(2013, f"Lost connection to server during query ({exc})") from exc
    except BaseException:
        conn._force_close()
        raise
    finally:
        result.unbuffered_active = False


# Server errors of the connection or of the moment, not of the query: read the chunk again on a
# new connection. Too many connections, shutdown, network errors, lock wait timeout, deadlock,
# query killed (KILL QUERY), connection killed (MariaDB), disconnected for inactivity (MySQL).
_CONNECTION_ERRORS = frozenset({1040, 1053, 1077, 1152, 1154, 1155, 1156, 1157, 1158, 1159, 1160, 1161,
                                1205, 1213, 1317, 1927, 4031})
_TIMEOUTS = frozenset({1969, 3024})  # max_statement_time (MariaDB), max_execution_time (MySQL)


def connection_lost(exc: pymysql.MySQLError) -> bool:
    """Is ``exc`` a lost connection (client errors 2000-2999, PyMySQL's InterfaceError) or a
    passing server state, rather than an error of the query itself?"""
    if isinstance(exc, pymysql.InterfaceError):
        return True
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
    return 2000 <= code < 3000 or code in _CONNECTION_ERRORS


#: seconds the copy's connection waits to connect, and for each answer of the server (a chunk's
#: next rows) and each send; the dsn's connect_timeout, read_timeout, write_timeout win
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
LOCK_TIMEOUT = 5.0  # seconds a chunk waits for a lock on its table (LOCK TABLES, DDL), then tries later
WRITE_TIMEOUT = 60.0

_PASSWORD = (": the dsn's user or password is not (or no longer) accepted; the binlog stream, connected "
             "before, goes on until it reconnects")
_CONNECTIONS = (": the copy needs a connection of its own besides the binlog stream's two: raise the cdc user's "
                "limit (ALTER USER ... WITH MAX_USER_CONNECTIONS n) or max_user_connections")
# The server refuses the copy's connection, and will go on refusing it until someone acts: the
# copy is dropped (a passing refusal, e.g. 1040 too many connections, is retried).
_REFUSED = {1044: "", 1045: _PASSWORD, 1698: _PASSWORD, 1049: "", 1130: "", 1251: "", 2059: "",
            1129: ": the server blocked this host after too many connection errors: FLUSH HOSTS",
            1203: _CONNECTIONS, 1226: _CONNECTIONS,
            1820: ": the user's password expired", 1862: ": the user's password expired",
            4151: ": the user's account is locked (ALTER USER ... ACCOUNT UNLOCK)"}


def _hint(exc: pymysql.MySQLError) -> str:
    if exc.args and exc.args[0] in _TIMEOUTS:
        return (" (a chunk took longer than the server's max_statement_time / max_execution_time for the "
                "cdc user: lower snapshot_chunk_size, or raise that limit for the cdc user)")
    return ""


def _long_payload(rfile, buf: bytes) -> tuple[bytes, bytes]:
    """A row sent in several packets (the first at the start of ``buf``): its payload,
    and the bytes after its last packet."""
    parts = []
    while True:
        while len(buf) < 4:
            buf += _read_exactly(rfile, 4 - len(buf))
        size = buf[0] | buf[1] << 8 | buf[2] << 16
        if len(buf) < 4 + size:
            buf += _read_exactly(rfile, 4 + size - len(buf))
        parts.append(buf[4:4 + size])
        buf = buf[4 + size:]
        if size != _LONG:
            return b"".join(parts), buf


def _read_exactly(rfile, n: int) -> bytes:
    data = rfile.read(n)
    if len(data) < n:
        raise pymysql.err.OperationalError(2013, "Lost connection to server during query")
    return data


def _literal(conn, literal, value) -> str:
    return literal(value) if literal is not None and value is not None else conn.escape(value, _ENCODERS)


def _q(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _position_key(file: str, pos: int) -> tuple:
    return (file, pos)


class MySQLSnapshotReader:
    def __init__(self, settings: dict, source_name: str, mariadb_json: bool = True) -> None:
        self.settings = settings
        self.source_name = source_name
        self.conn: pymysql.Connection | None = None
        self._tables: dict[str, _Table] = {}
        self._keys: dict[str, tuple[list[str], list[int]]] = {}  # table -> its key's names and column places

    def _connect(self) -> pymysql.Connection:
        if self.conn is None or not self.conn.open:
            conn = None
            try:
                conn = checks.connect(self.settings, CONNECT_TIMEOUT, READ_TIMEOUT, WRITE_TIMEOUT,
                                      conv={}, autocommit=True)
                with conn.cursor() as cur:
                    cur.execute("SET time_zone = '+00:00'")
                    cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    cur.execute(f"SET SESSION lock_wait_timeout = {max(1, round(LOCK_TIMEOUT))}")
                    cur.execute("SELECT @@version")
                    if "mariadb" not in cur.fetchone()[0].lower():
                        conn.close()
                        raise SnapshotInputError("snapshots need MariaDB's binlog_snapshot_position "
                                                 "(MySQL is not supported yet)", source=self.source_name)
            except pymysql.MySQLError as exc:
                if conn is not None:
                    conn._force_close()
                code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
                if code in _REFUSED:
                    raise CopyRefused(f"the server {checks.address(self.settings)} refuses the copy's connection: "
                                   f"{exc.args[-1]}{_REFUSED[code]}", source=self.source_name) from None
                raise SourceConnectionError(f"snapshot connection: {self._failure(exc)}",
                                            source=self.source_name) from exc
            self.conn = conn
        return self.conn

    def _limits(self) -> dict:
        return checks.timeouts(self.settings, CONNECT_TIMEOUT, READ_TIMEOUT, WRITE_TIMEOUT)

    def _failure(self, exc: pymysql.MySQLError) -> str:
        """What went wrong with the copy's connection, naming the server."""
        server = checks.address(self.settings)
        within = checks.no_answer(exc, self._limits())
        if within:
            return (f"the server {server} did not answer {within}: it accepts connections but does not answer "
                    f"(stopped, hung or overloaded)")
        return f"{exc.args[-1]} (server {server})"

    def _answers(self, thread_id: int | None) -> bool:
        """Does the server answer a new connection? It ends the query of ``thread_id`` (KILL
        QUERY), which a timeout left running there."""
        try:
            probe = checks.connect(self.settings, CONNECT_TIMEOUT, READ_TIMEOUT, WRITE_TIMEOUT, autocommit=True)
        except pymysql.MySQLError:
            return False
        try:
            with probe.cursor() as cur:
                if thread_id:
                    cur.execute(f"KILL QUERY {int(thread_id)}")
                else:
                    cur.execute("SELECT 1")
            return True
        except pymysql.MySQLError as exc:
            return not checks.gone(probe, exc)  # e.g. 1094: the query had ended; the server answered
        finally:
            probe._force_close()

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
            self.conn = None

    @staticmethod
    def _shape(cur, table: str) -> tuple[tuple, tuple]:
        """The table's columns (name, data type, column type, key) and primary key, as now
        (the data dictionary is not versioned: read in a chunk's transaction too)."""
        db, name = table.split(".", 1)
        cur.execute("SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, COLUMN_KEY FROM information_schema.COLUMNS"
                    " WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION", (db, name))
        columns = tuple(cur.fetchall())
        cur.execute("SELECT COLUMN_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = %s"
                    " AND TABLE_NAME = %s AND INDEX_NAME = 'PRIMARY' ORDER BY SEQ_IN_INDEX", (db, name))
        return columns, tuple(r[0] for r in cur.fetchall())

    def _table(self, table: str, after: list | None = None) -> _Table:
        t = self._tables.get(table)
        if t is not None:
            return t
        conn = self._connect()
        with conn.cursor() as cur:
            shape = self._shape(cur, table)
        columns, key = shape[0], list(shape[1])
        if not columns:
            raise SnapshotInputError(f"table {table} does not exist", source=self.source_name)
        if not key:
            raise SnapshotInputError(f"table {table} has no primary key: a snapshot reads tables in key order "
                                     f"(add a primary key)", source=self.source_name)
        json_columns = checks.json_columns(conn, [table]).get(table, set())
        t = _Table(table, [c[0] for c in columns],
                   [_converter(c[1], c[2], c[0] in json_columns) for c in columns], key, [(c[1], c[2]) for c in columns])
        t.shape = shape
        old = self._keys.get(table)
        # a key column renamed, or columns added before it: the same key
        if after is not None and (len(after) != len(key) or old is not None and old[0] != key
                                  and old[1] != t.key_index):
            was = f"from ({', '.join(old[0])}) " if old is not None else ""
            raise SnapshotInputError(key_changed(table, was, key, after, self.source_name), source=self.source_name)
        self._keys[table] = (key, t.key_index)
        self._tables[table] = t
        return t

    def _statistic(self, table: str, column: str) -> Any:
        """A column of the table's row in information_schema.TABLES (InnoDB's statistics), or None."""
        db, name = table.split(".", 1)
        try:
            with self._connect().cursor() as cur:
                cur.execute(f"SELECT {column} FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s"
                            " AND TABLE_NAME = %s", (db, name))
                row = cur.fetchone()
        except (pymysql.MySQLError, SourceConnectionError, CopyRefused):  # refused: read_chunk says it
            return None
        return row[0] if row else None

    def estimate(self, table: str) -> int | None:
        rows = self._statistic(table, "TABLE_ROWS")
        return int(rows) if rows is not None else None

    def row_bytes(self, table: str) -> float | None:
        """``ReadsByBytes``: InnoDB's average row length (its data over its row count), or None
        while it has none."""
        length = self._statistic(table, "AVG_ROW_LENGTH")
        return float(length) if length else None

    def check_where(self, table: str, where: str) -> None:
        """``cdc snapshot``: the table and the condition (SnapshotInputError), or the server's
        failure (another SourceError)."""
        try:
            t = self._table(table)
        except CopyRefused as exc:  # the server's refusal, not the table's or the condition's
            raise SourceSetupError(exc.detail, source=self.source_name) from None
        self._one_condition(table, where)
        if where.strip().lower() == "true":  # no condition: the table was checked above
            return
        try:
            with self._connect().cursor() as cur:
                cur.execute(f"EXPLAIN SELECT 1 FROM {_q(t.db)}.{_q(t.name)} WHERE ({where})")
        except pymysql.MySQLError as exc:
            if exc.args and exc.args[0] == 1205:  # lock_wait_timeout: a session holds the table (a migration)
                return  # the copy checks the condition when it runs
            if connection_lost(exc):
                self.close()
                raise SourceConnectionError(f"checking --where: {self._failure(exc)}",
                                            source=self.source_name) from exc
            raise SnapshotInputError(f"--where {where!r} on {table}: {exc.args[-1]}",
                                     source=self.source_name) from None

    # ---- chunks -----------------------------------------------------------------------

    def _one_condition(self, table: str, where: str | None) -> None:
        problem = condition_problem(where, mysql=True) if where else None
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
        conditions = []
        key = ", ".join(_q(k) for k in t.key)
        if after is not None:  # literals escaped here: a % in ``where`` stays as it is
            conditions.append(f"({key}) > ({', '.join(_literal(conn, lit, v) for lit, v in zip(t.key_literals, after))})")
        if where:
            conditions.append(f"({where})")
        query = (f"SELECT {t.select} FROM {_q(t.db)}.{_q(t.name)}"
                 f"{' WHERE ' + ' AND '.join(conditions) if conditions else ''} ORDER BY {key} LIMIT {limit + 1}")
        try:
            with conn.cursor() as cur:
                cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                try:
                    cur.execute("SHOW STATUS WHERE Variable_name IN"
                                " ('Binlog_snapshot_file', 'Binlog_snapshot_position')")
                    status = dict(cur.fetchall())
                    rows, json_null, nbytes, cut = _read_rows(conn, t, query, max_bytes)
                    shape = self._shape(cur, table)  # DDL waits for the commit: the shape the rows have
                finally:
                    if conn.open:  # else closed by a failed read
                        cur.execute("COMMIT")
        except pymysql.MySQLError as exc:
            # 1054 unknown column, 1412 table definition changed (since the snapshot): DDL since
            # the columns were read; read them and the chunk again
            if exc.args and exc.args[0] in (1054, 1412) and self._retry_after_ddl(t, exc.args[0]):
                return None
            if exc.args and exc.args[0] == 1205:  # lock_wait_timeout: another session holds the table
                raise TableLocked(
                    f"a chunk of {table} waited {max(1, round(LOCK_TIMEOUT))} s (lock_wait_timeout) for a lock on it "
                    f"held by another session (LOCK TABLES, or DDL: SHOW PROCESSLIST names it): end that "
                    f"session's lock (UNLOCK TABLES, or KILL it) to let the copy go on",
                    source=self.source_name) from None
            if connection_lost(exc):
                thread_id = (getattr(conn, "server_thread_id", None) or [None])[0]
                self.close()
                within = checks.no_answer(exc, self._limits())
                if within and self._answers(thread_id):  # the server answers: this chunk is too slow
                    raise SnapshotInputError(
                        f"a chunk of {table} got no row {within} from the server {checks.address(self.settings)}, "
                        f"which answers other connections: the chunk's query is slower than that (a --where no "
                        f"index helps, a large snapshot_chunk_size); lower snapshot_chunk_size, or raise "
                        f"read_timeout in the dsn (e.g. ?read_timeout=600)", source=self.source_name) from None
                raise SourceConnectionError(f"snapshot read of {table}: {self._failure(exc)}",
                                            source=self.source_name) from exc
            # the query's own error (PyMySQL calls most server errors OperationalError): reading
            # again would fail again, so the copy is dropped with it
            raise SnapshotInputError(f"cannot read {table}: {exc.args[-1]}{_hint(exc)}",
                                     source=self.source_name) from None
        except (ValueError, UnicodeDecodeError):  # a value the cached columns' converters do not take
            if self._retry_after_ddl(t, 0):  # a type changed since they were read: read them and the chunk again
                return None
            raise
        if shape != t.shape:
            self._tables.pop(table, None)
            return None
        watermark = (status["Binlog_snapshot_file"], int(status["Binlog_snapshot_position"]))
        done = len(rows) <= limit and not cut
        if len(rows) > limit:  # the row that tells the end is not the chunk's: nor are its bytes
            nbytes = nbytes * limit // len(rows)
            rows = rows[:limit]
        last_key = list(rows[-1][0]) if rows else after
        return Chunk(table, rows, last_key, done, watermark, t.key, json_null=json_null, nbytes=nbytes)

    def _retry_after_ddl(self, t: _Table, errno: int) -> bool:
        """After an error that DDL can cause: the columns are read again if they changed (or
        the table was rebuilt since the chunk's snapshot, 1412); False: the error stands."""
        try:
            with self._connect().cursor() as cur:
                changed = self._shape(cur, t.table) != t.shape
        except pymysql.MySQLError:
            return False
        if changed:
            self._tables.pop(t.table, None)
        return changed or errno == 1412

    # ---- the stream side -----------------------------------------------------------------

    def note(self, event: ChangeEvent) -> None:
        pass  # the snapshot's binlog position is exact: nothing to remember

    def newer(self, event: ChangeEvent, watermark: tuple) -> bool:
        src = event.source
        return (src.get("file"), src.get("pos")) >= watermark

    def reached(self, position: dict, watermark: tuple) -> bool:
        return (position.get("file", ""), position.get("pos", 0)) >= watermark

    def events(self, chunk: Chunk, rows: list[tuple[tuple, ChangeEvent]], position: dict, last: bool) -> list:
        # places sort after the transaction that ends at ``position`` and before the next one;
        # several chunks may follow the same transaction: the index counts rows of the copy
        first = chunk.first_index
        gtid = position.get("gtid")
        place_prefix = (f"{gtid}:s" if gtid else f"{position.get('file')}:{position.get('pos', 1) - 1}:s")
        db, name = chunk.table.split(".", 1)  # the columns may have been read again since
        now = int(time.time() * 1000)
        base = {"connector": "mysql", "name": self.source_name, "db": db, "table": name,
                "file": position.get("file"), "pos": position.get("pos"), "row": first, "gtid": gtid,
                "server_id": None, "ts_ms": now, "snapshot": True}
        return emit_events(rows, chunk.copy_uid, place_prefix, first, base, now, last, chunk.json_null)
