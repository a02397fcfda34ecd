"""Database mirrors started on non-empty sources (PostgreSQL -> PostgreSQL and
MariaDB -> PostgreSQL), with a writer hitting the chunk being copied: the target
ends equal to the source, row for row."""

from __future__ import annotations

import random
import time

import psycopg
import yaml
from snapshot_helpers import ChunkHitter
from test_snapshot_mysql import Running as MyRunning
from test_snapshot_mysql import _executor as my_executor
from test_snapshot_postgres import _current, _pg_executor, wait_for

from cdc.config import parse_config

from pgutil import Running as PgRunning
from pgutil import sql

ROWS = 50_000


def _cfg(tmp_path, source: dict, target: str):
    raw = {"sources": {"db": {**source, "checkpoint": {"type": "file", "path": "state/db.json"},
                              "checkpoint_interval": 0.2, "snapshot_chunk_size": 2000}},
           "pipelines": {"mirror": {"source": "db", "sinks": [{"type": "postgres", "dsn": target}]}}}
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump(raw))
    return parse_config(raw, path, {})


def _target_rows(target: str) -> list:
    with psycopg.connect(target) as conn:
        return conn.execute("SELECT id, v, note FROM snap ORDER BY id").fetchall()


def test_postgres_to_postgres_mirror_of_a_non_empty_table(pg_server, pg_database, tmp_path):
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    target = pg_server.create_database(f"mirror_{pg_database.rsplit('/', 1)[1]}")
    sql(target, "CREATE TABLE snap (id bigint PRIMARY KEY, v int NOT NULL, note text)")
    sql(pg_database, "CREATE TABLE snap (id bigint PRIMARY KEY, v int NOT NULL, note text)",
        f"INSERT INTO snap SELECT 2 * g, 0, 'row ' || g FROM generate_series(1, {ROWS}) g")
    cfg = _cfg(tmp_path, {"type": "postgres", "dsn": pg_database, "tables": ["public.snap"]}, target)
    with PgRunning(cfg) as r:
        with ChunkHitter(_pg_executor(pg_database), lambda: _current(r.runner), 4000, seed) as writer:
            wait_for(lambda: r.runner.snapshots.finished, 300, "the copy")
            time.sleep(1.0)
        assert writer.error is None, writer.error
        expected = sql(pg_database, "SELECT id, v, note FROM snap ORDER BY id")
        deadline = time.time() + 60
        while _target_rows(target) != expected:
            assert time.time() < deadline, "the mirror did not reach the source's state"
            time.sleep(0.5)
    print(f"{len(expected)} rows mirrored; {writer.done} writer transactions during the copy")


def test_mariadb_to_postgres_mirror_of_a_non_empty_table(mariadb_server, mariadb_database, pg_server, tmp_path):
    from mysql_helpers import db_of, execute
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    db = db_of(mariadb_database)
    target = pg_server.create_database(f"mirror_{db}")
    sql(target, "CREATE TABLE snap (id bigint PRIMARY KEY, v int NOT NULL, note text)")
    execute(mariadb_server, db, "CREATE TABLE snap (id bigint PRIMARY KEY, v int NOT NULL, note varchar(100))",
            f"INSERT INTO snap SELECT 2 * seq, 0, concat('row ', seq) FROM seq_1_to_{ROWS}")
    # a second GTID domain on the server, so the snapshot's ids carry a GTID state of two domains
    # ("0-1-402,9-1-3:s5"), as on a server that ever wrote another domain
    execute(mariadb_server, db, "CREATE TABLE other_domain (id int PRIMARY KEY)",
            "SET SESSION gtid_domain_id = 9", "INSERT INTO other_domain VALUES (1)")
    cfg = _cfg(tmp_path, {"type": "mysql", "dsn": mariadb_server.dsn(db, user="cdc"), "tables": [f"{db}.snap"],
                          "server_id": random.randint(5000, 90000)}, target)
    with MyRunning(cfg) as r:
        with ChunkHitter(my_executor(mariadb_server, db), lambda: _current(r.runner), 4000, seed) as writer:
            wait_for(lambda: r.runner.snapshots.finished, 300, "the copy")
            time.sleep(1.0)
        assert writer.error is None, writer.error
        with mariadb_server.connect(db) as conn, conn.cursor() as cur:
            cur.execute("SELECT id, v, note FROM snap ORDER BY id")
            expected = [tuple(row) for row in cur.fetchall()]
        deadline = time.time() + 60
        while _target_rows(target) != expected:
            assert time.time() < deadline, "the mirror did not reach the source's state"
            time.sleep(0.5)
    print(f"{len(expected)} rows mirrored; {writer.done} writer transactions during the copy")
