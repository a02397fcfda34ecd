"""A PostgreSQL UPDATE that leaves a TOASTed value unchanged does not send it (the event's
``after`` holds ``UNAVAILABLE``).  The mirrors leave such a column as it is in the target,
which is right when the target has the row, and silently wrong when it does not: an upsert
would insert the row with NULL (or the default) in that column.  Such an event updates the
row when it is there, and is a permanent error (``on_error`` decides) when it is not."""

from __future__ import annotations

import random
import string
import time

import orjson
import pytest
from test_sink_mirror_types import my_rows

from cdc.config import Context, parse_config
from cdc.errors import PermanentSinkError
from cdc.event import UNAVAILABLE, ChangeEvent
from cdc.sinks.mirror import MySQLMirrorSink, PostgresMirrorSink

from mysql_helpers import db_of, execute
from pgutil import Running, sql

SOURCE_DDL = "CREATE TABLE docs (id int PRIMARY KEY, body text, other text)"
TARGET_DDL = {"postgres": "CREATE TABLE docs (id int PRIMARY KEY, body text, other text)",
              "mysql": "CREATE TABLE docs (id int PRIMARY KEY, body mediumtext, other text)"}


def big(seed: int) -> str:
    """20 kB of random letters: stored out of line (TOASTed), even compressed."""
    rnd = random.Random(seed)
    return "".join(rnd.choices(string.ascii_letters, k=20_000))


class Target:
    def __init__(self, kind: str, dsn: str, mariadb_server=None) -> None:
        self.kind, self.dsn, self.server = kind, dsn, mariadb_server

    def run(self, *statements: str) -> None:
        if self.kind == "postgres":
            sql(self.dsn, *statements)
        else:
            execute(self.server, db_of(self.dsn), *statements)

    def rows(self) -> list[tuple]:
        """(id, length of body or None, other)"""
        query = "SELECT id, length(body), other FROM docs ORDER BY id"
        rows = sql(self.dsn, query) if self.kind == "postgres" else my_rows(self.dsn, query)
        return [tuple(r) for r in rows]


@pytest.fixture(params=["postgres", "mysql"])
def target(request, pg_server, pg_database, mariadb_server, mariadb_database):
    if request.param == "postgres":
        t = Target("postgres", pg_server.create_database(f"mirror_{pg_database.rsplit('/', 1)[1]}"))
    else:
        t = Target("mysql", mariadb_database, mariadb_server)
    t.run(TARGET_DDL[t.kind])
    return t


def _cfg(tmp_path, source_dsn: str, target: Target, **sink_options):
    raw = {"sources": {"db": {"type": "postgres", "dsn": source_dsn, "tables": ["public.docs"], "snapshot": "never",
                              "checkpoint": {"type": "file", "path": "state/db.json"}, "checkpoint_interval": 0.0}},
           "pipelines": {"mirror": {"source": "db", "sinks": [{"type": target.kind, "name": "copy",
                                                                "dsn": target.dsn, **sink_options}]}}}
    return parse_config(raw, tmp_path / "pipelines.yaml", {})


def _source(pg_database: str, ids) -> None:
    """``docs`` with rows written before cdc starts (``snapshot: never``: the target lacks them)."""
    sql(pg_database, SOURCE_DDL)
    for i in ids:
        sql(pg_database, "INSERT INTO docs VALUES (%s, %s, 'old')", params=(i, big(i)))


def _wait(predicate, runner, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: {runner.workers[0].last_error}"
        time.sleep(0.1)


def test_an_unchanged_toast_value_of_a_row_the_target_lacks_stops_cdc_and_stores_no_null(
        target, pg_database, tmp_path):
    _source(pg_database, [1])
    with Running(_cfg(tmp_path, pg_database, target)) as r:
        sql(pg_database, "UPDATE docs SET other = 'new' WHERE id = 1")
        deadline = time.monotonic() + 30
        while r.thread.is_alive() and not target.rows():
            assert time.monotonic() < deadline, "cdc did not stop"
            time.sleep(0.05)
    assert target.rows() == [], "a row with the TOAST column NULL was inserted"
    assert not r.thread.is_alive()
    message = str(r.runner.error)
    assert "\n" not in message, message
    for part in ("docs", "'id': 1", "body", "REPLICA IDENTITY FULL", "cdc snapshot", "--table public.docs"):
        assert part in message, (part, message)
    # stopped before it: started again, the event comes again (and stops again)
    with Running(_cfg(tmp_path, pg_database, target)) as r:
        deadline = time.monotonic() + 30
        while r.thread.is_alive():
            assert time.monotonic() < deadline, "cdc did not stop again"
            time.sleep(0.05)
    assert "body" in str(r.runner.error)
    assert target.rows() == []


def test_with_dead_letter_the_event_is_parked_and_cdc_goes_on(target, pg_database, tmp_path):
    _source(pg_database, [1, 2])
    target.run(f"INSERT INTO docs VALUES (2, '{big(2)}', 'old')")  # this one the target has
    cfg = _cfg(tmp_path, pg_database, target, on_error="dead_letter",
               dead_letter={"type": "file", "path": "dlq.jsonl"})
    with Running(cfg) as r:
        sql(pg_database, "UPDATE docs SET other = 'new' WHERE id IN (1, 2)")
        sql(pg_database, "INSERT INTO docs VALUES (3, 'small', 'x')")
        _wait(lambda: target.rows() == [(2, 20_000, "new"), (3, 5, "x")], r.runner, "the rows after it")
        assert r.thread.is_alive() and r.runner.error is None
        assert r.runner.workers[0].counts["dead_lettered"] == 1
    [record] = [orjson.loads(line) for line in (tmp_path / "dlq.jsonl").read_bytes().splitlines()]
    assert record["op"] == "u" and record["after"]["id"] == 1
    info = record["message"]["dead_letter"]
    assert info["error"]["type"] == "PermanentSinkError" and "REPLICA IDENTITY FULL" in info["error"]["message"]
    assert big(2) == (sql(target.dsn, "SELECT body FROM docs WHERE id = 2")[0][0] if target.kind == "postgres"
                      else my_rows(target.dsn, "SELECT body FROM docs WHERE id = 2")[0][0])


def test_an_update_of_a_row_the_target_has_keeps_the_big_value(target, pg_database, tmp_path):
    _source(pg_database, [1, 2])
    target.run(f"INSERT INTO docs VALUES (1, '{big(1)}', 'old')", f"INSERT INTO docs VALUES (2, '{big(2)}', 'old')")
    with Running(_cfg(tmp_path, pg_database, target)) as r:
        sql(pg_database, "UPDATE docs SET other = 'new' WHERE id = 1",
            "UPDATE docs SET other = 'old' WHERE id = 2")  # the same value: MariaDB reports no row changed
        # an insert then an update of the same key, in one transaction: the row exists by then
        sql(pg_database, f"BEGIN; INSERT INTO docs VALUES (5, '{big(5)}', 'a');"
                         f" UPDATE docs SET other = 'b' WHERE id = 5; COMMIT")
        _wait(lambda: target.rows() == [(1, 20_000, "new"), (2, 20_000, "old"), (5, 20_000, "b")],
              r.runner, "the updates")
        assert r.runner.error is None
    bodies = (sql(target.dsn, "SELECT body FROM docs ORDER BY id") if target.kind == "postgres"
              else my_rows(target.dsn, "SELECT body FROM docs ORDER BY id"))
    assert [b for (b,) in bodies] == [big(1), big(2), big(5)]


# ---- the sink alone: batches of every shape ------------------------------------------------

SRC = {"name": "db", "schema": "public", "table": "docs"}


def ev(n: int, op: str, after: dict, before: dict | None = None) -> ChangeEvent:
    return ChangeEvent(f"0/1A{n:04X}:0", op, before, after, {"id": (before or after)["id"]}, SRC, 1, "public.docs")


def toast(n: int, i: int, other: str) -> ChangeEvent:
    return ev(n, "u", {"id": i, "body": UNAVAILABLE, "other": other})


def _sink(target: Target):
    cls = PostgresMirrorSink if target.kind == "postgres" else MySQLMirrorSink
    sink = cls(target.dsn, context=Context(None, name="copy"))
    sink.open()
    return sink


@pytest.mark.parametrize("how", ["write", "send"])
def test_insert_then_toast_update_in_one_batch_and_runs_of_them(target, how):
    sink = _sink(target)

    def apply(events):
        if how == "write" or target.kind == "mysql":
            sink.write(events)
        else:
            assert sink.wait(sink.send(events), 30)

    try:
        # an insert and its TOAST update in one batch; a run of 10 TOAST updates of rows inserted just before
        apply([ev(1, "c", {"id": 1, "body": big(1), "other": "a"}), toast(2, 1, "b")])
        apply([ev(10 + i, "c", {"id": i, "body": big(i), "other": "a"}) for i in range(10, 20)]
              + [toast(30 + i, i, f"b{i}") for i in range(10, 20)] + [toast(50, 10, "c")])
        # a batch of only TOAST updates, 12 of them (the PostgreSQL run path), two of one key
        apply([toast(60 + i, i, f"d{i}") for i in range(10, 20)] + [toast(80, 1, "d"), toast(81, 1, "e")])
        assert target.rows() == [(1, 20_000, "e")] + [(i, 20_000, f"d{i}") for i in range(10, 20)]
        # a key change with the big value unchanged moves the row with it
        apply([ev(90, "u", {"id": 2, "body": UNAVAILABLE, "other": "moved"}, before={"id": 1})])
        assert target.rows()[0] == (2, 20_000, "moved")
        # a run with one row the target lacks: nothing of the batch is applied
        bad = [toast(100 + i, i, "x") for i in range(10, 20)] + [toast(120, 7, "x")]
        with pytest.raises(PermanentSinkError) as caught:
            apply(bad)
        message = str(caught.value)
        assert "'id': 7" in message and "body" in message and "REPLICA IDENTITY FULL" in message, message
        sink = _sink(target)
        assert target.rows() == [(2, 20_000, "moved")] + [(i, 20_000, f"d{i}") for i in range(10, 20)]
        assert sink.skipped == []
        apply(bad[:-1])  # the others alone apply
        assert target.rows() == [(2, 20_000, "moved")] + [(i, 20_000, "x") for i in range(10, 20)]
        # a delete then a TOAST update of the deleted key: an error, not a row with NULL
        with pytest.raises(PermanentSinkError):
            apply([ev(130, "d", None, before={"id": 2}), toast(131, 2, "y")])
        sink = _sink(target)
        assert target.rows()[0] == (2, 20_000, "moved")
    finally:
        sink.close()
