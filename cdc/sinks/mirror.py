"""``postgres`` / ``mysql``: mirror source tables into another database, exactly once.

- Inserts and updates become upserts on the primary key (the event's ``key``, or
  ``key:`` in the mapping); an update that changes the key deletes the old row;
  deletes delete; truncates empty the target table (``DELETE`` on MySQL, where
  ``TRUNCATE`` would commit the transaction).  Unchanged TOAST values are left as
  they are: an event without them is an ``UPDATE`` of the row (of the old key's row when
  the key changed), never an insert; a row the target lacks is a permanent error (written,
  it would hold NULL there).  The target tables must exist with a primary key or unique key.
- ``tables: {public.orders: {table: mirror.orders, columns: {status: state}}}`` (or
  just ``public.orders: mirror.orders``) maps source tables to target tables and
  renames columns; an unmapped table goes to the table of the same name (without
  the source schema) in the target's default schema or database.
- Values are converted by the target column's type, read from the target's catalog
  once per table: base64 text to ``bytea``/``blob``, any JSON value to
  ``json``/``jsonb`` (``null`` is JSON null in a NOT NULL column, and in the columns
  the event's ``source.json_null`` names; SQL NULL otherwise), ``...Z`` timestamps to
  MySQL ``datetime``/``timestamp`` (sessions run in UTC), numbers to ``boolean``,
  ``0101`` strings to MySQL ``bit``, objects and arrays to text as JSON.
- Exactly once: the sink stores, per source table, the id of the last event it
  applied in ``position_table`` (created when missing), in the same transaction as
  the rows.  A redelivered event whose id is not after the stored one is skipped;
  after each ``write`` the ids it skipped are in ``sink.skipped`` (so ``cdc dlq
  replay`` can tell an event that was applied from one already superseded).
  Ids are compared by the source's position semantics: PostgreSQL ``LSN:index``;
  MariaDB GTIDs ``domain-server-seq:n`` per domain by ``seq`` (the server id changes
  at a failover and says nothing about order); MySQL GTIDs ``uuid:n:index`` per
  server uuid; MariaDB snapshot rows ``<GTID state>:s<row>`` among themselves, by each
  domain's ``seq``, then the row; other ids naturally (digit runs as numbers).  A snapshot
  row (``op: "r"``) is ordered by its place in the stream (``cdc.snapshot.chunk.place``,
  ids of that form), not by its id, which is a hash of its values.  With several GTID
  domains or uuids the stored id is one id per domain, comma-separated.
- Identifiers are always quoted; values are always bound parameters.
- PostgreSQL: a run of upserts into one table with the same columns goes as one
  ``INSERT ... SELECT ... FROM json_populate_recordset(...) ON CONFLICT`` of the rows
  as JSON (the last change of a key in the run wins, as applying them in turn would
  give), or, for values with no JSON form, by ``COPY`` into a temporary table.  The sink
  is ``Pipelined``: a batch that is one such run is one statement with its position,
  run by the server while the next batch is prepared (``_pg_async.Statement``).  Other
  statements, and runs on MySQL, go as ``executemany``.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..config.model import Context
from ..errors import PermanentSinkError, SinkError, TransientSinkError
from ..event import UNAVAILABLE, ChangeEvent
from ..snapshot.chunk import place
from ._db import Target, connect, database_of, sink_error
from ._pg_async import Statement

__all__ = ["PostgresMirrorSink", "MySQLMirrorSink", "TableMapping", "order_key", "stream_of"]

_PG_ID = re.compile(r"^([0-9A-Fa-f]+)/([0-9A-Fa-f]+):(\d+)$")
_MARIADB_GTID_ID = re.compile(r"^(\d+)-(\d+)-(\d+):(\d+)$")
_MARIADB_SNAPSHOT_ID = re.compile(r"^(\d+-\d+-\d+(?:,\d+-\d+-\d+)*):s(\d+)$")  # GTID state:s<row>
_BARE_GTID = re.compile(r"^\d+-\d+-\d+$")  # one domain of a snapshot id's GTID state
_MYSQL_GTID_ID = re.compile(r"^([0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}):(\d+):(\d+)$")
_DIGITS = re.compile(r"(\d+)")


def stream_of(event_id: str) -> tuple[str, tuple]:
    """``(stream, key)``: ids of one stream are ordered by ``key``; ids of different
    streams (MariaDB GTID domains, MySQL server uuids) are not ordered at all."""
    m = _PG_ID.match(event_id)
    if m:
        return "", (0, (int(m[1], 16) << 32) | int(m[2], 16), int(m[3]))
    m = _MARIADB_GTID_ID.match(event_id)
    if m:  # the server id is left out: a failover continues the domain's sequence
        return f"domain {m[1]}", (2, int(m[3]), int(m[4]))
    m = _MYSQL_GTID_ID.match(event_id)
    if m:
        return m[1].lower(), (3, int(m[2]), int(m[3]))
    m = _MARIADB_SNAPSHOT_ID.match(event_id)
    if m:  # a snapshot row after the GTID state: by each domain's seq (in domain order), then row
        state = sorted((int(d), int(seq)) for d, _, seq in (g.split("-") for g in m[1].split(",")))
        return "snapshot", (4, tuple(state), int(m[2]))
    return "", (1, tuple(int(p) if i % 2 else p for i, p in enumerate(_DIGITS.split(event_id))))


def order_key(event_id: str) -> tuple:
    """A sortable key for an event id within its stream (see ``stream_of``)."""
    return stream_of(event_id)[1]


def _position_text(ids: dict[str, tuple[tuple, str]]) -> str:
    return ",".join(ids[s][1] for s in sorted(ids))


def _last_ids(stored: str) -> dict[str, tuple[tuple, str]]:
    """A stored position (ids, comma-separated) as {stream: (key, id)}.  A MariaDB snapshot id
    has commas of its own (its GTID state: ``0-1-42,5-1-9:s7``): a bare GTID is joined to what
    follows it."""
    out = {}
    pending = ""
    for part in stored.split(","):
        if _BARE_GTID.match(part):
            pending += part + ","
            continue
        event_id, pending = pending + part, ""
        stream, key = stream_of(event_id)
        out[stream] = (key, event_id)
    return out


class _Guarded(list):
    """The parameters of a guarded update (the values set, then the key's), with the row
    (``row``: column -> value), the key (``key``) and, for its error, (event, target table,
    the columns whose values were not sent) (``about``)."""

    row: dict
    key: dict
    about: tuple[ChangeEvent, str, list[str]]


@dataclass
class TableMapping:
    table: str | None = None                       # target table; default: the source table's name
    columns: dict[str, str] = field(default_factory=dict)   # source column -> target column
    key: list[str] | None = None                   # target key columns; default: the event's key


_UNMAPPED = TableMapping()


def _moved(source_table: str, sink: str) -> TransientSinkError:
    return TransientSinkError(
        f"the stored position of {source_table} moved while this batch was applied, so it applied nothing: "
        f"another writer of sink {sink} (a statement of a cdc run stopped a moment ago that was still running in "
        f"the server, or a second cdc with the same sink name); delivered again from the position stored")


def _values(params: list | dict) -> list:
    """A statement's parameters: an upsert's row (a dict) as its values."""
    return list(params.values()) if isinstance(params, dict) else params


_POSITION_DDL = {
    "postgres": "CREATE TABLE IF NOT EXISTS {t} (sink text NOT NULL, source_table text NOT NULL,"
                " event_id text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(),"
                " PRIMARY KEY (sink, source_table))",
    "mysql": "CREATE TABLE IF NOT EXISTS {t} (sink varchar(191) NOT NULL, source_table varchar(191) NOT NULL,"
             " event_id varchar(255) NOT NULL, updated_at timestamp(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)"
             " ON UPDATE CURRENT_TIMESTAMP(3), PRIMARY KEY (sink, source_table)) DEFAULT CHARSET=utf8mb4",
}


class _MirrorSink:
    dialect = ""
    default_batch_size = 1000
    percent = "%"  # '%' in a name, in a statement with parameters (psycopg: '%%')

    def __init__(self, dsn: str, tables: dict[str, str | TableMapping] | None = None,
                 position_table: str = "cdc_mirror_position", context: Context | None = None) -> None:
        self.dsn = dsn
        self.mappings = {src: (TableMapping(table=m) if isinstance(m, str) else m)
                         for src, m in (tables or {}).items()}
        self.position_table = position_table
        self.sink_name = context.name if context else self.dialect
        self.target: Target | None = None
        self._sql_cache: dict[tuple, str] = {}
        self._upserts: dict[str, tuple[str, list[str], tuple[str, ...]]] = {}  # sql -> table, keys, columns
        # guarded updates (``_guarded_update``): sql -> table, keys, columns set from the row, moves the key
        self._guarded: dict[str, tuple[str, list[str], tuple[str, ...], bool]] = {}
        self._converters: dict[str, dict[str, Callable[[Any], Any] | None]] = {}  # table -> column -> fn or None
        self._cur: Any = None
        self._plans: dict[tuple, list[tuple[str, str, Callable[[Any], Any], bool]]] = {}  # see _row
        self._temps: dict[tuple, str] = {}     # (table, columns) -> temporary table (PostgreSQL), per connection
        self._used_temps: set[str] = set()     # temporary tables holding rows in this transaction
        #: ids of the last ``write``'s events not applied: at or behind the stored position
        self.skipped: list[str] = []
        self._sent: Statement | None = None  # PostgreSQL: the statement in flight (``send``)
        # PostgreSQL: (parsed, stored) positions as every statement sent leaves them (``send``)
        self._known: tuple[dict[str, dict[str, tuple[tuple, str]]], dict[str, str]] | None = None

    def _target_table(self, table: str) -> tuple[str, TableMapping]:
        """The target table of source table ``table`` (``schema.table`` / ``db.table``), and its mapping."""
        bare = table.rpartition(".")[2]
        m = self.mappings.get(table) or self.mappings.get(bare) or _UNMAPPED
        return m.table or bare, m

    def target_of(self, table: str) -> str:
        """``WritesTables``: the target table (qualified as the server would: ``public.`` on
        PostgreSQL, the DSN's database on MySQL) and the server and database."""
        name, _ = self._target_table(table)
        where = database_of(self.dsn)
        if "." not in name:
            name = f"public.{name}" if self.dialect == "postgres" else f"{where.rpartition('/')[2]}.{name}"
        return f"table {name} of {where}"

    def check_tables(self, tables: list[str]) -> list[tuple[str, str]]:
        """``WritesTables``: each source table's target table exists, with a primary key or a
        unique index (``key:`` in its mapping names the columns otherwise)."""
        target = connect(self.dsn)
        problems = []
        try:
            with target.conn.cursor() as cur:
                for table in tables:
                    name, m = self._target_table(table)
                    where = f"{name} in {database_of(self.dsn)} (for {table})"
                    found = self.table_keys(cur, name)
                    if found is None:
                        problems.append(("error", f"target table {where} does not exist: create it (cdc does "
                                                  f"not), with the columns it is to hold and a primary key"))
                    elif not found and not m.key:
                        problems.append(("error", f"target table {where} has no primary key or unique index to "
                                                  f"write on: add one, or name the key columns with key: in "
                                                  f"tables: of this sink"))
            target.conn.rollback()
        finally:
            target.close()
        return problems

    def table_keys(self, cur, table: str) -> bool | None:  # pragma: no cover - overridden
        """None: ``table`` does not exist; else whether it has a primary key or unique index."""
        raise NotImplementedError

    def _name(self, table: str) -> str:
        """``table`` quoted, for a statement with parameters."""
        return self.target.quote(table).replace("%", self.percent)

    def _column(self, column: str) -> str:
        return self.target.quote_column(column).replace("%", self.percent)

    # ---- connection ------------------------------------------------------------

    def open(self) -> None:
        self.target = connect(self.dsn)
        if self.target.dialect != self.dialect:
            raise PermanentSinkError(f"type {self.dialect} needs a {self.dialect} DSN")
        try:
            self.session()
            with self.target.conn.cursor() as cur:
                cur.execute(_POSITION_DDL[self.dialect].format(t=self._name(self.position_table)), ())
            self.target.conn.commit()
        except Exception as exc:
            if self.created_meanwhile(exc):  # by another sink opening at the same moment
                self.target.conn.rollback()
                return
            self._reset()
            raise sink_error(exc, f"cannot create {self.position_table}") from exc

    def session(self) -> None:
        """Settings of the sink's session, once connected."""

    def created_meanwhile(self, exc: Exception) -> bool:
        """``exc``, from creating the position table, says another session created it."""
        return False

    def _reset(self) -> None:
        if self._sent is not None:  # its outcome unknown: waited for, it fails (if it committed, its position says so)
            self._sent.abandon()
            self._sent = None
        self._known = None
        self._converters.clear()
        self._plans.clear()  # keyed by the converters' id
        self._temps.clear()  # a failed batch may be a changed table: read the catalog again
        if self.target is not None:
            self.target.close()
            self.target = None

    def close(self) -> None:
        self._reset()

    # ---- one transaction per batch ------------------------------------------------

    def write(self, events: Sequence[ChangeEvent]) -> None:
        if self.target is None:
            self.open()
        t = self.target
        self.skipped = []
        self._known = None  # read here, and again by the next send
        try:
            self._settle()
            with t.conn.cursor() as cur:
                self._cur = cur
                stored = self._positions(cur)
                positions: dict[str, dict[str, tuple[tuple, str]]] = {}
                statements, changed, skipped = self._prepare(events, positions, stored)
                self._apply(cur, statements, positions, changed, stored)
            t.conn.commit()
        except Exception as exc:
            err = self._batch_error(exc, events)
            self._reset()  # rolls back; the next write reconnects
            raise err from exc
        self.skipped = skipped

    def _batch_error(self, exc: BaseException, events: Sequence[ChangeEvent] | None, about: str = "") -> SinkError:
        """``exc`` as a sink error naming the batch (its source tables and ids) and, when the
        target refused the rows as they are, the likely cause and the fix."""
        if events:
            tables = sorted({e.table for e in events})
            ids = f"event {events[0].id}" if len(events) == 1 else f"events {events[0].id} to {events[-1].id}"
            about = f"{', '.join(tables[:5])}{', ...' if len(tables) > 5 else ''}; {ids}"
        err = sink_error(exc, f"cannot apply a batch ({about}) to {database_of(self.dsn)}" if about
                         else "cannot apply a batch")
        if isinstance(err, PermanentSinkError) and _no_key(exc):
            err = PermanentSinkError(f"{err}; the target table has no primary key or unique index on the key columns: "
                                     f"add one, or name the columns with key: in this sink's tables:, then start cdc "
                                     f"again (cdc check names such tables)")
        elif isinstance(err, PermanentSinkError) and _schema_mismatch(exc):
            err = PermanentSinkError(f"{err}; the target table does not take these rows as they are (a column added, "
                                     f"renamed or retyped, or a key changed, at the source? or a row the target lacks, "
                                     f"updated without every column?): alter the target table to match, or copy the "
                                     f"table again (cdc snapshot), then start cdc again (dead letters: cdc dlq replay; "
                                     f"those it finds superseded come back with the table's copy)")
        return err

    def _settle(self) -> None:
        """Wait for what an asynchronous send left in flight (PostgreSQL); raise its error."""

    def _prepare(self, events: Sequence[ChangeEvent], positions: dict[str, dict[str, tuple[tuple, str]]],
                 stored: dict[str, str]) -> tuple[list[tuple[str, Any]], set[str], list[str]]:
        """The statements that apply ``events``, the source tables they change, and the ids
        skipped (at or behind the position ``stored`` for their table).  ``positions``
        (source table -> stream -> (key, id)), parsed from ``stored`` where missing, is
        moved past every event applied."""
        changed: set[str] = set()
        skipped: list[str] = []
        statements: list[tuple[str, Any]] = []
        self._used_temps.clear()
        for e in events:
            if e.op not in ("c", "u", "d", "r", "t"):
                continue
            last_ids = positions.get(e.table)
            if last_ids is None:
                ids = stored.get(e.table)
                last_ids = positions[e.table] = _last_ids(ids) if ids else {}
            order_id = place(e) if e.op == "r" else e.id  # a snapshot row's id is not a position
            stream, key = stream_of(order_id)
            last = last_ids.get(stream)
            if last is not None and key <= last[0]:
                skipped.append(e.id)  # applied before (a redelivery) or superseded
                continue
            self._statements(e, statements)
            last_ids[stream] = (key, order_id)
            changed.add(e.table)
        return statements, changed, skipped

    def _apply(self, cur, statements: list[tuple[str, Any]], positions: dict[str, dict[str, tuple[tuple, str]]],
               changed: set[str], stored: dict[str, str]) -> None:
        """Run the statements and store each changed table's position (compared with the one
        read, ``stored``, which it then holds)."""
        self._execute(cur, statements)
        for source_table in changed:
            position = _position_text(positions[source_table])
            self._save_position(cur, source_table, position, stored.get(source_table))
            stored[source_table] = position

    def _execute(self, cur, statements: list[tuple[str, Any]]) -> None:
        """Runs of the same statement go together (``execute_run``), in order."""
        i = 0
        while i < len(statements):
            sql = statements[i][0]
            j = i + 1
            while j < len(statements) and statements[j][0] == sql:
                j += 1
            if sql in self._guarded:
                self._execute_guarded(cur, sql, [params for _, params in statements[i:j]])
            elif j - i == 1:
                cur.execute(sql, _values(statements[i][1]))
            else:
                self.execute_run(cur, sql, [params for _, params in statements[i:j]])
            i = j

    def execute_run(self, cur, sql: str, rows: list) -> None:
        """Several executions of one statement: ``executemany`` (pipelined)."""
        cur.executemany(sql, [_values(r) for r in rows])

    def _positions(self, cur) -> dict[str, str]:
        cur.execute(f"SELECT source_table, event_id FROM {self._name(self.position_table)} WHERE sink = %s",
                    (self.sink_name,))
        return dict(cur.fetchall())

    # ---- applying one event --------------------------------------------------------

    def _mapping(self, e: ChangeEvent) -> tuple[str, TableMapping]:
        m = self.mappings.get(e.table) or self.mappings.get(e.source.get("table", "")) or _UNMAPPED
        return m.table or e.source.get("table") or e.table, m

    def _statements(self, e: ChangeEvent, out: list[tuple[str, Any]]) -> None:
        """Append the statements (SQL, parameters) that apply ``e``."""
        table, m = self._mapping(e)
        if e.op == "t":
            out.append((self.truncate_sql(self._name(table)), []))
            return
        rename = m.columns
        key_cols = m.key or [rename.get(k, k) for k in (e.key or {})]
        if not key_cols:
            raise PermanentSinkError(f"table {e.table} has no primary key to mirror on (set key: in tables)")
        if table not in self._converters:
            self._converters[table] = self.converters(self._cur, table)
        if e.op == "d":
            out.append(self._delete(table, key_cols, self._row(e.before or e.key or {}, rename, table)))
            return
        after = e.after or {}
        row = self._row(after, rename, table)
        json_null = e.source.get("json_null")
        if json_null.__class__ is list:
            _json_nulls(row, json_null, rename, self._converters[table])
        old = self._row(e.before, rename, table) if e.op == "u" and e.before else None
        moved = old is not None and any(k in old and old[k] != row.get(k) for k in key_cols)  # the key changed
        if len(row) < len(after):  # a value not sent (an unchanged TOAST value): never inserted without it
            unavailable = [rename.get(k, k) for k, v in after.items() if v.__class__ is str and v == UNAVAILABLE]
            out.append(self._guarded_update(e, table, key_cols, row, old if moved else None, unavailable))
            return
        if old is not None and moved:
            out.append(self._delete(table, key_cols, old))
        out.append(self._upsert(table, key_cols, row))

    def _row(self, row: dict, rename: dict[str, str], table: str) -> dict:
        """``row`` renamed and converted for the target ``table``.  Its columns' conversions
        (``_converters``: every column, its conversion or None) are read again when ``row`` has
        a column they lack: one added to the target since (the operator's safe order)."""
        # a plan per (table, renames, source columns): (source column, target column, conversion)
        plan_key = (table, id(rename), tuple(row))  # renames live as long as the sink; cleared with the columns
        plan = self._plans.get(plan_key)
        if plan is None:
            convert = self._converters[table]
            if any(rename.get(k, k) not in convert for k in row):
                convert = self._converters[table] = self.converters(self._cur, table)
                self._plans.clear()
            adapt = self.adapt
            plan = []
            for k in row:
                column = rename.get(k, k)
                fn = convert.get(column) or adapt
                keeps = fn is _as_text or fn is adapt
                plan.append((k, column, fn, keeps))
            self._plans[plan_key] = plan
        out = {}
        for k, column, fn, keeps in plan:
            v = row[k]
            c = v.__class__
            if c is str and v == UNAVAILABLE:
                continue
            # a conversion that only changes dicts and lists is not called for anything else
            out[column] = v if keeps and c is not dict and c is not list else fn(v)
        return out

    def _delete(self, table: str, key_cols: list[str], row: dict) -> tuple[str, list]:
        missing = [k for k in key_cols if k not in row]
        if missing:
            raise PermanentSinkError(f"cannot delete from {table}: key column(s) {missing} not in the event")
        sql = self._sql_cache.get(("d", table, tuple(key_cols)))
        if sql is None:
            where = " AND ".join(f"{self._column(k)} = %s" for k in key_cols)
            sql = self._sql_cache[("d", table, tuple(key_cols))] = f"DELETE FROM {self._name(table)} WHERE {where}"
        return sql, [row[k] for k in key_cols]

    def _upsert(self, table: str, key_cols: list[str], row: dict) -> tuple[str, dict]:
        """The statement and the row (its values in the statement's column order)."""
        cols = tuple(row)
        cache_key = ("u", table, tuple(key_cols), cols)
        sql = self._sql_cache.get(cache_key)
        if sql is None:
            q = self._column
            sql = self._sql_cache[cache_key] = (
                f"INSERT INTO {self._name(table)} ({', '.join(q(c) for c in cols)})"
                f" VALUES ({', '.join(['%s'] * len(cols))}) "
                + self.conflict_sql(key_cols, [c for c in cols if c not in key_cols]))
            self._upserts[sql] = (table, key_cols, cols)
        return sql, row

    def _guarded_update(self, e: ChangeEvent, table: str, key_cols: list[str], row: dict, old: dict | None,
                        unavailable: list[str]) -> tuple[str, _Guarded]:
        """An upsert whose row lacks the values of ``unavailable`` columns, as an ``UPDATE``
        of the row with the key (``old``'s when the key changed, moving the row): inserted
        without them, the row would hold NULL or the default there.  Its row count is checked
        (``_execute_guarded``): no row is a permanent error saying what and how."""
        where = old if old is not None else row
        missing = [k for k in key_cols if k not in where]
        if missing:
            raise PermanentSinkError(f"cannot update {table}: key column(s) {missing} not in event {e.id}")
        # the key's columns are set only when it moves (or when nothing else is left to set)
        sets = tuple(c for c in row if old is not None or c not in key_cols) or tuple(key_cols[:1])
        cache_key = ("g", table, tuple(key_cols), sets, old is not None)
        sql = self._sql_cache.get(cache_key)
        if sql is None:
            q = self._column
            sql = self._sql_cache[cache_key] = (f"UPDATE {self._name(table)} SET "
                                                + ", ".join(f"{q(c)} = %s" for c in sets) + " WHERE "
                                                + " AND ".join(f"{q(k)} = %s" for k in key_cols))
            self._guarded[sql] = (table, key_cols, sets, old is not None)
        params = _Guarded([row[c] for c in sets] + [where[k] for k in key_cols])
        params.row, params.key = row, {k: where[k] for k in key_cols}
        params.about = (e, table, unavailable)
        return sql, params

    def _execute_guarded(self, cur, sql: str, rows: list[_Guarded]) -> None:
        """Guarded updates (``_guarded_update``), in turn: one that finds no row raises."""
        table, key_cols = self._guarded[sql][:2]
        for params in rows:
            cur.execute(sql, params)
            if cur.rowcount < 1:  # MySQL counts rows changed: an update to the same values is 0
                self._check_rows(cur, table, key_cols, [params])

    def _check_rows(self, cur, table: str, key_cols: list[str], rows: list[_Guarded]) -> None:
        """Raise for the first of the guarded updates ``rows`` whose row the target lacks."""
        q = self._column
        exists = (f"SELECT 1 FROM {self._name(table)} WHERE "
                  + " AND ".join(f"{q(k)} = %s" for k in key_cols))
        for params in rows:
            cur.execute(exists, list(params.key.values()))
            if not cur.fetchall():
                raise self._toast_error(params)

    def _toast_error(self, params: _Guarded) -> PermanentSinkError:
        e, table, unavailable = params.about
        source = e.source.get("name") or "SOURCE"
        return PermanentSinkError(
            f"cannot apply event {e.id} ({e.table}) to table {table} of {database_of(self.dsn)}: the row with key "
            f"{params.key} is not in the target, and the event does not carry the value of column(s) "
            f"{', '.join(unavailable)} (unchanged TOAST values, which PostgreSQL sends only with REPLICA IDENTITY "
            f"FULL): written without them, the row would hold NULL there, so it is not written. Fix: ALTER TABLE "
            f"{e.table} REPLICA IDENTITY FULL at the source (later updates then carry every value), and copy the "
            f"table again: cdc snapshot CONFIG --source {source} --table {e.table}, with on_error: dead_letter (or "
            f"skip) on this sink so that this event is parked meanwhile (or insert the row into the target, then "
            f"start cdc again)")

    # ---- dialect hooks --------------------------------------------------------------

    def adapt(self, value):  # pragma: no cover - overridden
        """A value for a column without a conversion of its own: only a dict or a list may
        change (``_row`` does not call it for anything else)."""
        return value

    def converters(self, cur, table: str) -> dict[str, Callable[[Any], Any] | None]:  # pragma: no cover
        """Column -> conversion of a JSON value, for the columns whose type needs one."""
        raise NotImplementedError

    def truncate_sql(self, qt: str) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def conflict_sql(self, key_cols: list[str], other_cols: list[str]) -> str:  # pragma: no cover
        raise NotImplementedError

    def _save_position(self, cur, source_table: str, event_id: str, expected: str | None) -> None:  # pragma: no cover
        """Store ``event_id`` as the table's position; ``expected``: the position read before."""
        raise NotImplementedError


# ---- conversions of JSON values by the target column's type ------------------------------

# The target refused the rows as they are: an unknown table or column, no key for ON CONFLICT,
# a value of the wrong type or size, a NULL into NOT NULL (PostgreSQL SQLSTATEs, MySQL codes).
_SCHEMA_STATES = ("42703", "42P01", "42804", "23502", "22001", "22003", "22P02", "22007", "22008")


def _no_key(exc: BaseException) -> bool:
    """No unique index for ON CONFLICT (PostgreSQL's 42P10)."""
    import psycopg
    return isinstance(exc, psycopg.Error) and exc.sqlstate == "42P10"
_SCHEMA_CODES = frozenset({1054, 1146, 1264, 1265, 1292, 1366, 1406, 1048, 1364})


def _schema_mismatch(exc: BaseException) -> bool:
    import psycopg
    import pymysql
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate or ""
        return state in _SCHEMA_STATES
    if isinstance(exc, pymysql.MySQLError):
        return bool(exc.args) and exc.args[0] in _SCHEMA_CODES
    return False


class _JsonColumn:
    """The conversion into a json column: any JSON value; ``null`` (None) is JSON null where
    SQL NULL cannot be (a NOT NULL column), else SQL NULL unless the event's
    ``source.json_null`` names the column (``_json_nulls``).  ``null``: JSON null's parameter."""

    __slots__ = ("wrap", "not_null", "null")

    def __init__(self, wrap: Callable[[Any], Any], not_null: bool) -> None:
        self.wrap = wrap
        self.not_null = not_null
        self.null = wrap(None)

    def __call__(self, value: Any) -> Any:
        return None if value is None and not self.not_null else self.wrap(value)


def _json_nulls(row: dict, names: list, rename: dict[str, str], convert: dict[str, Callable[[Any], Any] | None]) -> None:
    """JSON null into the json columns that ``source.json_null`` names (the event's value
    is None, as for SQL NULL); a column that is not json in the target keeps SQL NULL."""
    for name in names:
        column = rename.get(name, name)
        fn = convert.get(column)
        if fn.__class__ is _JsonColumn and column in row and row[column] is None:
            row[column] = fn.null


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def _from_base64(value: Any) -> Any:
    return base64.b64decode(value) if isinstance(value, str) else value


def _to_bool(value: Any) -> Any:
    return bool(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _as_text(value: Any) -> Any:
    return orjson.dumps(value).decode() if isinstance(value, (dict, list)) else value



def _mysql_datetime(value: Any) -> Any:
    """``2026-11-25T17:16:27.5Z`` (UTC) -> ``2026-11-25 17:16:27.5`` (the session is UTC)."""
    if isinstance(value, str):
        if value.endswith("Z"):
            value = value[:-1]
        elif value.endswith("+00:00"):
            value = value[:-6]
        return value.replace("T", " ", 1)
    return value


def _bits(value: Any) -> Any:
    return int(value, 2) if isinstance(value, str) and value and set(value) <= {"0", "1"} else value


class _NoJsonForm(Exception):
    pass


def _json_value(value: Any) -> Any:
    """orjson's ``default``: the JSON form of a value that PostgreSQL converts back the same."""
    from psycopg.types.json import Jsonb
    if isinstance(value, bytes):
        return "\\x" + value.hex()  # bytea's input form
    if isinstance(value, Jsonb) and value.obj is not None:  # JSON null would become SQL NULL
        return value.obj
    raise _NoJsonForm


def _not_finite(value: float) -> str:
    return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")


JSON_ROWS_LIMIT = 64 << 20  # bytes: a larger run goes by COPY (a message is at most 1 GB)


def _json_rows(rows: list[dict]) -> bytes | None:
    """Rows (values as the ``COPY`` path binds them) as a JSON array of objects, or None when
    a value has no JSON form that converts the same, or the array is over JSON_ROWS_LIMIT."""
    for i, row in enumerate(rows):
        if float in map(type, row.values()):  # NaN and infinities: as their input text
            rows[i] = {k: _not_finite(v) if v.__class__ is float and v - v != 0.0 else v for k, v in row.items()}
    try:
        doc = orjson.dumps(rows, default=_json_value)
    except (orjson.JSONEncodeError, _NoJsonForm):
        return None
    return doc if len(doc) <= JSON_ROWS_LIMIT else None


def _last_of_each_key(key_cols: list[str], rows: list[dict]) -> list[dict] | None:
    """The last of the rows of each key, in order (None for an unhashable key value)."""
    try:
        if len(key_cols) == 1:
            [key] = key_cols
            return list({r[key]: r for r in rows}.values())
        return list({tuple(r[k] for k in key_cols): r for r in rows}.values())
    except TypeError:
        return None


class PostgresMirrorSink(_MirrorSink):
    """``type: postgres`` sink: ``dsn: postgresql://...``, ``tables``, ``position_table``."""

    dialect = "postgres"
    percent = "%%"

    def session(self) -> None:
        # UTF8 whatever the database's encoding: on SQL_ASCII psycopg returns text as bytes
        # (positions and column names no longer match), and the one statement goes as UTF-8
        self.target.conn.execute("SET client_encoding TO 'UTF8'")
        self.target.conn.commit()

    def created_meanwhile(self, exc: Exception) -> bool:
        # CREATE TABLE IF NOT EXISTS run by two sessions at once: one of them fails
        from psycopg import errors
        return isinstance(exc, (errors.UniqueViolation, errors.DuplicateTable, errors.DuplicateObject))

    def adapt(self, value):
        if isinstance(value, dict):
            from psycopg.types.json import Jsonb
            return Jsonb(value)
        return value

    def converters(self, cur, table: str) -> dict[str, Callable[[Any], Any] | None]:
        from psycopg.types.json import Jsonb
        self._settle()  # the connection is free for the catalog
        cur.execute("SELECT a.attname, t.typname, t.typcategory, a.attnotnull FROM pg_attribute a"
                    " JOIN pg_type t ON t.oid = a.atttypid WHERE a.attrelid = to_regclass(%s)"
                    " AND a.attnum > 0 AND NOT a.attisdropped", (self.target.quote(table),))
        out: dict[str, Callable[[Any], Any] | None] = {}
        for name, typname, category, not_null in cur.fetchall():
            out[name] = None  # every column: one the target lacks is told from one without a conversion
            if typname in ("json", "jsonb"):
                out[name] = _JsonColumn(Jsonb, not_null)
            elif typname == "bytea":
                out[name] = _from_base64
            elif typname == "bool":
                out[name] = _to_bool
            elif category == "S":  # a JSON object or array into a text column: its JSON
                out[name] = _as_text
        return out

    def table_keys(self, cur, table: str) -> bool | None:
        cur.execute("SELECT EXISTS (SELECT FROM pg_index WHERE indrelid = c.oid AND indisunique)"
                    " FROM pg_class c WHERE c.oid = to_regclass(%s)", (Target(None, "postgres").quote(table),))
        row = cur.fetchone()
        return None if row is None else bool(row[0])

    def execute_run(self, cur, sql: str, rows: list) -> None:
        """A run of upserts as one ``INSERT ... SELECT ... FROM json_populate_recordset(...)
        ON CONFLICT`` of the rows as a JSON array (the server converts each value by its
        column's type), or, when a value has no JSON form that converts the same (JSON null
        into a json column, a number beyond 64 bits), by ``COPY`` into a temporary table of
        the same column types; the last row of each key wins.  When that breaks another unique
        key of the target (two keys swapping a unique value), the run's changes go in turn."""
        upsert = self._upserts.get(sql)
        last = _last_of_each_key(upsert[1], rows) if upsert is not None and len(rows) >= 8 else None
        if upsert is None or last is None:
            cur.executemany(sql, [_values(r) for r in rows])
            return
        from psycopg import errors
        temps = dict(self._temps)
        cur.execute("SAVEPOINT cdc_run")
        try:
            self._upsert_last(cur, upsert, last)
        except errors.UniqueViolation:  # another unique key: only the changes in turn keep it at each step
            cur.execute("ROLLBACK TO SAVEPOINT cdc_run")
            self._temps = temps  # a temporary table made in the savepoint is gone
            cur.executemany(sql, [_values(r) for r in rows])
        else:
            cur.execute("RELEASE SAVEPOINT cdc_run")

    def _execute_guarded(self, cur, sql: str, rows: list[_Guarded]) -> None:
        """A run of guarded updates that do not move their key, as one ``UPDATE ... FROM
        json_populate_recordset(...)`` of the last row of each key; one row per key updated,
        or the run raises for the first row the target lacks."""
        table, key_cols, cols, moves = self._guarded[sql]
        last = _last_of_each_key(key_cols, [p.row for p in rows]) if len(rows) >= 8 and not moves else None
        doc = _json_rows(last) if last is not None else None
        if last is None or doc is None:
            super()._execute_guarded(cur, sql, rows)
            return
        q = self._column
        qt = self._name(table)
        cur.execute(f"UPDATE {qt} AS t SET " + ", ".join(f"{q(c)} = v.{q(c)}" for c in cols)
                    + f" FROM json_populate_recordset(NULL::{qt}, %s::json) AS v WHERE "
                    + " AND ".join(f"t.{q(k)} = v.{q(k)}" for k in key_cols), (doc.decode(),))
        if cur.rowcount != len(last):
            self._check_rows(cur, table, key_cols, rows)

    def _upsert_last(self, cur, upsert: tuple[str, list[str], tuple[str, ...]], last: list[dict]) -> None:
        table, key_cols, cols = upsert
        doc = _json_rows(last)
        if doc is not None:
            cur.execute(self._json_upsert(table, key_cols, cols, "%s"), (doc.decode(),))
            return
        q = self._column
        qt = self._name(table)
        names = ", ".join(q(c) for c in cols)
        temp = self._temps.get((table, cols))
        if temp is None:
            temp = self._temps[(table, cols)] = f"cdc_upsert_{len(self._temps)}"
            # the target's column types (CREATE ... AS keeps them), none of its constraints
            cur.execute(f"CREATE TEMPORARY TABLE {temp} ON COMMIT DELETE ROWS AS SELECT {names} FROM {qt} WITH NO DATA",
                        ())
        elif temp in self._used_temps:
            cur.execute(f"TRUNCATE {temp}")
        self._used_temps.add(temp)
        # psycopg reads no parameters in a COPY statement without any: its names as they are
        with cur.copy(f"COPY {temp} ({names.replace('%%', '%')}) FROM STDIN") as copy:
            write_row = copy.write_row
            for row in last:
                write_row(list(row.values()))
        cur.execute(f"INSERT INTO {qt} ({names}) SELECT {names} FROM {temp} "
                    + self.conflict_sql(key_cols, [c for c in cols if c not in key_cols]), ())

    def _json_upsert(self, table: str, key_cols: list[str], cols: tuple[str, ...], rows: str, where: str = "") -> str:
        """The upsert of the JSON array of rows (parameter ``rows``) into ``table``."""
        q = self._column
        qt = self._name(table)
        names = ", ".join(q(c) for c in cols)
        return (f"INSERT INTO {qt} ({names}) SELECT {names} FROM json_populate_recordset(NULL::{qt}, {rows}::json)"
                f"{where} " + self.conflict_sql(key_cols, [c for c in cols if c not in key_cols]))

    # ---- the asynchronous form (``Pipelined``): a batch that is one run of upserts --------

    def send(self, events: Sequence[ChangeEvent]) -> Statement | None:
        """Apply ``events`` after every batch sent before.  A batch that is one run of upserts
        into one table (the bulk of a snapshot or a load) goes as one statement, its position
        included, that runs while the next batch is prepared; any other batch is applied here,
        once the statement in flight has ended.  Returns the statement, or None when applied."""
        if self.target is None:
            self.open()
        conn = self.target.conn
        try:
            if self._known is None:  # the positions every statement sent so far leaves stored
                self._settle()
                with conn.cursor() as cur:
                    self._known = ({}, self._positions(cur))
                conn.commit()
            positions, stored = self._known
            with conn.cursor() as cur:
                self._cur = cur
                statements, changed, self.skipped = self._prepare(events, positions, stored)
                one = self._one_statement(statements, positions, changed, stored)
                if one is None:
                    self._settle()
                    self._apply(cur, statements, positions, changed, stored)
            if one is None:
                conn.commit()
                return None
            self._settle()
            if conn.info.transaction_status:  # a catalog read (a table's first batch) left one open
                conn.commit()
            self._sent = Statement(conn, *one)
            return self._sent
        except Exception as exc:
            err = self._batch_error(exc, events)
            self._reset()
            raise err from exc

    def wait(self, handle: Statement | None, timeout: float) -> bool:
        if handle is None:  # applied in send
            return True
        try:
            if not self._ended(handle, timeout):
                return False
        except Exception as exc:
            err = self._batch_error(exc, None, handle.about)
            if handle is self._sent:
                self._reset()
            raise err from exc
        if handle is self._sent:
            self._sent = None
        return True

    def _settle(self) -> None:
        sent, self._sent = self._sent, None
        if sent is not None:
            while not self._ended(sent, 1.0):
                pass

    def _ended(self, sent: Statement, timeout: float) -> bool:
        """``sent`` ended within ``timeout``; raises when it failed or applied nothing (the
        position it compared with had moved)."""
        if not sent.done(timeout):
            return False
        if sent.value != b"1":
            raise _moved(sent.about, self.sink_name)
        return True

    def _one_statement(self, statements: list[tuple[str, Any]], positions: dict[str, dict[str, tuple[tuple, str]]],
                       changed: set[str], stored: dict[str, str]) -> tuple[str, list[bytes | None], str] | None:
        """The batch as one statement (the rows, and the position compared and set: without
        it, no row) with its parameters, when it is a run of upserts into one table from one
        source table with a JSON form, else None.  ``stored`` then holds its position."""
        if len(statements) < 8 or len(changed) != 1:
            return None
        sql = statements[0][0]
        upsert = self._upserts.get(sql)
        if upsert is None or any(s[0] is not sql for s in statements):
            return None
        last = _last_of_each_key(upsert[1], [params for _, params in statements])
        doc = _json_rows(last) if last is not None else None
        if doc is None:
            return None
        [source_table] = changed
        position = _position_text(positions[source_table])
        expected = stored.get(source_table)
        table, key_cols, cols = upsert
        one = (f"WITH moved AS ({self._position_sql('$2', '$3', '$4', '$5')} RETURNING 1),"
               f" applied AS ({self._json_upsert(table, key_cols, cols, '$1', ' WHERE EXISTS (SELECT 1 FROM moved)')})"
               f" SELECT count(*) FROM moved").replace("%%", "%")  # sent as it is: no '%' placeholders
        stored[source_table] = position
        # the session is UTF8 (``session``), as orjson writes
        return one, [doc, *(None if v is None else v.encode()
                            for v in (self.sink_name, source_table, position, expected))], source_table

    def truncate_sql(self, qt: str) -> str:
        return f"TRUNCATE {qt}"

    def conflict_sql(self, key_cols: list[str], other_cols: list[str]) -> str:
        q = self._column
        keys = ", ".join(q(k) for k in key_cols)
        if not other_cols:
            return f"ON CONFLICT ({keys}) DO NOTHING"
        return f"ON CONFLICT ({keys}) DO UPDATE SET " + ", ".join(f"{q(c)} = EXCLUDED.{q(c)}" for c in other_cols)

    def _save_position(self, cur, source_table: str, event_id: str, expected: str | None) -> None:
        """Compare and set: a statement of a stopped sink may still run in the server and
        commit after this batch read the position (a statement in flight when its process
        ended); this batch then applies nothing and is delivered again from there."""
        cur.execute(self._position_sql("%s", "%s", "%s", "%s"), (self.sink_name, source_table, event_id, expected))
        if cur.rowcount != 1:
            raise _moved(source_table, self.sink_name)

    def _position_sql(self, sink: str, source_table: str, event_id: str, expected: str) -> str:
        return (f"INSERT INTO {self._name(self.position_table)} AS p (sink, source_table, event_id)"
                f" VALUES ({sink}, {source_table}, {event_id}) ON CONFLICT (sink, source_table)"
                f" DO UPDATE SET event_id = EXCLUDED.event_id, updated_at = now()"
                f" WHERE p.event_id IS NOT DISTINCT FROM {expected}::text")


class MySQLMirrorSink(_MirrorSink):
    """``type: mysql`` sink (MySQL or MariaDB): ``dsn: mysql://user:pw@host:port/db``."""

    dialect = "mysql"
    percent = "%%"  # PyMySQL formats every statement it is given parameters for (even none: ())

    def adapt(self, value):
        if isinstance(value, (dict, list)):
            return orjson.dumps(value).decode()
        return value

    def converters(self, cur, table: str) -> dict[str, Callable[[Any], Any] | None]:
        schema, _, name = table.rpartition(".")
        cur.execute("SELECT COLUMN_NAME, DATA_TYPE, IS_NULLABLE FROM information_schema.COLUMNS"
                    " WHERE TABLE_SCHEMA = COALESCE(%s, DATABASE()) AND TABLE_NAME = %s", (schema or None, name))
        columns = cur.fetchall()
        # MariaDB's json is a longtext with CHECK (json_valid(col))
        cur.execute("SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS"
                    " WHERE CONSTRAINT_SCHEMA = COALESCE(%s, DATABASE()) AND TABLE_NAME = %s", (schema or None, name))
        checked_json = {m for (clause,) in cur.fetchall() for m in re.findall(r"json_valid\(`((?:[^`]|``)+)`\)", clause)}
        out: dict[str, Callable[[Any], Any] | None] = {}
        for column, data_type, nullable in columns:
            out[column] = None  # every column: one the target lacks is told from one without a conversion
            data_type = data_type.lower()
            if data_type == "json" or column.replace("`", "``") in checked_json:
                out[column] = _JsonColumn(_json_text, nullable == "NO")
            elif data_type in ("blob", "tinyblob", "mediumblob", "longblob", "binary", "varbinary"):
                out[column] = _from_base64
            elif data_type in ("datetime", "timestamp"):
                out[column] = _mysql_datetime
            elif data_type == "bit":
                out[column] = _bits
        return out

    def execute_run(self, cur, sql: str, rows: list) -> None:
        if "%%" in sql:  # a name with '%': PyMySQL before 1.2 leaves ON DUPLICATE KEY's '%%' doubled in executemany
            for r in rows:
                cur.execute(sql, _values(r))
            return
        super().execute_run(cur, sql, rows)

    def table_keys(self, cur, table: str) -> bool | None:
        schema, _, name = table.rpartition(".")
        cur.execute("SELECT (SELECT COUNT(*) FROM information_schema.STATISTICS s WHERE s.TABLE_SCHEMA = t.TABLE_SCHEMA"
                    " AND s.TABLE_NAME = t.TABLE_NAME AND s.NON_UNIQUE = 0) FROM information_schema.TABLES t"
                    " WHERE t.TABLE_SCHEMA = COALESCE(%s, DATABASE()) AND t.TABLE_NAME = %s", (schema or None, name))
        row = cur.fetchone()
        return None if row is None else row[0] > 0

    def truncate_sql(self, qt: str) -> str:
        return f"DELETE FROM {qt}"

    def conflict_sql(self, key_cols: list[str], other_cols: list[str]) -> str:
        q = self._column
        cols = other_cols or key_cols[:1]
        return "ON DUPLICATE KEY UPDATE " + ", ".join(f"{q(c)} = VALUES({q(c)})" for c in cols)

    def _save_position(self, cur, source_table: str, event_id: str, expected: str | None) -> None:
        # one explicit transaction per batch: nothing commits once its connection is gone
        cur.execute(f"INSERT INTO {self._name(self.position_table)} (sink, source_table, event_id)"
                    " VALUES (%s, %s, %s) ON DUPLICATE KEY UPDATE event_id = VALUES(event_id)",
                    (self.sink_name, source_table, event_id))
