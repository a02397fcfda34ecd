"""Database mirror sinks against real PostgreSQL and MariaDB targets, plus one run
through the engine from a PostgreSQL source."""

from __future__ import annotations

import subprocess
import sys
import time

import psycopg
import pymysql
import pytest

from cdc.config import Context
from cdc.errors import PermanentSinkError
from cdc.event import UNAVAILABLE, ChangeEvent
from cdc.sinks.mirror import MySQLMirrorSink, PostgresMirrorSink, TableMapping, _last_ids, order_key, stream_of

SRC = {"name": "shop", "schema": "public", "table": "orders"}


def ev(n: int, op: str, before=None, after=None, table="orders") -> ChangeEvent:
    row = after or before
    key = {"id": row["id"]} if row else None
    return ChangeEvent(f"0/1A{n:04X}:0", op, before, after, key, {**SRC, "table": table}, 1, f"public.{table}")


BATCH = [
    ev(1, "c", after={"id": 1, "status": "new", "total": "10.50"}),
    ev(2, "c", after={"id": 2, "status": "new", "total": "3.00"}),
    ev(3, "u", before={"id": 1}, after={"id": 1, "status": "paid", "total": "10.50"}),
    ev(4, "d", before={"id": 2}),
    ev(5, "c", after={"id": 3, "status": "it's \"quoted\"; DROP TABLE x", "total": "1"}),
]


def test_order_key_follows_the_stream():
    assert order_key("0/1A2B:9") < order_key("0/1A2B:10") < order_key("1/0:0")
    assert order_key("mysql-bin.000002:120:3") < order_key("mysql-bin.000010:4:0")


def test_mariadb_snapshot_ids_keep_their_order_when_stored():
    """A MariaDB snapshot row's id is ``<GTID state>:s<row>``; with two domains the state has a
    comma, as does the stored position (one id per stream): a stored snapshot id read back must
    still be the same id, or later snapshot rows compare as older and are skipped."""
    ids = ["0-1-402,9-1-3:s5", "0-1-402,9-1-3:s2005", "0-1-403,9-1-3:s0", "0-2-404,9-1-4:s1"]
    assert [stream_of(i)[0] for i in ids] == ["snapshot"] * 4
    assert sorted(ids, key=order_key) == ids
    assert order_key("0-1-9:s10") < order_key("0-1-10:s2")  # seqs compare as numbers
    stored = ",".join(["0-1-405:2", "0-1-402,9-1-3:s2005", "9-1-4:0"])
    assert _last_ids(stored) == {"domain 0": (order_key("0-1-405:2"), "0-1-405:2"),
                                 "snapshot": (order_key("0-1-402,9-1-3:s2005"), "0-1-402,9-1-3:s2005"),
                                 "domain 9": (order_key("9-1-4:0"), "9-1-4:0")}


# ---- PostgreSQL target -------------------------------------------------------------

def pg_rows(dsn: str, sql: str) -> list:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchall()


@pytest.fixture
def pg_target(pg_database):
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute('CREATE SCHEMA mirror; CREATE TABLE mirror."Orders" '
                     '(id int PRIMARY KEY, state text, total numeric(10,2), extra jsonb)')
    return pg_database


def pg_sink(dsn: str, name: str = "mirror") -> PostgresMirrorSink:
    sink = PostgresMirrorSink(dsn, tables={"public.orders": TableMapping(table='mirror.Orders',
                                                                         columns={"status": "state"})},
                              context=Context(None, name=name))
    sink.open()
    return sink


def test_postgres_applies_upserts_deletes_and_keeps_its_position(pg_target):
    sink = pg_sink(pg_target)
    sink.write(BATCH)
    expected = [(1, "paid", "10.50"), (3, "it's \"quoted\"; DROP TABLE x", "1.00")]
    assert pg_rows(pg_target, 'SELECT id, state, total::text FROM mirror."Orders" ORDER BY id') == expected
    assert pg_rows(pg_target, "SELECT sink, source_table, event_id FROM cdc_mirror_position") == \
        [("mirror", "public.orders", "0/1A0005:0")]
    # redelivery: the same batch again (e.g. after a restart from an older checkpoint) changes
    # nothing: re-applying it would undo this edit made in the target
    with psycopg.connect(pg_target, autocommit=True) as conn:
        conn.execute('UPDATE mirror."Orders" SET state = \'tampered\' WHERE id = 3')
    expected[1] = (3, "tampered", "1.00")
    sink.write(BATCH)
    sink.close()
    sink = pg_sink(pg_target)
    sink.write(BATCH[2:])
    assert pg_rows(pg_target, 'SELECT id, state, total::text FROM mirror."Orders" ORDER BY id') == expected
    # a new event after a redelivered prefix is applied
    sink.write(BATCH[3:] + [ev(6, "u", before={"id": 3}, after={"id": 3, "status": "x", "total": UNAVAILABLE,
                                                                "extra": {"a": [1, 2]}})])
    assert pg_rows(pg_target, 'SELECT id, state, total::text, extra FROM mirror."Orders" WHERE id = 3') == \
        [(3, "x", "1.00", {"a": [1, 2]})]
    sink.write([ev(7, "t", table="orders")])
    assert pg_rows(pg_target, 'SELECT count(*) FROM mirror."Orders"') == [(0,)]
    sink.close()


def test_postgres_failed_batch_applies_nothing(pg_target):
    sink = pg_sink(pg_target)
    bad = ev(2, "c", after={"id": 2, "status": "x", "total": "not a number"})
    with pytest.raises(PermanentSinkError):
        sink.write([BATCH[0], bad])
    assert pg_rows(pg_target, 'SELECT count(*) FROM mirror."Orders"') == [(0,)]
    assert pg_rows(pg_target, "SELECT count(*) FROM cdc_mirror_position") == [(0,)]
    sink.write([BATCH[0]])  # reconnects and goes on
    assert pg_rows(pg_target, 'SELECT id FROM mirror."Orders"') == [(1,)]
    sink.close()


def test_postgres_key_change_moves_the_row(pg_target):
    sink = pg_sink(pg_target)
    sink.write([BATCH[0], ev(2, "u", before={"id": 1}, after={"id": 9, "status": "moved", "total": "1"})])
    assert pg_rows(pg_target, 'SELECT id, state FROM mirror."Orders"') == [(9, "moved")]
    sink.close()


# ---- MariaDB target ----------------------------------------------------------------

@pytest.fixture
def my_target(mariadb_server, mariadb_database):
    db = mariadb_database.rsplit("/", 1)[1]
    conn = mariadb_server.connect(db)
    with conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE `order``s` (id int PRIMARY KEY, state text, total decimal(10,2))")
    return mariadb_database


def my_rows(dsn: str, sql: str) -> list:
    from urllib.parse import urlsplit
    u = urlsplit(dsn)
    conn = pymysql.connect(host=u.hostname, port=u.port, user=u.username, password=u.password,
                           database=u.path.lstrip("/"))
    with conn, conn.cursor() as cur:
        cur.execute(sql)
        return [tuple(r) for r in cur.fetchall()]


def test_mariadb_applies_batch_once(my_target):
    def sink() -> MySQLMirrorSink:
        s = MySQLMirrorSink(my_target, tables={"public.orders": TableMapping(table="order`s",
                                                                             columns={"status": "state"})},
                            context=Context(None, name="mirror"))
        s.open()
        return s
    s = sink()
    s.write(BATCH)
    expected = [(1, "paid", "10.50"), (3, "it's \"quoted\"; DROP TABLE x", "1.00")]
    got = lambda: my_rows(my_target, "SELECT id, state, CAST(total AS CHAR) FROM `order``s` ORDER BY id")  # noqa
    assert got() == expected
    with pymysql.connect(host="127.0.0.1", port=int(my_target.split(":")[-1].split("/")[0]), user="root",
                         password="root", database=my_target.rsplit("/", 1)[1], autocommit=True) as conn:
        conn.cursor().execute("UPDATE `order``s` SET state = 'tampered' WHERE id = 3")
    expected[1] = (3, "tampered", "1.00")
    s.write(BATCH)  # redelivered: applied once, so the edit stays
    s.close()
    s = sink()
    s.write(BATCH[1:])
    assert got() == expected
    assert my_rows(my_target, "SELECT source_table, event_id FROM cdc_mirror_position") == \
        [("public.orders", "0/1A0005:0")]
    s.write([ev(6, "t")])
    assert got() == []
    s.close()


def test_mariadb_names_with_a_percent_sign(mariadb_server, mariadb_database):
    """A table, a column, a position table and a sink whose names hold '%' (``discount_%``):
    PyMySQL reads '%' in a statement with parameters as a placeholder ("not enough arguments
    for format string"), so every write failed."""
    db = mariadb_database.rsplit("/", 1)[1]
    with mariadb_server.connect(db) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE `t%` (id int PRIMARY KEY, `discount_%` int)")
    sink = MySQLMirrorSink(mariadb_database, tables={"public.orders": TableMapping(table="t%")},
                           position_table="pos%", context=Context(None, name="m%"))
    sink.open()
    sink.write([ev(1, "c", after={"id": 1, "discount_%": 5}), ev(2, "c", after={"id": 2, "discount_%": 6})])
    sink.write([ev(3, "u", before={"id": 1}, after={"id": 1, "discount_%": 7}), ev(4, "d", before={"id": 2})])
    assert my_rows(mariadb_database, "SELECT id, `discount_%` FROM `t%` ORDER BY id") == [(1, 7)]
    assert my_rows(mariadb_database, "SELECT sink, event_id FROM `pos%`") == [("m%", "0/1A0004:0")]
    sink.write([ev(5, "t")])
    assert my_rows(mariadb_database, "SELECT count(*) FROM `t%`") == [(0,)]
    sink.close()


# ---- through the engine: PostgreSQL source -> PostgreSQL mirror, kill -9 and restart ---------

def test_engine_mirror_kill9_restart_neither_loses_nor_reapplies(pg_database, pg_server, tmp_path):
    target = pg_server.create_database(f"mirror_{pg_database.rsplit('/', 1)[1]}")
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, status text)")
    slot = "cdc_" + pg_database.rsplit("/", 1)[1]
    config = tmp_path / "p.yaml"
    config.write_text(f"""
sources:
  shop:
    type: postgres
    dsn: {pg_database}
    slot: {slot}
    publication: {slot}
    tables: [orders]
    checkpoint: {{type: file, path: state.json}}
    checkpoint_interval: 1000000000   # saved only at a clean stop: a kill -9 makes a restart redeliver
    snapshot: never   # what is tested is the stream's redelivery (a copy redone after the kill would
                      # rightly overwrite the target's edits with the source's rows)
pipelines:
  copy:
    source: shop
    sinks: [{{type: postgres, name: copy, dsn: "{target}", batch_size: 2}}]
""")
    mirrored = lambda: pg_rows(target, "SELECT id, status FROM orders ORDER BY id")  # noqa: E731

    def source(sql: str) -> None:
        with psycopg.connect(pg_database, autocommit=True) as conn:
            conn.execute(sql)

    def wait_for(predicate, proc) -> None:
        deadline = time.monotonic() + 60
        while not predicate():
            assert time.monotonic() < deadline and proc.poll() is None, proc.poll()
            time.sleep(0.1)

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "cdc", "run", str(config)], cwd=tmp_path,
                                stderr=open(tmp_path / "cdc.log", "ab"))

    source("CREATE TABLE orders (id int PRIMARY KEY, status text); CREATE PUBLICATION " + slot + " FOR TABLE orders")
    source(f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")
    proc = start()
    try:
        source("INSERT INTO orders VALUES (1, 'new')")
        wait_for(lambda: mirrored() == [(1, "new")], proc)
    finally:
        proc.terminate()   # a clean stop saves the checkpoint
        assert proc.wait(60) == 0
    assert (tmp_path / "state.json").exists()
    proc = start()
    try:
        source("INSERT INTO orders SELECT g, 'new' FROM generate_series(2, 5) g")
        source("DELETE FROM orders WHERE id = 2")
        source("UPDATE orders SET status = 'paid' WHERE id = 3")
        wait_for(lambda: mirrored() == [(1, "new"), (3, "paid"), (4, "new"), (5, "new")], proc)
    finally:
        proc.kill()   # kill -9: the checkpoint is behind what the mirror applied
        proc.wait()
    # re-applying the redelivered events would bring id 2 back and undo these edits
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("UPDATE orders SET status = 'tampered' WHERE id IN (3, 4)")
    source("INSERT INTO orders VALUES (6, 'new')")
    proc = start()
    try:
        wait_for(lambda: (6, "new") in mirrored(), proc)
    finally:
        proc.terminate()
        proc.wait(60)
    assert mirrored() == [(1, "new"), (3, "tampered"), (4, "tampered"), (5, "new"), (6, "new")]
    source(f"SELECT pg_drop_replication_slot('{slot}')")


# ---- dead-letter replay to a mirror: superseded events are kept, the latest is applied -------

def test_mariadb_replay_keeps_superseded_and_applies_latest(my_target, tmp_path):
    from click.testing import CliRunner

    from cdc.cli import main
    from cdc.config import load_config
    from cdc.deadletter import store_for
    from cdc.engine.deadletters import DeadLetterWriter
    config = tmp_path / "p.yaml"
    config.write_text(f"""
sources:
  shop: {{type: postgres, dsn: "postgresql://x@127.0.0.1:1/x", tables: [orders], checkpoint: {{type: memory}}}}
pipelines:
  orders:
    source: shop
    sinks:
      - type: mysql
        name: copy
        dsn: "{my_target}"
        tables: {{public.orders: {{table: "order`s", columns: {{status: state}}}}}}
        on_error: dead_letter
        dead_letter: {{type: file, path: dlq.jsonl}}
""")
    spec = load_config(config).pipelines["orders"].sinks[0]
    sink = spec.build()
    sink.open()
    e0, e1, e2, e3 = (ev(n, "c", after={"id": n, "status": "new", "total": total})
                      for n, total in ((0, "1"), (1, "not a number"), (2, "2"), (3, "oops")))
    writer = DeadLetterWriter(spec.dead_letter.build(), "orders")
    sink.write([e0])
    for bad in (e1, e3):
        with pytest.raises(PermanentSinkError) as refused:  # strict mode refuses the decimal
            sink.write([bad])
        writer.park(bad, "copy", refused.value, 1, None)
        if bad is e1:
            sink.write([e2])
            assert sink.skipped == []
    writer.close()
    sink.write([e0, e1])  # both behind the stored position: reported, not applied
    assert sink.skipped == [e0.id, e1.id]
    sink.close()
    rows = lambda: my_rows(my_target, "SELECT id, state, CAST(total AS CHAR) FROM `order``s` ORDER BY id")  # noqa
    assert rows() == [(0, "new", "1.00"), (2, "new", "2.00")]

    store = store_for(spec.dead_letter)
    parked = {e.event.id: e.id for e in store.list()}
    u = my_target.rsplit("/", 1)
    with pymysql.connect(host="127.0.0.1", port=int(u[0].rsplit(":", 1)[1]), user="root", password="root",
                         database=u[1], autocommit=True) as conn:  # the operator fixes the column
        conn.cursor().execute("ALTER TABLE `order``s` MODIFY total text")
    cli = CliRunner()
    result = cli.invoke(main, ["dlq", "replay", str(config), "--id", parked[e1.id]])
    assert result.exit_code == 3, result.output + result.stderr
    assert f"{parked[e1.id]}: superseded" in result.stderr and "superseded 1" in result.output
    result = cli.invoke(main, ["dlq", "replay", str(config)])  # e1 superseded again, e3 applied
    assert result.exit_code == 3 and "replayed 1, superseded 1, failed 0" in result.output, result.stderr
    assert rows() == [(0, "new", "1.00"), (2, "new", "2.00"), (3, "new", "oops")]
    assert [e.event.id for e in store.list()] == [e1.id]


@pytest.mark.parametrize("kind", ["postgres", "mariadb"])
def test_table_sink_into_a_table_named_with_a_percent_sign(kind, request):
    """The ``table`` sink (a dead-letter queue's usual place) inserts with parameters: a '%' in
    its table's name was read as a placeholder by both drivers."""
    from cdc.deadletter.stores import TableDeadLetterStore
    from cdc.sinks.table import TableSink
    dsn = request.getfixturevalue("pg_database" if kind == "postgres" else "mariadb_database")
    sink = TableSink(dsn, table="dead_letters_%")
    sink.open()
    sink.write([ev(1, "c", after={"id": 1, "status": "new", "total": "1"}), ev(2, "d", before={"id": 1})])
    TableDeadLetterStore(sink).remove("0/1A0001:0")  # what a replay does with an entry replayed
    sink.close()
    query = "SELECT event_id FROM {} ORDER BY seq"
    if kind == "postgres":
        assert pg_rows(dsn, query.format('"dead_letters_%"')) == [("0/1A0002:0",)]
    else:
        assert my_rows(dsn, query.format("`dead_letters_%`")) == [("0/1A0002:0",)]


def test_the_dsn_connect_timeout_is_kept(pg_database):
    """cdc's 10 s default for a target's connection replaced a ``connect_timeout`` in the DSN."""
    sep = "&" if "?" in pg_database else "?"
    for dsn, expected in ((f"{pg_database}{sep}connect_timeout=3", "connect_timeout=3"),
                          (pg_database, "connect_timeout=10")):
        sink = PostgresMirrorSink(dsn, context=Context(None, name="m"))
        sink.open()
        try:
            assert expected in sink.target.conn.info.dsn, sink.target.conn.info.dsn
        finally:
            sink.close()


@pytest.mark.parametrize("kind", ["postgres", "mariadb"])
def test_a_column_added_to_the_target_while_the_sink_runs_gets_its_conversion(kind, request):
    """Found by review: the target's column types were read once per table, so a bytea / blob /
    json column the operator added to the target first (the safe order) got the events' values
    unconverted, silently: base64 text stored as its bytes, a JSON string stored as a number."""
    import base64
    dsn = request.getfixturevalue("pg_database" if kind == "postgres" else "mariadb_database")
    blob, doc = ("bytea", "jsonb") if kind == "postgres" else ("blob", "json")
    run = (lambda q: pg_rows(dsn, q)) if kind == "postgres" else (lambda q: my_rows(dsn, q))

    def ddl(statement: str) -> None:
        if kind == "postgres":
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(statement)
        else:
            db = dsn.rsplit("/", 1)[1]
            with request.getfixturevalue("mariadb_server").connect(db) as conn, conn.cursor() as cur:
                cur.execute(statement)
    ddl("CREATE TABLE orders (id int PRIMARY KEY, status text)")
    Sink = PostgresMirrorSink if kind == "postgres" else MySQLMirrorSink
    sink = Sink(dsn, context=Context(None, name="m"))
    sink.open()
    sink.write([ev(1, "c", after={"id": 1, "status": "new"})])
    ddl(f"ALTER TABLE orders ADD COLUMN data {blob}, ADD COLUMN doc {doc}")  # the target first
    raw = b"\x00\xff\x10"
    # found by the next review: a delete with every column (a full before image) built the plan
    # without looking at the columns, and the insert after it used that plan
    sink.write([ev(2, "d", before={"id": 40, "status": "gone", "data": None, "doc": None})])
    sink.write([ev(3, "c", after={"id": 2, "status": "new", "data": base64.b64encode(raw).decode(), "doc": "123"})])
    sink.write([ev(4 + i, "c", after={"id": 3 + i, "status": "new", "data": base64.b64encode(raw).decode(),
                                      "doc": "123"}) for i in range(10)])  # a run: one statement
    sink.close()
    rows = run("SELECT id, data, doc FROM orders WHERE id >= 2 ORDER BY id")
    assert len(rows) == 11 and all(bytes(r[1]) == raw for r in rows), rows
    assert all(r[2] == ("123" if kind == "postgres" else '"123"') for r in rows), rows  # a JSON string, not 123


def test_a_target_that_lacks_a_source_column_stops_cdc_saying_what_and_how(pg_server, pg_database, tmp_path, caplog):
    """Found by review: the halt said only 'cannot apply batch: UndefinedColumn: column "b" of
    relation "orders" does not exist': not the source table, not that nothing is lost, not the fix."""
    import logging

    from test_snapshot_mirror import _cfg

    from pgutil import Running, sql
    target = pg_server.create_database(f"mirror_{pg_database.rsplit('/', 1)[1]}")
    sql(target, "CREATE TABLE orders (id int PRIMARY KEY, status text)")
    sql(pg_database, "CREATE TABLE orders (id int PRIMARY KEY, status text)")
    cfg = _cfg(tmp_path, {"type": "postgres", "dsn": pg_database, "tables": ["public.orders"], "snapshot": "never"},
               target)
    with caplog.at_level(logging.ERROR, logger="cdc"), Running(cfg) as r:
        sql(pg_database, "INSERT INTO orders VALUES (1, 'new')")
        deadline = time.monotonic() + 30
        while pg_rows(target, "SELECT id FROM orders") != [(1,)]:  # its own batch, applied before the DDL
            assert time.monotonic() < deadline, "row 1 was not mirrored"
            time.sleep(0.05)
        sql(pg_database, "ALTER TABLE orders ADD COLUMN b int", "INSERT INTO orders VALUES (2, 'new', 7)")
        while r.thread.is_alive():
            assert time.monotonic() < deadline, "cdc did not stop"
            time.sleep(0.05)
    message = str(r.runner.error)
    assert "public.orders" in message and 'column "b"' in message, message
    assert "alter the target table" in message and "start cdc again" in message, message
    halted = [rec.getMessage() for rec in caplog.records if "halted" in rec.getMessage()]
    assert halted and "nothing is lost" in halted[0], halted
    assert pg_rows(target, "SELECT id FROM orders") == [(1,)]
