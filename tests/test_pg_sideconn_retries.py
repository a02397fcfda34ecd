"""The snapshot controller's retries of a reader that fails in a way that may pass: how often
and how long they say, when they end, and the way back when a copy is dropped.  A real
PostgreSQL reader; the source around it is only what the controller asks of one."""

from __future__ import annotations

import logging
import socket
import time

from test_snapshot_postgres import wait_for

from cdc.snapshot import controller as snapshot_controller
from cdc.snapshot.controller import SnapshotController
from cdc.sources.postgres.snapshot import PostgresSnapshotReader

from pgutil import sql


def _reader(dsn: str) -> PostgresSnapshotReader:
    return PostgresSnapshotReader(dsn, "db", dsn.rsplit("/", 1)[1])


def _port(dsn: str) -> int:
    return int(dsn.rsplit(":", 1)[1].split("/", 1)[0])


class _Source:
    """What the controller asks of a source, around a real reader of a real server."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def snapshot_reader(self) -> PostgresSnapshotReader:
        return _reader(self.dsn)

    def snapshot_position(self) -> None:
        return None


def test_failed_retries_say_how_often_and_how_long_escalate_and_end_with_a_line(pg_database, monkeypatch, caplog):
    """Before: the same WARNING every 5 s for ever, with 'source db:' twice, and no line when
    the reader worked again."""
    monkeypatch.setattr(snapshot_controller, "ERROR_DELAY", 0.05)
    monkeypatch.setattr(snapshot_controller, "MAX_ERROR_DELAY", 0.2, raising=False)
    monkeypatch.setattr(snapshot_controller, "ESCALATE_AFTER", 0.5, raising=False)
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY)", "INSERT INTO t VALUES (1)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    source = _Source(pg_database.replace(f":{_port(pg_database)}/", f":{port}/"))  # nothing listens there
    controller = SnapshotController("db", source, "initial", ["public.t"], 100)
    controller.plan(None)
    caplog.set_level(logging.INFO, logger="cdc.snapshot")
    started = time.monotonic()
    while time.monotonic() - started < 1.5:
        controller.tick(True, False)
        time.sleep(0.02)
    lines = [rec for rec in caplog.records if "retrying" in rec.getMessage()]
    assert 3 <= len(lines) < 30, [r.getMessage() for r in lines]  # ever later, not every tick
    assert all(r.getMessage().count("source db:") == 1 for r in lines), lines[0].getMessage()
    assert str(port) in lines[0].getMessage()  # the reader names the server (test_pg_sideconn.py)
    assert lines[0].levelno == logging.WARNING and lines[-1].levelno == logging.ERROR
    assert f"failed {len(lines)} times in a row over" in lines[-1].getMessage(), lines[-1].getMessage()
    source.dsn = pg_database  # the server is back
    caplog.clear()
    wait_for(lambda: controller.tick(True, False) is not None and controller.windows, 5, "a chunk read")
    assert any("works again after" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records), \
        [r.getMessage() for r in caplog.records]
    controller.close()


def test_a_requested_copy_dropped_at_its_start_says_how_to_copy_it_later(pg_database, caplog):
    """Only the initial copy got the hint; a requested one (here of a table without a primary
    key, whose error carries no hint) got none."""
    sql(pg_database, "CREATE TABLE nopk (id int)")
    controller = SnapshotController("db", _Source(pg_database), "never", ["public.nopk"], 100)
    controller.plan(None)
    controller.queue.append(controller._entry("r1", "public.nopk", "id > 5"))
    caplog.set_level(logging.ERROR, logger="cdc.snapshot")
    controller.tick(True, False)
    controller.close()
    errors = [r.getMessage() for r in caplog.records]
    assert any("no primary key" in m and "cdc snapshot CONFIG --source db --table public.nopk --where 'id > 5'" in m
               and m.count("source db:") == 1 for m in errors), errors
