"""The reader thread never blocks for ever (issue 10): a locked checkpoint table, a
heartbeat backend that stopped answering, a MariaDB server that stops in the middle
of a transaction.  Each fault is real: a lock held by another session, a backend or
server process stopped with SIGSTOP."""

from __future__ import annotations

import os
import signal
import time

import psycopg
import yaml

from cdc.config import parse_config

from _ops_helpers import wait_for
from pgutil import Running, config, file_pipeline, read_jsonl, sql
from servers import MariaDBServer


def _ids(path) -> list[int]:
    return [e["after"]["id"] for e in read_jsonl(path)]


def test_locked_checkpoint_table_does_not_stop_the_reader(pg_database, tmp_path):
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY)")
    checkpoint = {"type": "postgres", "dsn": pg_database, "table": "cdc_checkpoints"}
    cfg = config(tmp_path, pg_database, ["public.t"], {"all": file_pipeline()}, checkpoint=checkpoint)
    out = tmp_path / "out/all.jsonl"
    with Running(cfg) as running:
        runner = running.runner
        sql(pg_database, "INSERT INTO t VALUES (1)")
        wait_for(lambda: _ids(out) == [1] and runner.saved_position, 30, "row 1 and its checkpoint")
        with psycopg.connect(pg_database) as locker:  # another session holds the table
            locker.execute("LOCK TABLE cdc_checkpoints IN ACCESS EXCLUSIVE MODE")
            for i in range(2, 6):
                sql(pg_database, f"INSERT INTO t VALUES ({i})")
                time.sleep(0.5)
            # each save fails after its timeout (10 s), and reading goes on between them
            wait_for(lambda: _ids(out) == [1, 2, 3, 4, 5], 45, "rows read while the table is locked")
            locker.rollback()
        wait_for(lambda: runner.saved_position == runner.tracker.position, 30, "the checkpoint after the lock")
    rows = sql(pg_database, "SELECT position->>'lsn' FROM cdc_checkpoints")
    assert rows and rows[0][0] == runner.saved_position["lsn"]


def _heartbeat_backends(dsn: str) -> list[int]:
    rows = sql(dsn, "SELECT pid FROM pg_stat_activity WHERE query LIKE '%pg_logical_emit_message%'"
                    " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
                    " AND datname = current_database()")
    return [r[0] for r in rows]


def test_stopped_heartbeat_backend_does_not_stop_the_reader(pg_database, tmp_path):
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY)")
    cfg = config(tmp_path, pg_database, ["public.t"], {"all": file_pipeline()}, heartbeat_interval=0.5)
    out = tmp_path / "out/all.jsonl"
    with Running(cfg) as running:
        runner = running.runner
        pid = wait_for(lambda: _heartbeat_backends(pg_database), 30, "the heartbeat backend")[0]
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(1.5)  # the next heartbeat is sent to the stopped backend
            for i in range(1, 4):
                sql(pg_database, f"INSERT INTO t VALUES ({i})")
            wait_for(lambda: _ids(out) == [1, 2, 3], 30, "rows read while the heartbeat backend is stopped")
            wait_for(lambda: set(_heartbeat_backends(pg_database)) - {pid}, 30, "a new heartbeat connection")
            assert time.monotonic() - runner.last_tick < 10
        finally:
            os.kill(pid, signal.SIGCONT)
        assert running.thread.is_alive()


def test_mariadb_stopped_mid_transaction_is_a_lost_connection(tmp_path):
    """MariaDB is stopped (SIGSTOP) while cdc reads a large transaction: without a read
    timeout the reader would wait for the rest of it for ever (heartbeat_interval: 0,
    so no read timeout came from the heartbeat either)."""
    with MariaDBServer() as server:
        dsn = server.create_database("shop")
        with server.connect("shop") as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE big (id int PRIMARY KEY, pad varchar(200))")
        raw = {"sources": {"db": {"type": "mysql", "dsn": dsn, "tables": ["shop.big"], "heartbeat_interval": 0,
                                  "max_poll_events": 200, "max_in_flight_events": 1000,
                                  "checkpoint": {"type": "file", "path": "state/db.json"},
                                  "checkpoint_interval": 0.0}},
               "pipelines": {"all": file_pipeline()}}
        (tmp_path / "pipelines.yaml").write_text(yaml.safe_dump(raw))
        running = Running(parse_config(raw, tmp_path / "pipelines.yaml", {}))
        running.thread.start()
        runner = running.runner
        out = tmp_path / "out/all.jsonl"
        try:
            wait_for(lambda: runner.source_connected, 30, "connected")
            with server.connect("shop") as conn, conn.cursor() as cur:
                cur.execute("INSERT INTO big SELECT seq, repeat('x', 200) FROM seq_1_to_100000")
            wait_for(lambda: runner.counts["received"] > 0, 60, "reading the transaction")
            os.kill(server.pid, signal.SIGSTOP)
            try:
                wait_for(lambda: not runner.source_connected, 90, "the stalled read seen as a lost connection")
            finally:
                os.kill(server.pid, signal.SIGCONT)
            wait_for(lambda: len(read_jsonl(out)) >= 100000, 180, "the whole transaction after the resume")
        finally:
            running.stop()
        ids = _ids(out)
        assert sorted(ids) == list(range(1, 100001)) and len(ids) == 100000


def test_mariadb_stopped_while_idle_is_a_lost_connection(tmp_path):
    """An idle binlog stream whose server stops answering (SIGSTOP: the socket stays
    open, nothing arrives, not even the heartbeats asked for) is a lost connection."""
    with MariaDBServer() as server:
        dsn = server.create_database("shop")
        with server.connect("shop") as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE t (id int PRIMARY KEY)")
        raw = {"sources": {"db": {"type": "mysql", "dsn": dsn, "tables": ["shop.t"], "heartbeat_interval": 1,
                                  "checkpoint": {"type": "file", "path": "state/db.json"},
                                  "checkpoint_interval": 0.0}},
               "pipelines": {"all": file_pipeline()}}
        (tmp_path / "pipelines.yaml").write_text(yaml.safe_dump(raw))
        running = Running(parse_config(raw, tmp_path / "pipelines.yaml", {}))
        running.thread.start()
        runner = running.runner
        out = tmp_path / "out/all.jsonl"
        try:
            wait_for(lambda: runner.source_connected, 30, "connected")
            with server.connect("shop") as conn, conn.cursor() as cur:
                cur.execute("INSERT INTO t VALUES (1)")
            wait_for(lambda: _ids(out) == [1], 30, "row 1")
            time.sleep(3)  # idle: heartbeats only
            assert runner.source_connected
            os.kill(server.pid, signal.SIGSTOP)
            try:
                wait_for(lambda: not runner.source_connected, 30, "the silent stream seen as a lost connection")
            finally:
                os.kill(server.pid, signal.SIGCONT)
            with server.connect("shop") as conn, conn.cursor() as cur:
                cur.execute("INSERT INTO t VALUES (2)")
            wait_for(lambda: _ids(out) == [1, 2], 60, "row 2 after the resume")
        finally:
            running.stop()
