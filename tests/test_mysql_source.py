"""The MySQL/MariaDB binlog source against a real MariaDB 10.11."""

from __future__ import annotations

import resource
import time
import uuid

import psycopg
import pytest

from cdc.config import Context
from cdc.event import Commit
from cdc.sources.postgres import PostgresSource

from mysql_helpers import collect, db_of, execute, make_source

ORDERS = ("CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, status varchar(20),"
          " amount decimal(12,2), note varchar(200), created_at datetime(6))")


@pytest.fixture
def shop(mariadb_server, mariadb_database):
    db = db_of(mariadb_database)
    execute(mariadb_server, db, ORDERS)
    return mariadb_server, db


def test_insert_update_delete(shop):
    server, db = shop
    source = make_source(server, db, [f"{db}.orders"])
    source.open(None)
    try:
        # a first run hands out its start position first, so that it is stored before anything is read
        assert [type(i) for i in source.poll(0.2)] == [Commit]
        assert source.poll(0.2) == []
        execute(server, db,
                "INSERT INTO orders VALUES (1, 10, 'new', 12.50, 'first', '2026-11-25 17:16:27.123456')",
                "BEGIN", "UPDATE orders SET status = 'paid' WHERE id = 1", "SAVEPOINT s1",
                "INSERT INTO orders (id) VALUES (2)", "COMMIT",
                "DELETE FROM orders WHERE id = 1")
        commits: list[Commit] = []
        events = collect(source, 4, commits=commits)
    finally:
        source.close()
    assert [e.op for e in events] == ["c", "u", "c", "d"]
    first = {"id": 1, "customer_id": 10, "status": "new", "amount": "12.50", "note": "first",
             "created_at": "2026-11-25T17:16:27.123456"}
    assert events[0].after == first and events[0].before is None
    assert events[1].before == first and events[1].after == {**first, "status": "paid"}
    assert events[2].after["id"] == 2 and events[2].after["note"] is None
    assert events[3].before == {**first, "status": "paid"} and events[3].after is None
    assert [e.key for e in events] == [{"id": 1}, {"id": 1}, {"id": 2}, {"id": 1}]
    assert all(e.table == f"{db}.orders" for e in events)
    # one transaction, two rows: same GTID, row index 0 and 1
    gtid = events[1].source["gtid"]
    assert events[1].id == f"{gtid}:0" and events[2].id == f"{gtid}:1"
    assert len({e.id for e in events}) == 4
    src = events[0].source
    assert src["connector"] == "mysql" and src["db"] == db and src["table"] == "orders"
    assert src["file"].startswith("binlog.") and src["pos"] > 0 and src["row"] == 0
    assert src["server_id"] == 1 and src["ts_ms"] > 0 and src["name"] == "legacy"
    assert len(commits) == 3 and all(set(c.position) == {"gtid", "file", "pos", "server"} for c in commits)


def test_resume_from_a_commit_position(shop):
    server, db = shop
    source = make_source(server, db, [f"{db}.orders"])
    source.open(None)
    execute(server, db, "INSERT INTO orders (id) VALUES (1)", "INSERT INTO orders (id) VALUES (2)")
    commits: list[Commit] = []
    first = collect(source, 2, commits=commits)
    source.close()
    commits = commits[1:]  # the first is the start position of this first run
    execute(server, db, "INSERT INTO orders (id) VALUES (3)")
    again = make_source(server, db, [f"{db}.orders"])
    again.open(commits[0].position)  # after the first transaction
    try:
        events = collect(again, 2)
    finally:
        again.close()
    assert [e.after["id"] for e in events] == [2, 3]
    assert events[0].id == first[1].id


def test_qualify_table_uses_the_dsn_database():
    from cdc.sources.mysql import MySQLSource
    assert MySQLSource.qualify_table("orders", {"dsn": "mysql://u:p@127.0.0.1:3306/shop"}) == "shop.orders"
    assert MySQLSource.qualify_table("x.orders", {"dsn": "mysql://u:p@127.0.0.1/shop"}) == "x.orders"


def test_alter_table_mid_stream(shop):
    server, db = shop
    source = make_source(server, db, [f"{db}.orders"])
    source.open(None)
    try:
        execute(server, db, "INSERT INTO orders (id, status) VALUES (1, 'new')",
                "ALTER TABLE orders ADD COLUMN priority int NOT NULL DEFAULT 5 AFTER status,"
                " DROP COLUMN note",
                "INSERT INTO orders (id, status, priority) VALUES (2, 'new', 9)",
                "UPDATE orders SET status = 'old' WHERE id = 1")
        commits: list[Commit] = []
        events = collect(source, 3, commits=commits)
    finally:
        source.close()
    assert list(events[0].after) == ["id", "customer_id", "status", "amount", "note", "created_at"]
    assert list(events[1].after) == ["id", "customer_id", "status", "priority", "amount", "created_at"]
    assert events[1].after["priority"] == 9
    assert events[2].before["priority"] == 5 and events[2].after["status"] == "old"
    assert len(commits) == 5  # the start position, then the DDL is a transaction boundary too


def test_large_transaction_streams_in_bounded_batches(shop):
    server, db = shop
    execute(server, db, "CREATE TABLE seq (seq bigint unsigned PRIMARY KEY)",
            "CREATE TABLE big (id bigint PRIMARY KEY, note varchar(100))")
    source = make_source(server, db, [f"{db}.big"], max_poll_events=2000)
    source.open(None)
    try:
        execute(server, db,
                "INSERT INTO seq SELECT seq FROM seq_0_to_99999",
                "INSERT INTO big SELECT seq, CONCAT('note number ', seq) FROM seq")
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        seen, largest, ids, last = 0, 0, set(), None
        deadline = time.monotonic() + 120
        while last is None or seen < 100_000:
            assert time.monotonic() < deadline, f"read {seen} of 100,000 rows"
            batch = source.poll(1.0)
            largest = max(largest, len(batch))
            for item in batch:
                if isinstance(item, Commit):
                    last = item
                else:
                    seen += 1
                    ids.add(item.after["id"])
            # the events are dropped here, as a sink would after writing them
        rss_growth_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    finally:
        source.close()
    assert seen == 100_000 and len(ids) == 100_000
    assert largest <= 2000 + 200  # at most one rows event past the limit
    assert rss_growth_kb < 60_000, f"peak RSS grew by {rss_growth_kb} kB"


# ---- the same orders table in PostgreSQL and MariaDB gives the same `after` --------------

PG_ORDERS = """CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, status varchar(20),
    amount numeric(12,2), note varchar(200), created_at timestamp(6), paid_at timestamptz(6),
    ship_date date, ship_time time(6), qty smallint, score integer, weight real, price double precision,
    payload jsonb, attachment bytea, code char(3), remark text)"""
MY_ORDERS = """CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, status varchar(20),
    amount decimal(12,2), note varchar(200), created_at datetime(6), paid_at timestamp(6) NULL,
    ship_date date, ship_time time(6), qty smallint, score int, weight float, price double,
    payload json, attachment blob, code char(3), remark text)"""
ROWS = [
    "(1, 42, 'new', 1234.50, 'first order', '2026-11-25 17:16:27.123456', '2026-11-25 17:16:28.5',"
    " '2026-11-25', '17:16:27.25', -3, 2147483647, 1.1, 0.1, '{\"a\": [1, 2.5, null], \"b\": \"x\"}',"
    " {blob}, 'abc', 'ünïcode ✓')",
    "(2, NULL, NULL, -0.05, NULL, '2000-01-01 00:00:00', '1999-12-31 23:59:59', '0001-01-01',"
    " '00:00:00', 32767, -2147483648, -2.5e-10, 1.7976931348623157e308, '[]', {empty}, NULL, '')",
    "(3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
]


def _fill(row: str, blob: str, empty: str) -> str:
    return row.replace("{blob}", blob).replace("{empty}", empty)


def _pg_afters(pg_database, rows):
    name = f"t_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(PG_ORDERS)
    source = PostgresSource(pg_database, ["public.orders"], context=Context(None, source=name, name=name))
    source.open(None)
    try:
        with psycopg.connect(pg_database, autocommit=True) as conn:
            conn.execute("SET TimeZone = 'UTC'")
            for row in rows:
                conn.execute("INSERT INTO orders VALUES " + _fill(row, "'\\x00ff10'::bytea", "''::bytea"))
        return [e.after for e in collect(source, len(rows))]
    finally:
        source.close()
        with psycopg.connect(pg_database, autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (source.slot,))


def test_orders_after_is_the_same_as_postgresql(shop, pg_database):
    server, db = shop
    execute(server, db, "DROP TABLE orders", MY_ORDERS)
    source = make_source(server, db, [f"{db}.orders"])
    source.open(None)
    try:
        execute(server, db, *["INSERT INTO orders VALUES " + _fill(r, "x'00ff10'", "''")
                              for r in ROWS])
        mysql_afters = [e.after for e in collect(source, len(ROWS))]
    finally:
        source.close()
    pg_afters = _pg_afters(pg_database, ROWS)
    assert mysql_afters == pg_afters
    assert mysql_afters[0]["weight"] == 1.1 and mysql_afters[0]["payload"] == {"a": [1, 2.5, None], "b": "x"}
    assert mysql_afters[0]["paid_at"] == "2026-11-25T17:16:28.5Z"
    assert mysql_afters[1]["amount"] == "-0.05" and mysql_afters[0]["attachment"] == "AP8Q"


# ---- MySQL-only types -------------------------------------------------------------------

ALL_TYPES = """CREATE TABLE all_types (id int PRIMARY KEY,
    ti tinyint, tu tinyint unsigned, si smallint, su smallint unsigned, mi mediumint,
    mu mediumint unsigned, i int, iu int unsigned, bi bigint, bu bigint unsigned,
    de decimal(20,6), de0 decimal(5,0), f float, dbl double,
    c char(5), vc varchar(300), tx text, bl blob, bn binary(4), vb varbinary(10), lat varchar(10) CHARACTER SET latin1,
    dt date, dtm datetime(6), dt0 datetime, ts timestamp(6) NULL, tm time, tm3 time(3), yr year,
    en enum('small','large'), st set('a','b','c'), js json, bt bit(12), b1 bit(1))"""
ALL_ROWS = [
    "(1, 127, 255, 32767, 65535, 8388607, 16777215, 2147483647, 4294967295, 9223372036854775807,"
    " 18446744073709551615, 99999999999999.999999, 99999, 3.4e38, 1.7976931348623157e308,"
    " 'abc', REPEAT('x', 300), 'ü', x'00ff', x'01', x'', 'é', '9999-12-31', '9999-12-31 23:59:59.999999',"
    " '2026-11-25 17:16:27', '2038-01-19 03:14:07.999999', '838:59:59', '-838:59:58.999', 2155,"
    " 'large', 'a,c', '{\"k\": [true, false]}', b'111111111111', b'1')",
    "(2, -128, 0, -32768, 0, -8388608, 0, -2147483648, 0, -9223372036854775808, 0,"
    " -99999999999999.999999, -99999, -1.5, -0.0, '', '', '', '', x'', x'00', '',"
    " '0000-00-00', '0000-00-00 00:00:00', '0000-00-00 00:00:00', '0000-00-00 00:00:00', '-00:00:01',"
    " '-00:00:00.5', 0, 'bogus', '', '{}', b'0', b'0')",
    "(3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0.5, 1, 0.1, 0.1, NULL, NULL,"
    " NULL, NULL, NULL, NULL, NULL, '2026-11-25', '2026-11-25 17:16:27.000100', NULL,"
    " '1970-01-01 00:00:01', '12:00:00', '12:00:00.010', NULL, 'small', 'b', NULL, b'101', NULL)",
]
ALL_EXPECTED = [
    {"id": 1, "ti": 127, "tu": 255, "si": 32767, "su": 65535, "mi": 8388607, "mu": 16777215,
     "i": 2147483647, "iu": 4294967295, "bi": 9223372036854775807, "bu": 18446744073709551615,
     "de": "99999999999999.999999", "de0": "99999", "f": 3.4e38, "dbl": 1.7976931348623157e308,
     "c": "abc", "vc": "x" * 300, "tx": "ü", "bl": "AP8=", "bn": "AQAAAA==", "vb": "", "lat": "é",
     "dt": "9999-12-31", "dtm": "9999-12-31T23:59:59.999999", "dt0": "2026-11-25T17:16:27",
     "ts": "2038-01-19T03:14:07.999999Z", "tm": "838:59:59", "tm3": "-838:59:58.999", "yr": 2155,
     "en": "large", "st": "a,c", "js": {"k": [True, False]}, "bt": "111111111111", "b1": "1"},
    {"id": 2, "ti": -128, "tu": 0, "si": -32768, "su": 0, "mi": -8388608, "mu": 0, "i": -2147483648,
     "iu": 0, "bi": -9223372036854775808, "bu": 0, "de": "-99999999999999.999999", "de0": "-99999",
     "f": -1.5, "dbl": 0.0, "c": "", "vc": "", "tx": "", "bl": "", "bn": "AAAAAA==", "vb": "AA==",
     "lat": "", "dt": None, "dtm": None, "dt0": None, "ts": None, "tm": "-00:00:01",
     "tm3": "-00:00:00.5", "yr": None, "en": "", "st": "", "js": {}, "bt": "000000000000", "b1": "0"},
    {"id": 3, "ti": None, "tu": None, "si": None, "su": None, "mi": None, "mu": None, "i": None,
     "iu": None, "bi": None, "bu": None, "de": "0.500000", "de0": "1", "f": 0.1, "dbl": 0.1, "c": None,
     "vc": None, "tx": None, "bl": None, "bn": None, "vb": None, "lat": None, "dt": "2026-11-25",
     "dtm": "2026-11-25T17:16:27.0001", "dt0": None, "ts": "1970-01-01T00:00:01Z", "tm": "12:00:00",
     "tm3": "12:00:00.01", "yr": None, "en": "small", "st": "b", "js": None, "bt": "000000000101",
     "b1": None},
]


def test_mysql_type_table(mariadb_server, mariadb_database):
    db = db_of(mariadb_database)
    execute(mariadb_server, db, ALL_TYPES)
    source = make_source(mariadb_server, db, [f"{db}.all_types"])
    source.open(None)
    try:
        execute(mariadb_server, db, *["INSERT INTO all_types VALUES " + r for r in ALL_ROWS], sql_mode="")
        afters = [e.after for e in collect(source, len(ALL_ROWS))]
    finally:
        source.close()
    for got, expected in zip(afters, ALL_EXPECTED):
        assert got == expected


def test_library_fallback_through_the_source(mariadb_server, mariadb_database):
    """A table with a type the fast decoder lacks (geometry) is decoded by the library."""
    db = db_of(mariadb_database)
    execute(mariadb_server, db, "CREATE TABLE shapes (id int PRIMARY KEY, g geometry, label varchar(10))")
    source = make_source(mariadb_server, db, [f"{db}.shapes"])
    source.open(None)
    try:
        execute(mariadb_server, db, "INSERT INTO shapes VALUES (1, ST_GeomFromText('POINT(1 2)'), 'p'), (2, NULL, 'q')",
                "UPDATE shapes SET label = 'r' WHERE id = 2")
        events = collect(source, 3)
    finally:
        source.close()
    assert [e.id.rsplit(":", 1)[1] for e in events] == ["0", "1", "0"]
    assert events[0].after["label"] == "p" and events[0].after["g"] == {"wkb": "AQEAAAAAAAAAAADwPwAAAAAAAABA", "srid": 0}
    assert events[1].key == {"id": 2} and events[1].source["row"] == 1
    assert events[2].before == {"id": 2, "g": None, "label": "q"} and events[2].after["label"] == "r"


def test_an_idle_stream_hears_the_heartbeats_and_stays_connected(mariadb_server, mariadb_database):
    """The server sends a heartbeat every ``heartbeat_interval`` while the binlog is idle:
    each one is the server heard, so an idle stream is not taken for a lost connection
    (the watchdog fires after 3 intervals, at least 5 s, of silence)."""
    db = db_of(mariadb_database)
    execute(mariadb_server, db, "CREATE TABLE t (id int PRIMARY KEY)")
    source = make_source(mariadb_server, db, [f"{db}.t"], heartbeat_interval=1.0, snapshot="never")
    source.open(None)
    try:
        until = time.monotonic() + 8  # beyond the 5 s of silence the watchdog allows
        while time.monotonic() < until:
            # raises SourceConnectionError when the heartbeats go unheard
            assert all(isinstance(item, Commit) for item in source.poll(0.5))
    finally:
        source.close()


CHARSETS = ("latin1", "utf16", "utf16le", "ucs2", "utf32", "cp1250", "utf8mb4")


@pytest.mark.parametrize("path", ["c", "python"])
def test_text_in_every_character_set_reads_as_the_server_reads_it(mariadb_server, mariadb_database, monkeypatch,
                                                                    path):
    """Found by review: utf16 columns came out as other characters (read little-endian), utf32
    stopped the source, ucs2/utf16le came out as base64, and latin1's bytes 0x81, 0x8D, 0x8F,
    0x90, 0x9D (which MySQL's latin1 maps to U+0081...) stopped the source; with both decoders."""
    from cdc.sources.mysql import decoder as decoder_module

    monkeypatch.setattr(decoder_module, "SPEEDUPS", path == "c")
    db = db_of(mariadb_database)
    columns = ", ".join(f"c_{cs} varchar(20) CHARACTER SET {cs}" for cs in CHARSETS)
    execute(mariadb_server, db, f"CREATE TABLE texts (id int PRIMARY KEY, {columns})")
    source = make_source(mariadb_server, db, [f"{db}.texts"])
    source.open(None)
    values = ["héllo €", "Łódź ščř", "plain", ""]
    try:
        for i, text in enumerate(values):
            literal = "'" + text + "'"
            row = ", ".join(f"CONVERT({literal} USING {cs})" if cs != "cp1250" or i != 1 else literal
                            for cs in CHARSETS)
            execute(mariadb_server, db, f"INSERT INTO texts VALUES ({i}, {row})", sql_mode="")  # '?' where lossy
        # latin1's five bytes that cp1252 leaves undefined, and a few others, as raw bytes
        execute(mariadb_server, db, "INSERT INTO texts (id, c_latin1) VALUES (9, _latin1 x'80818D8F909DE9')",
                "UPDATE texts SET c_utf16 = 'x😀y', c_utf32 = '😀', c_utf8mb4 = '😀' WHERE id = 9")
        events = collect(source, len(values) + 2)
    finally:
        source.close()
    with mariadb_server.connect(db) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, " + ", ".join(f"CONVERT(c_{cs} USING utf8mb4)" for cs in CHARSETS)
                    + " FROM texts ORDER BY id")
        truth = {row[0]: dict(zip((f"c_{cs}" for cs in CHARSETS), row[1:])) for row in cur.fetchall()}
    latest = {}
    for e in events:
        latest[e.after["id"]] = {k: v for k, v in e.after.items() if k != "id"}
    assert latest == truth
    assert truth[9]["c_latin1"] == "€\x81\x8d\x8f\x90\x9dé" and truth[9]["c_utf16"] == "x😀y"
