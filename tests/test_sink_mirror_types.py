"""Mirrors copy values exactly, across the two databases: a table with every type of the
README's type table, PostgreSQL -> MariaDB (through the engine) and MariaDB -> PostgreSQL
(the real binlog source), and exactly-once ordering of MariaDB GTIDs after a failover
and across two GTID domains."""

from __future__ import annotations

import datetime as dt
import time
from decimal import Decimal

import psycopg
import pymysql

from cdc.config import Context
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


def test_mariadb_to_postgres_every_type(mariadb_server, mariadb_database, pg_database):
    db = db_of(mariadb_database)
    execute(mariadb_server, db, MY_SOURCE)
    sql(pg_database, PG_TARGET)
    source = make_source(mariadb_server, db, [f"{db}.every_type"])
    source.open(None)
    try:
        execute(mariadb_server, db, MY_ROW)
        events = collect(source, 1)
    finally:
        source.close()
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
