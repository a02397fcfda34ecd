"""MySQL/MariaDB: a captured table that vanishes while cdc streams (DROP TABLE, DROP DATABASE,
CREATE OR REPLACE TABLE).  A drop sends no row events, so its rows would stay downstream with
nothing said: cdc delivers every change before it, then stops with what is at risk and the
fix, as for a rename.  Against a real MariaDB 10.11; see docs/guarantees.md."""

from __future__ import annotations

import threading
import time

import pytest
from test_mysql_guarantees import Run, _config

from cdc.errors import SourceError, SourceSetupError
from cdc.event import ChangeEvent
from cdc.sources.mysql import settings as mysql_settings

from mysql_helpers import db_of, execute, make_source
from pgutil import read_jsonl, wait_for_lines


@pytest.fixture
def shop(mariadb_server, mariadb_database):
    return mariadb_server, db_of(mariadb_database)


def _until_error(source, timeout: float = 8.0, enough: int | None = None) -> tuple[list[ChangeEvent], SourceError | None]:
    """Poll until the source raises (or ``timeout``, or a second after ``enough`` events): the
    change events before, and the error."""
    got: list[ChangeEvent] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got += [i for i in source.poll(0.2) if isinstance(i, ChangeEvent)]
        except SourceError as exc:
            return got, exc
        if enough is not None and len(got) >= enough:
            deadline, enough = min(deadline, time.monotonic() + 1.0), None
    return got, None


# Each drops (or replaces) captured table `t`; `{db}` is the test's database.
DROPS = {
    "drop": "DROP TABLE t",
    "drop if exists, several, qualified": "DROP TABLE IF EXISTS `other`, `{db}`.`t`, nope",
    "drop with comments": "/* cleanup */ DROP TABLE /* old */ {db}.t",
    "drop and create again": "DROP TABLE t; CREATE TABLE t (id int PRIMARY KEY)",
    "create or replace": "CREATE OR REPLACE TABLE t (id int PRIMARY KEY, note text)",
    "create or replace select": "CREATE OR REPLACE TABLE t (id int PRIMARY KEY) SELECT 7 AS id",
    "drop database": "DROP DATABASE `{db}`",
}


@pytest.mark.parametrize("drop", list(DROPS.values()), ids=list(DROPS))
def test_captured_table_dropped_while_running_stops_after_the_drop(shop, drop):
    server, db = shop
    execute(server, db, "CREATE TABLE t (id int PRIMARY KEY)", "CREATE TABLE other (id int PRIMARY KEY)")
    source = make_source(server, db, [f"{db}.t", f"{db}.other"])
    source.open(None)
    try:
        execute(server, db, "INSERT INTO t VALUES (1)", "INSERT INTO other VALUES (1)")
        execute(server, db, *drop.format(db=db).split("; "))
        if "DATABASE" not in drop:
            execute(server, db, "CREATE TABLE IF NOT EXISTS other (id int PRIMARY KEY)",
                    "CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY)", "INSERT INTO other VALUES (2)",
                    "INSERT INTO t (id) VALUES (2)")
        got, error = _until_error(source)
    finally:
        source.close()
    before = [(e.table, e.after["id"]) for e in got if e.op == "c"]
    assert before[:2] == [(f"{db}.t", 1), (f"{db}.other", 1)], before
    if "SELECT" in drop:  # the replacing table's rows come in the same transaction, then the stop
        assert before[2:] == [(f"{db}.t", 7)], before
    else:
        assert before[2:] == [], f"read past the drop: {before}"
    assert isinstance(error, SourceSetupError), f"no stop after {drop!r}: {error!r}"
    message = str(error)
    assert f"{db}.t " in message and "GTID 0-1-" in message, message
    assert "stay" in message and "tables:" in message and "cdc snapshot" in message, message


@pytest.mark.parametrize("drop", ["DROP TABLE scratch", "DROP TABLE IF EXISTS scratch, nope",
                                  "CREATE OR REPLACE TABLE scratch (id int)", "DROP TABLE t_old",
                                  "CREATE TEMPORARY TABLE t (id int); DROP TABLE t",
                                  "CREATE TEMPORARY TABLE t (id int); DROP TEMPORARY TABLE t",
                                  "CREATE OR REPLACE TEMPORARY TABLE t (id int); DROP TEMPORARY TABLE t",
                                  "DROP DATABASE IF EXISTS {db}_elsewhere", "DROP TABLE IF EXISTS `{db}_x`.t"])
def test_drop_of_another_table_does_not_stop(shop, drop):
    server, db = shop
    execute(server, db, "CREATE TABLE t (id int PRIMARY KEY)", "CREATE TABLE scratch (id int)",
            "CREATE TABLE t_old (id int)")
    source = make_source(server, db, [f"{db}.t"])
    source.open(None)
    try:
        execute(server, db, "INSERT INTO t VALUES (1)", *drop.format(db=db).split("; "), "INSERT INTO t VALUES (2)")
        got, error = _until_error(source, timeout=10, enough=2)
    finally:
        source.close()
    assert error is None, error
    assert [e.after["id"] for e in got] == [1, 2]


def test_table_dropped_and_created_again_while_running_then_started_again(shop, tmp_path, monkeypatch):
    """Through cdc run: the stop comes after the drop, nothing of the new table is read; started
    again (the table is in tables: and exists), cdc goes on after the drop with the new table."""
    server, db = shop
    execute(server, db, "CREATE TABLE t (id int PRIMARY KEY)")
    out = tmp_path / "out/all.jsonl"
    cfg = _config(tmp_path, server, db, [f"{db}.t"], {"type": "file", "path": "out/all.jsonl"})
    # cdc asks the server whether t exists when it reads the DROP: that answer must come after
    # the CREATE below (the reader may read the DROP before the CREATE is run).
    created_again = threading.Event()
    real_check = mysql_settings.missing_tables

    def check_after_the_create(conn, tables):
        assert created_again.wait(20), "the test did not create t again"
        return real_check(conn, tables)

    run = Run(cfg)
    with run:
        execute(server, db, "INSERT INTO t VALUES (1), (2)")
        wait_for_lines(out, 2)
        monkeypatch.setattr(mysql_settings, "missing_tables", check_after_the_create)
        execute(server, db, "DROP TABLE t", "CREATE TABLE t (id int PRIMARY KEY)", "INSERT INTO t VALUES (3)")
        created_again.set()
        run.thread.join(30)
        assert not run.thread.is_alive(), "cdc did not stop after the drop"
    error = str(run.raised or run.runner.error)
    assert f"table {db}.t was dropped" in error and "exists again" in error, error
    assert [e["after"]["id"] for e in read_jsonl(out)] == [1, 2]
    with Run(cfg):
        execute(server, db, "INSERT INTO t VALUES (4)")
        events = wait_for_lines(out, 4, timeout=20)
    assert [e["after"]["id"] for e in events] == [1, 2, 3, 4]
