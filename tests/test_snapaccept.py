"""The acceptance pass of snapshots (issue 9), as a new user tries them: what the pass
found, each against a real server."""

from __future__ import annotations

import re
import time
from pathlib import Path

import orjson
from click.testing import CliRunner
from test_snapshot_mysql import Running as MariaDBRunning
from test_snapshot_mysql import _config as mariadb_config
from test_snapshot_postgres import wait_for

from cdc.cli import main

from mysql_helpers import db_of, execute
from pgutil import Running, config, file_pipeline, sql

DOCS = Path(__file__).resolve().parent.parent / "docs"


def cdc(*args) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def saved_snapshot(tmp_path) -> dict:
    """The snapshot progress in the checkpoint file: what a restart after ``kill -9`` reads."""
    return orjson.loads((tmp_path / "state/db.json").read_bytes())["position"]["snapshot"]


def test_a_cancelled_copy_is_checkpointed_without_another_change(pg_database, tmp_path):
    """Before: the cancel changed only the running process's state; on an idle database
    no commit followed, so the checkpoint kept the copy, and a restart after ``kill -9``
    resumed the copy that had been cancelled."""
    sql(pg_database, "CREATE TABLE snap (id bigint PRIMARY KEY, v int)",
        "INSERT INTO snap SELECT g, 0 FROM generate_series(1, 50000) g")
    cfg = config(tmp_path, pg_database, ["public.snap"], {"all": file_pipeline()}, snapshot="initial",
                 snapshot_chunk_size=20, snapshot_parallelism=1)
    path = str(tmp_path / "pipelines.yaml")
    with Running(cfg) as r:
        wait_for(lambda: r.runner.snapshots.rows_total > 500, 60, "the copy to start")
        code, text = cdc("snapshot", path, "--source", "db", "--cancel", "initial")
        assert code == 0, text
        wait_for(lambda: r.runner.snapshots.finished, 30, "the cancel")
        assert r.runner.snapshots.rows_total < 50000, "the copy ended before the cancel: make it longer"
        # nothing else happens in the database: the checkpoint must say so by itself
        wait_for(lambda: saved_snapshot(tmp_path)["queue"] == [], 10, "the cancel in the checkpoint")
        assert "cancelled" in saved_snapshot(tmp_path)["skipped"]["public.snap"]
    with Running(cfg) as r:  # the restart does not copy again
        time.sleep(1.0)
        assert r.runner.snapshots.finished and r.runner.snapshots.rows_total == 0


def test_a_table_without_a_key_is_checkpointed_as_not_copied_on_mariadb(mariadb_server, mariadb_database,
                                                                        tmp_path, caplog):
    """The same for a copy dropped by the reader (a table without a primary key, the last
    one of the initial copy): before, the checkpoint kept it queued until the next change,
    and the ERROR neither said that its changes are still streamed nor how to copy it later."""
    db = db_of(mariadb_database)
    execute(mariadb_server, db, "CREATE TABLE items (id int PRIMARY KEY, n int)",
            "INSERT INTO items SELECT seq, seq FROM seq_1_to_300",
            "CREATE TABLE nokey (n int)", "INSERT INTO nokey VALUES (1), (2)")
    cfg = mariadb_config(tmp_path, mariadb_server, db, [f"{db}.items", f"{db}.nokey"], snapshot_chunk_size=64)
    with MariaDBRunning(cfg) as r:
        wait_for(lambda: r.runner.snapshots.finished, 60, "the copy")
        wait_for(lambda: saved_snapshot(tmp_path)["queue"] == [], 10, "the checkpoint")
        assert "no primary key" in saved_snapshot(tmp_path)["skipped"][f"{db}.nokey"]
    error = next(m for m in caplog.messages if f"{db}.nokey" in m and "no primary key" in m)
    assert "its changes are still streamed" in error, error
    assert f"cdc snapshot CONFIG --source db --table {db}.nokey" in error, error


def test_the_filter_the_docs_give_drops_the_snapshot_rows_and_keeps_the_changes(pg_database, tmp_path):
    """docs/snapshots.md showed ``{type: filter, expression: "op != 'r'"}``: the filter has
    no ``expression``, so the documented config did not validate."""
    text = (DOCS / "snapshots.md").read_text()
    shown = re.search(r"drops them with a filter:\s*`transforms: (\[.*?\])`", text, re.S)
    assert shown, "docs/snapshots.md no longer shows the filter"
    transforms = __import__("yaml").safe_load(shown.group(1))
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY, v int)", "INSERT INTO t VALUES (1, 0), (2, 0)")
    cfg = config(tmp_path, pg_database, ["public.t"], {"all": file_pipeline(transforms=transforms)},
                 snapshot="initial")
    out = tmp_path / "out/all.jsonl"
    with Running(cfg) as r:
        wait_for(lambda: r.runner.snapshots.finished, 30, "the copy")
        sql(pg_database, "INSERT INTO t VALUES (3, 0)", "UPDATE t SET v = 1 WHERE id = 1", "DELETE FROM t WHERE id = 2",
            "TRUNCATE t")
        wait_for(lambda: out.exists() and out.read_text().count("\n") >= 4, 30, "the changes")
    ops = [orjson.loads(line)["op"] for line in out.read_text().splitlines()]
    assert ops == ["c", "u", "d", "t"], ops
