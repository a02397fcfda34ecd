"""Mirrors copy values exactly, across the two databases: a table with every type of the
README's type table, PostgreSQL -> MariaDB (through the engine) and MariaDB -> PostgreSQL
(the real binlog source), and exactly-once ordering of MariaDB GTIDs after a failover
and across two GTID domains."""

from __future__ import annotations

import datetime as dt
import random
import time
from decimal import Decimal

import orjson
import psycopg
import pymysql
import pytest
from test_snapshot_mysql import Running as MyRunning

from cdc.config import Context, parse_config
from cdc.event import ChangeEvent
from cdc.sinks.mirror import MySQLMirrorSink, PostgresMirrorSink

from mysql_helpers import collect, db_of, execute, make_source
from pgutil import Running, sql, stream_config

UUID = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"

PG_SOURCE = """
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE TABLE every_type (
  id int PRIMARY KEY, c_smallint smallint, c_bigint bigint, c_oid oid, c_numeric numeric,
  c_real real, c_double double precision, c_bool boolean, c_text text, c_varchar varchar(10),
  c_char char(3), c_name name, c_date date, c_time time, c_ts timestamp, c_tstz timestamptz,
  c_interval interval, c_uuid uuid, c_json json, c_jsonb jsonb, c_jsonb_null jsonb NOT NULL,
  c_bytea bytea, c_array int[], c_enum mood, c_null text)
"""
PG_ROW = """INSERT INTO every_type VALUES (1, 32767, 9223372036854775807, 4294967295,
  '12345678901234567890.0123456789', 1.5, 0.1, true, 'héllo "x"', 'ab', 'abc', 'nm', '2026-11-25',
  '17:16:27.123456', '2026-11-25 17:16:27.123456', '2026-11-25 17:16:27.5+02', '1 year 2 mons 3 days 04:05:06',
  '""" + UUID + """', '{"a": [1, 2.5, null]}', '["x", {"b": true}]', 'null', '\\x00ff10', '{1,NULL,3}', 'happy',
  NULL)"""
MY_TARGET = """CREATE TABLE every_type (
  id int PRIMARY KEY, c_smallint smallint, c_bigint bigint, c_oid int unsigned, c_numeric decimal(30,10),
  c_real float, c_double double, c_bool tinyint(1), c_text text, c_varchar varchar(10), c_char char(3),
  c_name varchar(64), c_date date, c_time time(6), c_ts datetime(6), c_tstz timestamp(6) NULL,
  c_interval varchar(64), c_uuid uuid, c_json json, c_jsonb json, c_jsonb_null json NOT NULL, c_bytea blob,
  c_array json, c_enum enum('sad', 'happy'), c_null text)"""
MY_EXPECTED = (1, 32767, 9223372036854775807, 4294967295, Decimal("12345678901234567890.0123456789"), 1.5, 0.1,
               1, 'héllo "x"', "ab", "abc", "nm", dt.date(2026, 11, 25),
               dt.timedelta(hours=17, minutes=16, seconds=27, microseconds=123456),
               dt.datetime(2026, 11, 25, 17, 16, 27, 123456), dt.datetime(2026, 11, 25, 15, 16, 27, 500000),
               "P1Y2M3DT4H5M6S", UUID, '{"a":[1,2.5,null]}', '["x",{"b":true}]', "null", b"\x00\xff\x10",
               "[1,null,3]", "happy", None)


def my_connect(dsn: str):
    from urllib.parse import urlsplit
    u = urlsplit(dsn)
    return pymysql.connect(host=u.hostname, port=u.port, user=u.username, password=u.password,
                           database=u.path.lstrip("/"), init_command="SET time_zone = '+00:00'")


def my_rows(dsn: str, query: str) -> list:
    with my_connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(query)
        return [tuple(r) for r in cur.fetchall()]


def test_postgres_to_mariadb_every_type(pg_database, mariadb_server, mariadb_database, tmp_path):
    execute(mariadb_server, db_of(mariadb_database), MY_TARGET)
    sql(pg_database, PG_SOURCE)
    cfg = stream_config(tmp_path, pg_database, ["every_type"],
                 {"p": {"source": "db", "sinks": [{"type": "mysql", "dsn": mariadb_database}]}})
    with Running(cfg) as running:
        sql(pg_database, PG_ROW)
        deadline = time.monotonic() + 30
        while not my_rows(mariadb_database, "SELECT id FROM every_type"):
            worker = running.runner.workers[0]
            assert time.monotonic() < deadline, worker.last_error
            time.sleep(0.1)
    [row] = my_rows(mariadb_database, "SELECT * FROM every_type")
    row = list(row)
    for i in (18, 19, 20, 22):  # JSON columns: compare the JSON, not MariaDB's spacing
        row[i] = row[i].replace(" ", "")
    assert tuple(row) == MY_EXPECTED


MY_SOURCE = """CREATE TABLE every_type (
  id int PRIMARY KEY, c_tinyint tinyint, c_bool tinyint(1), c_smallint smallint, c_mediumint mediumint,
  c_int int, c_bigint bigint, c_ubigint bigint unsigned, c_decimal decimal(12,2), c_float float,
  c_double double, c_char char(3), c_varchar varchar(10), c_text text, c_enum enum('sad', 'happy'),
  c_set set('a', 'b', 'c'), c_binary binary(4), c_varbinary varbinary(10), c_blob blob, c_date date,
  c_datetime datetime(6), c_timestamp timestamp(6) NULL, c_time time(6), c_year year, c_json json,
  c_json_null json NOT NULL, c_bit bit(5), c_null text)"""
MY_ROW = """INSERT INTO every_type VALUES (1, -128, 1, -32768, 8388607, -2147483648, 9223372036854775807,
  18446744073709551615, 1234.50, 1.5, 0.1, 'abc', 'ab', 'héllo', 'happy', 'a,c', x'00ff1000', x'00ff',
  x'0102', '2026-11-25', '2026-11-25 17:16:27.123456', '2026-11-25 17:16:27.5', '-12:30:00.5', 2026,
  '{"a": [1, 2.5, null]}', 'null', b'10101', NULL)"""
PG_TARGET = """
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE TABLE every_type (
  id int PRIMARY KEY, c_tinyint smallint, c_bool boolean, c_smallint smallint, c_mediumint integer,
  c_int integer, c_bigint bigint, c_ubigint numeric(20), c_decimal numeric(12,2), c_float real,
  c_double double precision, c_char char(3), c_varchar varchar(10), c_text text, c_enum mood,
  c_set text, c_binary bytea, c_varbinary bytea, c_blob bytea, c_date date,
  c_datetime timestamp, c_timestamp timestamptz, c_time interval, c_year smallint, c_json jsonb,
  c_json_null jsonb NOT NULL, c_bit bit(5), c_null text)"""
PG_EXPECTED = (1, -128, True, -32768, 8388607, -2147483648, 9223372036854775807, Decimal("18446744073709551615"),
               Decimal("1234.50"), 1.5, 0.1, "abc", "ab", "héllo", "happy", "a,c", b"\x00\xff\x10\x00",
               b"\x00\xff", b"\x01\x02", dt.date(2026, 11, 25), dt.datetime(2026, 11, 25, 17, 16, 27, 123456),
               dt.datetime(2026, 11, 25, 17, 16, 27, 500000, tzinfo=dt.UTC),
               -dt.timedelta(hours=12, minutes=30, seconds=0.5), 2026, {"a": [1, 2.5, None]}, None, "10101", None)


def _every_type_event(mariadb_server, mariadb_database, pg_database) -> ChangeEvent:
    """MY_ROW as the MariaDB source reads it; PG_TARGET created in ``pg_database``."""
    db = db_of(mariadb_database)
    execute(mariadb_server, db, MY_SOURCE)
    sql(pg_database, PG_TARGET)
    source = make_source(mariadb_server, db, [f"{db}.every_type"])
    source.open(None)
    try:
        execute(mariadb_server, db, MY_ROW)
        [event] = collect(source, 1)
    finally:
        source.close()
    return event


def test_mariadb_to_postgres_every_type(mariadb_server, mariadb_database, pg_database):
    events = [_every_type_event(mariadb_server, mariadb_database, pg_database)]
    sink = PostgresMirrorSink(pg_database, context=Context(None, name="copy"))
    sink.open()
    sink.write(events)
    sink.close()
    with psycopg.connect(pg_database) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        row = conn.execute("SELECT *, c_json_null IS NOT NULL, jsonb_typeof(c_json_null) FROM every_type"
                           ).fetchone()
    assert row[-2:] == (True, "null")  # JSON null, not SQL NULL
    assert row[:-2] == PG_EXPECTED


def test_mariadb_to_postgres_every_type_in_a_run(mariadb_server, mariadb_database, pg_database):
    """A batch of upserts into one table goes as one statement of the rows as JSON (each value
    converted by the server) or, when a value has no JSON form that converts the same (JSON null
    into the NOT NULL jsonb column), by COPY: both hold what one row's INSERT holds."""
    event = _every_type_event(mariadb_server, mariadb_database, pg_database)
    gtid = event.id.rsplit(":", 1)[0]
    runs = []
    for first, json_null in ((1, None), (13, {"k": [1, None]})):
        runs.append([ChangeEvent(f"{gtid}:{n}", "c", None, {**event.after, "id": n, "c_json_null": json_null},
                                 {"id": n}, event.source, event.ts_ms, event.table) for n in range(first, first + 12)])
    sink = PostgresMirrorSink(pg_database, context=Context(None, name="copy"))
    sink.open()
    sink.write(runs[0])
    assert sink._temps, "JSON null into a NOT NULL jsonb column goes by COPY"
    sink._temps.clear()
    sink.write(runs[1])
    assert not sink._temps, "the run without JSON null goes as JSON rows"
    sink.close()
    with psycopg.connect(pg_database) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        rows = conn.execute("SELECT * FROM every_type ORDER BY id").fetchall()
    assert [r[:1] + r[1:-3] + r[-2:] for r in rows] == [(n,) + PG_EXPECTED[1:-3] + PG_EXPECTED[-2:]
                                                        for n in range(1, 25)]
    assert [r[-3] for r in rows] == [None] * 12 + [{"k": [1, None]}] * 12  # JSON null, then the object
    with psycopg.connect(pg_database) as conn:
        assert conn.execute("SELECT count(*) FROM every_type WHERE jsonb_typeof(c_json_null) = 'null'"
                            ).fetchone()[0] == 12


def test_postgres_run_keeps_nan_infinities_big_numbers_and_the_last_change_of_a_key(pg_database):
    """Values JSON has no form for, in a run of upserts: NaN and infinities keep their value,
    an integer beyond 64 bits goes by COPY; the last change of a key in the batch wins."""
    sql(pg_database, "CREATE TABLE f (id int PRIMARY KEY, d float8, r real, n numeric, t text)")
    src = {"name": "shop", "schema": "public", "table": "f"}
    values = [(float("nan"), float("inf"), float("-inf"), float("nan")), (1.5, float("-inf"), 2**70, "x")]
    sink = PostgresMirrorSink(pg_database, context=Context(None, name="copy"))
    sink.open()
    for batch, (d, r, n, t) in enumerate(values):
        events = [ChangeEvent(f"0/{batch + 1:X}:{i}", "u", None, {"id": i % 10, "d": d, "r": r, "n": n, "t": t},
                              {"id": i % 10}, src, 1, "public.f") for i in range(20)]
        events[-1].after = {**events[-1].after, "t": "last"}  # key 9, the second change of it in the batch
        sink.write(events)
        assert bool(sink._temps) == (batch == 1), "a number beyond 64 bits goes by COPY, the rest as JSON"
        with psycopg.connect(pg_database) as conn:
            rows = conn.execute("SELECT id, d::text, r::text, n::text, t FROM f ORDER BY id").fetchall()
        want = {0: ("NaN", "Infinity", "-Infinity", "NaN"), 1: ("1.5", "-Infinity", str(2**70), "x")}[batch]
        assert rows == [(i, *want[:3], "last" if i == 9 else want[3]) for i in range(10)]
    sink.close()


def test_mysql_dsn_options_reach_the_session(mariadb_database):
    sink = MySQLMirrorSink(mariadb_database + "?init_command=SET @@session.sql_mode='ANSI_QUOTES'",
                           context=Context(None, name="copy"))
    sink.open()
    with sink.target.conn.cursor() as cur:
        cur.execute("SELECT @@session.sql_mode")
        assert cur.fetchone()[0] == "ANSI_QUOTES"
    sink.close()


# ---- exactly-once ordering of MariaDB GTIDs ----------------------------------------------

def test_mariadb_failover_and_two_domains_are_not_dropped(mariadb_server, mariadb_database, pg_database):
    """A second server id (as after a failover: ``SET server_id`` makes the server write
    GTIDs ``0-<id>-<seq>`` as that server would) and a second GTID domain."""
    db = db_of(mariadb_database)
    execute(mariadb_server, db, "CREATE TABLE t (id int PRIMARY KEY, v text)")
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY, v text)")
    source = make_source(mariadb_server, db, [f"{db}.t"])
    source.open(None)
    batches = []
    try:
        execute(mariadb_server, db, "SET SESSION server_id = 7", "INSERT INTO t VALUES (1, 'on server 7')")
        batches.append(collect(source, 1))
        # failover to a server with a lower id: its GTIDs continue the domain's sequence
        execute(mariadb_server, db, "SET SESSION server_id = 2", "INSERT INTO t VALUES (2, 'on server 2')")
        batches.append(collect(source, 1))
        # a second domain, far ahead in its own sequence, then domain 0 again
        execute(mariadb_server, db, "SET SESSION gtid_domain_id = 5", "SET SESSION gtid_seq_no = 100000",
                "INSERT INTO t VALUES (3, 'domain 5')")
        batches.append(collect(source, 1))
        execute(mariadb_server, db, "INSERT INTO t VALUES (4, 'domain 0 again')")
        batches.append(collect(source, 1))
    finally:
        source.close()
    ids = [b[0].id for b in batches]
    assert [i.split("-")[:2] for i in ids] == [["0", "7"], ["0", "2"], ["5", "1"], ["0", "1"]], ids
    sink = PostgresMirrorSink(pg_database, context=Context(None, name="copy"))
    sink.open()
    for batch in batches:
        sink.write(batch)
        assert sink.skipped == []
    for batch in batches:  # a redelivery of all of it applies nothing
        sink.write(batch)
        assert sink.skipped == [batch[0].id]
    sink.close()
    assert sql(pg_database, "SELECT id FROM t ORDER BY id") == [(1,), (2,), (3,), (4,)]


# ---- a JSON null is not SQL NULL -----------------------------------------------------------

JSON_CELLS = [None, "null", '{"a": null}', "[null]", '"null"', "0", "false", "{}"]  # None: SQL NULL
SQL_NULL = "<SQL NULL>"  # a cell that is SQL NULL, as the comparisons below show it
DOCS_DDL = {"postgres": "CREATE TABLE docs (id int PRIMARY KEY, doc json, docb jsonb)",
            "mysql": "CREATE TABLE docs (id int PRIMARY KEY, doc json, docb json)"}


def _doc_rows(ids) -> list[tuple]:
    """Rows of ``docs``: every JSON cell in each column, SQL NULL beside JSON null and the other way round."""
    return [(i, JSON_CELLS[i % 8], JSON_CELLS[(i + 3) % 8]) for i in ids]


def _cells(rows) -> list[tuple]:
    """(id, doc, docb) with SQL NULL shown as SQL_NULL and JSON as parsed JSON (null: None)."""
    return [(i, *(SQL_NULL if v is None else orjson.loads(v) for v in values)) for i, *values in rows]


class _Docs:
    """The ``docs`` table in a PostgreSQL or MariaDB database: write to it, read its cells."""

    def __init__(self, kind: str, dsn: str) -> None:
        self.kind, self.dsn = kind, dsn

    def run(self, *statements: str, params: list | None = None) -> None:
        if self.kind == "postgres":
            with psycopg.connect(self.dsn) as conn:  # one transaction
                for s in statements:
                    conn.execute(s)
                if params:
                    conn.cursor().executemany("INSERT INTO docs VALUES (%s, %s, %s)", params)
        else:
            with my_connect(self.dsn) as conn, conn.cursor() as cur:
                for s in statements:
                    cur.execute(s)
                if params:
                    cur.executemany("INSERT INTO docs VALUES (%s, %s, %s)", params)
                conn.commit()

    def cells(self) -> list[tuple]:
        if self.kind == "postgres":
            return _cells(sql(self.dsn, "SELECT id, doc::text, docb::text FROM docs ORDER BY id"))
        return _cells(my_rows(self.dsn, "SELECT id, doc, docb FROM docs ORDER BY id"))


def _wait_equal(source: _Docs, target: _Docs, runner, what: str) -> None:
    expected = source.cells()
    assert any(SQL_NULL in r for r in expected) and any(None in r for r in expected)  # both kinds are there
    deadline = time.monotonic() + 60
    while [r[0] for r in target.cells()] != [r[0] for r in expected]:
        assert time.monotonic() < deadline, f"{what}: {runner.workers[0].last_error}"
        time.sleep(0.2)
    deadline = time.monotonic() + 10  # the rows are there; their last changes may still be on the way
    while (got := target.cells()) != expected and time.monotonic() < deadline:
        time.sleep(0.2)
    assert got == expected, what


@pytest.mark.parametrize("source_kind,target_kind", [("postgres", "postgres"), ("postgres", "mysql"),
                                                     ("mysql", "postgres"), ("mysql", "mysql"),
                                                     ("mysql library", "postgres")])
def test_json_null_is_not_sql_null_snapshotted_and_streamed(source_kind, target_kind, pg_server, pg_database,
                                                            mariadb_server, mariadb_database, tmp_path):
    """A nullable json column holding SQL NULL, JSON ``null`` and other JSON values: the
    mirror holds the same cells, copied by the snapshot and then streamed.  ``mysql
    library``: the binlog rows decoded by python-mysql-replication (``fast_decoder: false``)."""
    library = source_kind == "mysql library"
    source_kind = "mysql" if library else source_kind
    db = db_of(mariadb_database)
    if source_kind == "postgres":
        source_dsn = pg_database
        source_cfg = {"type": "postgres", "dsn": pg_database, "tables": ["public.docs"]}
    else:
        source_dsn = mariadb_database
        source_cfg = {"type": "mysql", "dsn": mariadb_server.dsn(db, user="cdc"), "tables": [f"{db}.docs"],
                      "server_id": random.randint(5000, 90000), "fast_decoder": not library}
    if target_kind == "postgres":
        target_dsn = pg_server.create_database(f"mirror_{db}") if source_kind == "postgres" else pg_database
    else:
        target_dsn = mariadb_server.create_database(f"mirror_{db}") if source_kind == "mysql" else mariadb_database
    source, target = _Docs(source_kind, source_dsn), _Docs(target_kind, target_dsn)
    source.run(DOCS_DDL[source_kind], params=_doc_rows(range(1, 17)))
    target.run(DOCS_DDL[target_kind])
    raw = {"sources": {"db": {**source_cfg, "checkpoint": {"type": "file", "path": "state/db.json"},
                              "checkpoint_interval": 0.2, "snapshot_chunk_size": 10}},
           "pipelines": {"mirror": {"source": "db", "sinks": [{"type": target_kind, "dsn": target_dsn}]}}}
    cfg = parse_config(raw, tmp_path / "pipelines.yaml", {})
    with (Running if source_kind == "postgres" else MyRunning)(cfg) as r:
        _wait_equal(source, target, r.runner, "the snapshot")
        source.run(params=_doc_rows(range(101, 117)))  # one transaction: a run of upserts
        source.run("UPDATE docs SET doc = 'null' WHERE id = 8",  # SQL NULL -> JSON null
                   "UPDATE docs SET doc = NULL WHERE id = 9",  # JSON null -> SQL NULL
                   "UPDATE docs SET docb = 'null', doc = '[1]' WHERE id = 12",
                   "DELETE FROM docs WHERE id = 101")
        _wait_equal(source, target, r.runner, "the stream")


def test_json_null_survives_the_dead_letter_replay(mariadb_server, mariadb_database, pg_database, tmp_path):
    """Events parked in a file dead-letter queue go through JSON; ``cdc dlq replay`` into a
    PostgreSQL mirror still tells JSON null from SQL NULL."""
    from click.testing import CliRunner

    from cdc.cli import main
    from cdc.config import load_config
    from cdc.engine.deadletters import DeadLetterWriter
    db = db_of(mariadb_database)
    source, target = _Docs("mysql", mariadb_database), _Docs("postgres", pg_database)
    source.run(DOCS_DDL["mysql"])
    target.run(DOCS_DDL["postgres"])
    reader = make_source(mariadb_server, db, [f"{db}.docs"])
    reader.open(None)
    try:
        source.run(params=_doc_rows(range(1, 17)))
        events = collect(reader, 16)
    finally:
        reader.close()
    config = tmp_path / "p.yaml"
    config.write_text(f"""
sources:
  legacy: {{type: mysql, dsn: "mysql://x@127.0.0.1:1/x", server_id: 9, tables: [{db}.docs], checkpoint: {{type: memory}}}}
pipelines:
  docs:
    source: legacy
    sinks:
      - {{type: postgres, name: copy, dsn: "{pg_database}", on_error: dead_letter, dead_letter: {{type: file, path: dlq.jsonl}}}}
""")
    spec = load_config(config).pipelines["docs"].sinks[0]
    writer = DeadLetterWriter(spec.dead_letter.build(), "docs")
    for e in events:
        writer.park(e, "copy", RuntimeError("target down"), 1, None)
    writer.close()
    result = CliRunner().invoke(main, ["dlq", "replay", str(config)])
    assert result.exit_code == 0 and "replayed 16" in result.output, result.output + result.stderr
    expected = source.cells()
    assert any(SQL_NULL in r for r in expected) and any(None in r for r in expected)
    assert target.cells() == expected
