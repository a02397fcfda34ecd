"""The PostgreSQL source end to end: real server, real engine, file sink."""

import json
import random
import string

import pytest

from cdc.errors import SourceSetupError
from cdc.event import UNAVAILABLE
from cdc.sources.postgres import pgoutput

from pgutil import Running, file_pipeline, read_jsonl, sql, stream_config, wait_for_lines
from servers import PostgresServer


@pytest.fixture
def shop(pg_database):
    sql(pg_database,
        "CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, status varchar(20),"
        " amount numeric(12,2), note varchar(200), created_at timestamp)",
        "CREATE TABLE customers (id bigint PRIMARY KEY, name text)")
    return pg_database


def test_insert_update_delete_truncate(shop, tmp_path):
    cfg = stream_config(tmp_path, shop, ["public.orders", "public.customers"], {"all": file_pipeline()})
    out = tmp_path / "out/all.jsonl"
    with Running(cfg):
        sql(shop, "INSERT INTO orders VALUES (1, 10, 'new', 12.50, 'first', '2026-11-25 10:00:00'),"
                  " (2, 11, 'new', 99999.99, NULL, '2026-11-25 10:00:01')",
            "UPDATE orders SET status = 'paid' WHERE id = 1",
            "DELETE FROM orders WHERE id = 2",
            "INSERT INTO customers VALUES (5, 'Ann')",
            "TRUNCATE customers")
        events = wait_for_lines(out, 6)
    assert [(e["op"], e["source"]["table"]) for e in events] == [
        ("c", "orders"), ("c", "orders"), ("u", "orders"), ("d", "orders"), ("c", "customers"), ("t", "customers")]
    first = events[0]
    assert first["after"] == {"id": 1, "customer_id": 10, "status": "new", "amount": "12.50",
                              "note": "first", "created_at": "2026-11-25T10:00:00"}
    assert first["key"] == {"id": 1} and first["before"] is None
    assert first["source"]["connector"] == "postgresql" and first["source"]["schema"] == "public"
    assert isinstance(first["source"]["lsn"], int) and isinstance(first["source"]["txId"], int)
    assert events[1]["after"]["amount"] == "99999.99"
    assert events[2]["after"]["status"] == "paid" and events[2]["before"] is None
    assert events[3]["before"] == {"id": 2} and events[3]["after"] is None and events[3]["key"] == {"id": 2}
    assert events[5]["before"] is None and events[5]["after"] is None
    ids = [e["id"] for e in events]
    assert len(set(ids)) == 6
    assert events[0]["id"].endswith(":0") and events[1]["id"].endswith(":1")  # one transaction
    assert events[0]["id"].split(":")[0] == events[1]["id"].split(":")[0]
    state = json.loads((tmp_path / "state/db.json").read_text())
    assert "lsn" in state["position"]


@pytest.fixture(params=["c", "python"])
def decoder(request, monkeypatch):
    """The C decoder (``_cpgoutput.c``), and the generated Python one with ``CDC_PURE_PYTHON``."""
    monkeypatch.setattr(pgoutput, "SPEEDUPS", request.param == "c")
    return request.param


def test_unchanged_toast_is_never_null(shop, tmp_path, decoder):
    big = "".join(random.choices(string.ascii_letters, k=20000))  # incompressible: stored out of line
    sql(shop, "CREATE TABLE docs (id int PRIMARY KEY, title text, body text)",
        "CREATE TABLE docs_full (id int PRIMARY KEY, title text, body text)",
        "ALTER TABLE docs_full REPLICA IDENTITY FULL")
    cfg = stream_config(tmp_path, shop, ["public.docs", "public.docs_full"], {"all": file_pipeline()})
    with Running(cfg):
        for table in ("docs", "docs_full"):
            sql(shop, f"INSERT INTO {table} VALUES (1, 'a', %s)", params=(big,))
            sql(shop, f"UPDATE {table} SET title = 'b' WHERE id = 1")
        events = wait_for_lines(tmp_path / "out/all.jsonl", 4)
    default_update, full_update = events[1], events[3]
    assert default_update["after"] == {"id": 1, "title": "b", "body": UNAVAILABLE}
    assert full_update["after"] == {"id": 1, "title": "b", "body": big}  # from the old row
    assert full_update["before"]["title"] == "a"


TYPES = """
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE TABLE alltypes (
  id int PRIMARY KEY, i2 smallint, i8 bigint, num numeric(30,10), f4 real, f8 double precision,
  b boolean, t text, vc varchar(10), ch char(3), d date, tm time, ts timestamp(6), tstz timestamptz,
  iv interval, u uuid, j json, jb jsonb, by bytea, ai int[], at text[], m mood, nan double precision,
  n text)
"""

TYPE_ROW = """
INSERT INTO alltypes VALUES (1, -32768, 9223372036854775807, 12345678901234567890.0123456789, 1.5,
  0.1, true, 'héllo "q"', 'vc', 'ab', '2026-11-25', '17:16:27.123456', '2026-11-25 17:16:27.123456',
  '2026-11-25 19:16:27.5+02', '1 year 2 mons 3 days 04:05:06', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  '{"a": [1, 2.5, null]}', '{"b": {"c": true}}', '\\x00ff10', '{1,NULL,3}', '{"x y",z,"q\\"r"}',
  'happy', 'NaN', NULL)
"""

EXPECTED = {
    "id": 1, "i2": -32768, "i8": 9223372036854775807, "num": "12345678901234567890.0123456789",
    "f4": 1.5, "f8": 0.1, "b": True, "t": 'héllo "q"', "vc": "vc", "ch": "ab ", "d": "2026-11-25",
    "tm": "17:16:27.123456", "ts": "2026-11-25T17:16:27.123456", "tstz": "2026-11-25T17:16:27.500000Z",
    "iv": "P1Y2M3DT4H5M6S", "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "j": {"a": [1, 2.5, None]},
    "jb": {"b": {"c": True}}, "by": "AP8Q", "ai": [1, None, 3], "at": ["x y", "z", 'q"r'],
    "m": "happy", "nan": "NaN", "n": None,
}


def test_type_table(shop, tmp_path, decoder, caplog):
    sql(shop, TYPES)
    cfg = stream_config(tmp_path, shop, ["public.alltypes"], {"all": file_pipeline()})
    with caplog.at_level("INFO", logger="cdc"), Running(cfg):
        sql(shop, TYPE_ROW)
        [event] = wait_for_lines(tmp_path / "out/all.jsonl", 1)
    assert ("decoding in C" if decoder == "c" else "decoding in Python") in caplog.text
    after = event["after"]
    assert after.pop("tstz") in ("2026-11-25T17:16:27.5Z", EXPECTED["tstz"])
    expected = {k: v for k, v in EXPECTED.items() if k != "tstz"}
    assert after == expected


def test_column_added_mid_stream_and_two_pipelines(shop, tmp_path):
    pipelines = {
        "status": file_pipeline("out/status.jsonl", tables=["public.orders"],
                                transforms=[{"type": "filter", "where": {"op": ["c", "u"]}},
                                            {"type": "select", "fields": ["id", "status"]}]),
        "copy": file_pipeline("out/copy.jsonl"),
    }
    cfg = stream_config(tmp_path, shop, ["public.orders", "public.customers"], pipelines)
    with Running(cfg):
        sql(shop, "INSERT INTO orders (id, status) VALUES (1, 'new')",
            "ALTER TABLE orders ADD COLUMN priority int DEFAULT 0",
            "INSERT INTO orders (id, status, priority) VALUES (2, 'new', 5)",
            "INSERT INTO customers VALUES (1, 'Ann')",
            "DELETE FROM orders WHERE id = 1")
        copy = wait_for_lines(tmp_path / "out/copy.jsonl", 4)
        status = wait_for_lines(tmp_path / "out/status.jsonl", 2)
    assert "priority" not in copy[0]["after"] and copy[1]["after"]["priority"] == 5
    assert [e["after"] for e in status] == [{"id": 1, "status": "new"}, {"id": 2, "status": "new"}]
    assert [e["id"] for e in status] == [copy[0]["id"], copy[1]["id"]]  # same event, same id
    assert copy[1]["after"]["created_at"] is None and copy[2]["source"]["table"] == "customers"


def test_stop_and_resume_without_gap_or_duplicate(shop, tmp_path):
    cfg = stream_config(tmp_path, shop, ["public.orders"], {"all": file_pipeline()})
    out = tmp_path / "out/all.jsonl"
    with Running(cfg) as running:
        for i in range(10):
            sql(shop, f"INSERT INTO orders (id, status) VALUES ({i}, 'new')")
        wait_for_lines(out, 10)
    assert running.code == 0
    for i in range(10, 20):  # written while cdc is stopped
        sql(shop, f"INSERT INTO orders (id, status) VALUES ({i}, 'new')")
    with Running(cfg):
        sql(shop, "INSERT INTO orders (id, status) VALUES (20, 'new')")
        events = wait_for_lines(out, 21)
    assert [e["after"]["id"] for e in events] == list(range(21))


def test_transform_error_stops_and_names_the_event(shop, tmp_path):
    (tmp_path / "badplug.py").write_text(
        "def explode(e):\n    if e.after['id'] == 3:\n        raise ValueError('bad order')\n    return e\n")
    cfg = stream_config(tmp_path, shop, ["public.orders"],
                 {"all": file_pipeline(transforms=[{"type": "python", "function": "badplug:explode"}])})
    with Running(cfg) as running:
        for i in range(1, 6):
            sql(shop, f"INSERT INTO orders (id, status) VALUES ({i}, 'new')")
        running.thread.join(30)
    assert running.code == 1
    error = str(running.runner.error)
    assert "bad order" in error and "public.orders" in error and "transforms[0]:python" in error
    delivered = [e["after"]["id"] for e in read_jsonl(tmp_path / "out/all.jsonl")]
    assert 3 not in delivered
    # the checkpoint stays before the failing transaction: a restart fails on it again
    again = Running(cfg)
    again.thread.start()
    again.thread.join(30)
    assert again.code == 1 and "bad order" in str(again.runner.error)
    assert "0/" in str(again.runner.error).split("position")[-1]  # an LSN, as PostgreSQL writes it


def test_setup_errors_name_the_fix(tmp_path, pg_database):
    sql(pg_database, "CREATE TABLE nokey (a int)", "CREATE ROLE plain LOGIN")
    cfg = stream_config(tmp_path, pg_database, ["public.nokey"], {"all": file_pipeline()})
    source = cfg.sources["db"].build()
    with pytest.raises(SourceSetupError, match="REPLICA IDENTITY FULL"):
        source.open(None)
    plain = pg_database.replace("postgres@", "plain@")
    source = stream_config(tmp_path, plain, ["public.nokey"], {"all": file_pipeline()}).sources["db"].build()
    with pytest.raises(SourceSetupError, match='ALTER ROLE "plain" WITH REPLICATION'):
        source.open(None)


def test_wal_level_must_be_logical(tmp_path):
    with PostgresServer(settings={"wal_level": "replica"}) as server:
        dsn = server.create_database("shop")
        sql(dsn, "CREATE TABLE t (id int PRIMARY KEY)")
        source = stream_config(tmp_path, dsn, ["public.t"], {"all": file_pipeline()}).sources["db"].build()
        with pytest.raises(SourceSetupError, match="wal_level = logical"):
            source.open(None)
