"""A first start (or a start after ``cdc checkpoint reset``) creates the publication and the
replication slot.  Creating a slot waits for every transaction running at that moment to end,
and creating or altering the publication waits for locks on the tables: a session left idle in
a transaction, or a migration holding a table, kept ``cdc run`` waiting for ever without a
word.  Now a WARNING says, every 30 s, what waits and for which sessions (pid, state, for how
long, the application, the query), and how to end the wait; the start goes on when they end."""

from __future__ import annotations

import logging
import threading
import time

import psycopg
import pytest

from cdc.engine import SourceRunner

from pgutil import config, file_pipeline, read_jsonl, sql


def _start(cfg) -> tuple[SourceRunner, threading.Thread]:
    runner = SourceRunner(cfg, "db", grace_period=10.0)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    return runner, thread


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("blocker", ["open transaction", "table lock"])
def test_a_start_that_waits_for_other_sessions_says_which(blocker, pg_database, tmp_path, caplog, monkeypatch):
    from cdc.sources.postgres import setup
    monkeypatch.setattr(setup, "WAIT_WARNING_AFTER", 1.0)
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY, v text)")
    other = psycopg.connect(pg_database, application_name="nightly-migration")
    if blocker == "open transaction":  # an xid, left open: the slot waits for it
        other.execute("INSERT INTO t VALUES (0, 'open')")
        what, fix = "creating replication slot", "commit or roll back"
    else:  # the publication waits for the table
        other.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        what, fix = "creating publication", "commit or roll back"
    pid = other.info.backend_pid
    cfg = config(tmp_path, pg_database, ["public.t"], {"all": file_pipeline()})
    runner, thread = _start(cfg)
    try:
        with caplog.at_level(logging.WARNING, logger="cdc"):
            _wait(lambda: any(f"pid {pid}" in r.getMessage() for r in caplog.records) or not thread.is_alive(),
                  30, "the warning")
        assert thread.is_alive(), runner.error
        message = next(r.getMessage() for r in caplog.records if f"pid {pid}" in r.getMessage())
        print(message)
        assert what in message and "nightly-migration" in message and fix in message, message
        assert "idle in transaction, its transaction open for" in message and "from 127.0.0.1)" in message, message
        assert "INSERT" not in message and "LOCK" not in message, message  # no query text: it may hold secrets
        assert not runner.source_connected
        other.rollback()
        _wait(lambda: runner.source_connected or not thread.is_alive(), 30, "the start")
        assert thread.is_alive(), runner.error
        sql(pg_database, "INSERT INTO t VALUES (1, 'after')")
        out = tmp_path / "out/all.jsonl"
        _wait(lambda: [e["after"]["id"] for e in read_jsonl(out)] == [1], 30, "the change")
    finally:
        other.close()
        runner.request_stop()
        thread.join(30)


def test_cdc_check_names_the_transactions_a_first_start_would_wait_for(pg_database, tmp_path, monkeypatch):
    from cdc.sources.postgres import preflight
    monkeypatch.setattr(preflight, "OPEN_TX_WARN_SECONDS", 0)  # 60 s in use
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY, v text)")
    source = config(tmp_path, pg_database, ["public.t"], {"all": file_pipeline()}).sources["db"].build()
    # other tests' sessions share the server: only this one's pid counts
    with psycopg.connect(pg_database, application_name="report-job") as other:
        mine = f"session pid {other.info.backend_pid} "
        assert not [m for _, m in source.preflight(None, None) if mine in m]
        other.execute("INSERT INTO t VALUES (0, 'open')")
        time.sleep(1.1)
        found = [(level, m) for level, m in source.preflight(None, None) if mine in m]
        assert len(found) == 1, found
        level, message = found[0]
        assert level == "warning" and "report-job" in message and "waits for it" in message, message
        assert f"creating replication slot {source.slot}" in message and "pg_terminate_backend" in message
        other.rollback()
        assert not [m for _, m in source.preflight(None, None) if mine in m]


def test_a_stop_while_the_slot_waits_ends_the_wait(pg_database, tmp_path, caplog, monkeypatch):
    """Found by review: SIGTERM while creating the slot waited for the other session to end
    (104 s in the review's run), then created the slot after the stop was asked for."""
    from cdc.sources.postgres import setup
    monkeypatch.setattr(setup, "WAIT_WARNING_AFTER", 0.5)
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY, v text)")
    cfg = config(tmp_path, pg_database, ["public.t"], {"all": file_pipeline()})
    with psycopg.connect(pg_database) as other:
        other.execute("INSERT INTO t VALUES (0, 'open')")
        runner, thread = _start(cfg)
        with caplog.at_level(logging.WARNING, logger="cdc"):
            _wait(lambda: any("creating replication slot" in r.getMessage() for r in caplog.records), 30,
                  "the slot's wait")
        stop_at = time.monotonic()
        runner.request_stop()
        thread.join(15)
        assert not thread.is_alive() and time.monotonic() - stop_at < 10
        slot = runner.source.slot
        other.rollback()
    assert runner.error is None, runner.error
    assert sql(pg_database, f"SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'") == [(0,)]
