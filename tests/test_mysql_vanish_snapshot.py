"""A MariaDB snapshot chunk that the server fails with an error of the query (not of the
connection): the copy is dropped with that error, and the pipeline goes on streaming; a lost
connection is still retried.  Against a real MariaDB 10.11; see docs/guarantees.md."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from click.testing import CliRunner
from test_snapshot_mysql import Running, _config, wait_for

from cdc.cli import main
from cdc.errors import SourceConnectionError
from cdc.snapshot import SnapshotInputError, requests

from mysql_helpers import db_of, execute, make_source
from pgutil import read_jsonl

# true for id < 2500; from there the subquery returns two rows: error 1242 mid-chunk, after rows were sent
FAILS_AT_ROW_2500 = "id < 2500 OR (SELECT id UNION SELECT id + 1) > 0"


def test_a_where_that_fails_on_some_row_drops_the_copy_and_streaming_goes_on(
        mariadb_server, mariadb_database, tmp_path, caplog):
    db = db_of(mariadb_database)
    execute(mariadb_server, db, "CREATE TABLE t (id int PRIMARY KEY, note varchar(20))",
            "INSERT INTO t SELECT seq, 'old' FROM seq_1_to_5000")
    cfg = _config(tmp_path, mariadb_server, db, [f"{db}.t"], snapshot="never", snapshot_chunk_size=4000)
    out = tmp_path / "out/all.jsonl"
    caplog.set_level(logging.WARNING)
    with Running(cfg) as r:
        requests.submit(cfg.state_dir, "db", f"{db}.t", FAILS_AT_ROW_2500)  # (CliRunner would hide the log)
        wait_for(lambda: r.runner.snapshots.progress, 30, "the copy to start")
        wait_for(lambda: not r.runner.snapshots.queue, 20, "the copy to be dropped (not retried)")
        execute(mariadb_server, db, "INSERT INTO t VALUES (5001, 'new')")
        wait_for(lambda: any(e["op"] == "c" for e in read_jsonl(out)), 30, "the stream")
        assert r.thread.is_alive()
    errors = [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert any("Subquery returns more than 1 row" in m and f"{db}.t" in m for m in errors), errors
    retries = [rec.getMessage() for rec in caplog.records if "retrying" in rec.getMessage()]
    assert not retries, retries
    assert not any(e["op"] == "r" and e["after"]["id"] >= 2500 for e in read_jsonl(out))
    # cdc snapshot accepts it: EXPLAIN cannot know, only some rows fail
    result = CliRunner().invoke(main, ["snapshot", str(tmp_path / "pipelines.yaml"), "--source", "db",
                                       "--table", "t", "--where", FAILS_AT_ROW_2500])
    assert result.exit_code == 0, result.output


def test_max_statement_time_fails_the_chunk_with_the_fix(mariadb_server, mariadb_database):
    db = db_of(mariadb_database)
    execute(mariadb_server, db, "CREATE TABLE t (id int PRIMARY KEY)", "INSERT INTO t SELECT seq FROM seq_1_to_300")
    reader = make_source(mariadb_server, db, [f"{db}.t"]).snapshot_reader()
    try:
        reader.read_chunk(f"{db}.t", None, 10, None)
        with reader.conn.cursor() as cur:  # as a server (or the cdc user) with a short max_statement_time
            cur.execute("SET SESSION max_statement_time = 0.2")
        with pytest.raises(SnapshotInputError, match="max_statement_time.*snapshot_chunk_size"):
            reader.read_chunk(f"{db}.t", None, 1000, "SLEEP(0.01) = 0")
    finally:
        reader.close()


def test_a_connection_killed_in_mid_chunk_is_still_retried(mariadb_server, mariadb_database):
    db = db_of(mariadb_database)
    execute(mariadb_server, db, "CREATE TABLE t (id int PRIMARY KEY)", "INSERT INTO t SELECT seq FROM seq_1_to_300")
    reader = make_source(mariadb_server, db, [f"{db}.t"]).snapshot_reader()
    try:
        reader.read_chunk(f"{db}.t", None, 10, None)
        thread_id = reader.conn.thread_id()

        def kill() -> None:
            time.sleep(0.5)
            with mariadb_server.connect() as conn, conn.cursor() as cur:
                cur.execute(f"KILL CONNECTION {thread_id}")
        killer = threading.Thread(target=kill)
        killer.start()
        with pytest.raises(SourceConnectionError):
            reader.read_chunk(f"{db}.t", None, 1000, "SLEEP(0.01) = 0")
        killer.join()
        chunk = reader.read_chunk(f"{db}.t", None, 1000, None)
    finally:
        reader.close()
    assert chunk.done and len(chunk.rows) == 300
