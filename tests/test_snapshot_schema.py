"""Schema changes of a table while its snapshot runs (docs/snapshots.md, "Schema changes
during a copy"), against real servers: the copy goes on with the table's new shape, or
stops with an error that says what is not copied and how to copy it again."""

from __future__ import annotations

import time

import pytest
from snapshot_helpers import read_complete, rebuild

from cdc.snapshot.chunk import SnapshotInputError
from cdc.sources.postgres.snapshot import PostgresSnapshotReader

from mysql_helpers import db_of, execute, make_source
from pgutil import Running, config, file_pipeline, sql


def _chunk(reader, table: str, after, limit: int = 100, where: str | None = None):
    """The next chunk; a chunk whose snapshot cannot be used (None) is read again."""
    for _ in range(50):
        chunk = reader.read_chunk(table, after, limit, where)
        if chunk is not None:
            return chunk
        time.sleep(0.05)
    raise AssertionError(f"no usable chunk of {table} after {after}")


def _rows(chunk) -> list[dict]:
    return [e.after for _, e in chunk.rows]


# ---- PostgreSQL ---------------------------------------------------------------------------

def _pg_reader(dsn: str) -> PostgresSnapshotReader:
    return PostgresSnapshotReader(dsn, "db", dsn.rsplit("/", 1)[1])


def _pg_table(dsn: str) -> None:
    sql(dsn, "CREATE TABLE t (id int PRIMARY KEY, v int, note varchar(20))",
        "INSERT INTO t SELECT g, g, 'n' || g FROM generate_series(1, 300) g")


@pytest.mark.parametrize("ddl, expected", [
    ("ALTER TABLE t ADD COLUMN w int DEFAULT 7", {"id": 101, "v": 101, "note": "n101", "w": 7}),
    ("ALTER TABLE t ADD COLUMN w int", {"id": 101, "v": 101, "note": "n101", "w": None}),
    ("ALTER TABLE t DROP COLUMN note", {"id": 101, "v": 101}),
    ("ALTER TABLE t RENAME COLUMN note TO remark", {"id": 101, "v": 101, "remark": "n101"}),
    ("ALTER TABLE t ALTER COLUMN v TYPE numeric USING v + 0.5", {"id": 101, "v": "101.5", "note": "n101"}),
    ("ALTER TABLE t ALTER COLUMN note TYPE text", {"id": 101, "v": 101, "note": "n101"}),
    ("ALTER TABLE t ALTER COLUMN id TYPE bigint", {"id": 101, "v": 101, "note": "n101"}),
    ("ALTER TABLE t RENAME COLUMN id TO ident", {"ident": 101, "v": 101, "note": "n101"}),
])
def test_postgres_copy_goes_on_with_the_new_shape(pg_database, ddl, expected):
    _pg_table(pg_database)
    reader = _pg_reader(pg_database)
    try:
        first = _chunk(reader, "public.t", None)
        assert _rows(first)[-1] == {"id": 100, "v": 100, "note": "n100"}
        sql(pg_database, ddl)
        rows = []
        after = first.last_key
        while True:
            chunk = _chunk(reader, "public.t", after)
            rows += _rows(chunk)
            after = chunk.last_key
            if chunk.done:
                break
        assert len(rows) == 200
        assert rows[0] == expected
    finally:
        reader.close()


def test_postgres_a_changed_primary_key_stops_the_copy_with_what_to_do(pg_database):
    _pg_table(pg_database)
    reader = _pg_reader(pg_database)
    try:
        first = _chunk(reader, "public.t", None)
        sql(pg_database, "ALTER TABLE t DROP CONSTRAINT t_pkey", "ALTER TABLE t ADD PRIMARY KEY (v, id)")
        with pytest.raises(SnapshotInputError) as err:
            _chunk(reader, "public.t", first.last_key)
        message = str(err.value)
        assert "primary key of public.t changed from (id) to (v, id)" in message
        assert "after key [100]" in message and "cdc snapshot" in message, message
    finally:
        reader.close()


def test_postgres_a_table_rewritten_after_the_chunk_snapshot_is_read_again(pg_database):
    """A table-rewriting ALTER TABLE is not MVCC-safe: a snapshot taken before it committed
    sees the rewritten table empty.  A chunk read so would end the copy there."""
    _pg_table(pg_database)
    reader = _pg_reader(pg_database)
    try:
        first = _chunk(reader, "public.t", None)
        conn = reader._connect()
        # the chunk's transaction takes its snapshot, then the rewrite commits, then COPY reads
        original = reader._copy

        def copy_after_a_rewrite(conn, query, *more):
            if not getattr(copy_after_a_rewrite, "done", False):
                copy_after_a_rewrite.done = True
                query_snapshot, _, rest = query.partition(b"::text; ")
                conn.pgconn.exec_(query_snapshot.split(b";", 1)[0] + b";")  # BEGIN ...
                snap = conn.pgconn.exec_(b"SELECT pg_current_snapshot()::text").get_value(0, 0).decode()
                sql(pg_database, "ALTER TABLE t ALTER COLUMN v TYPE bigint")
                return original(conn, b"SELECT '" + snap.encode() + b"'::text; " + rest, *more)
            return original(conn, query, *more)

        reader._copy = copy_after_a_rewrite
        chunk = _chunk(reader, "public.t", first.last_key)
        assert copy_after_a_rewrite.done
        assert not (chunk.done and not chunk.rows), "the rewritten table read as empty: the copy would end here"
        assert _rows(chunk)[0] == {"id": 101, "v": 101, "note": "n101"}
        assert conn is not None
    finally:
        reader.close()


# ---- MariaDB ----------------------------------------------------------------------------------

def _my_table(server, db: str) -> None:
    execute(server, db, "CREATE TABLE t (id int PRIMARY KEY, v int, note varchar(20))",
            "INSERT INTO t SELECT seq, seq, CONCAT('n', seq) FROM seq_1_to_300")


@pytest.mark.parametrize("ddl, expected", [
    ("ALTER TABLE t ADD COLUMN w int DEFAULT 7", {"id": 101, "v": 101, "note": "n101", "w": 7}),
    ("ALTER TABLE t ADD COLUMN w int", {"id": 101, "v": 101, "note": "n101", "w": None}),
    ("ALTER TABLE t DROP COLUMN note", {"id": 101, "v": 101}),
    ("ALTER TABLE t RENAME COLUMN note TO remark", {"id": 101, "v": 101, "remark": "n101"}),
    ("ALTER TABLE t MODIFY v decimal(10,1)", {"id": 101, "v": "101.0", "note": "n101"}),
    ("ALTER TABLE t MODIFY note text", {"id": 101, "v": 101, "note": "n101"}),
    ("ALTER TABLE t MODIFY id bigint", {"id": 101, "v": 101, "note": "n101"}),
    ("ALTER TABLE t CHANGE id ident int", {"ident": 101, "v": 101, "note": "n101"}),
])
def test_mariadb_copy_goes_on_with_the_new_shape(mariadb_server, mariadb_database, ddl, expected):
    db = db_of(mariadb_database)
    _my_table(mariadb_server, db)
    reader = make_source(mariadb_server, db, [f"{db}.t"]).snapshot_reader()
    table = f"{db}.t"
    try:
        first = _chunk(reader, table, None)
        assert _rows(first)[-1] == {"id": 100, "v": 100, "note": "n100"}
        execute(mariadb_server, db, ddl)
        rows = []
        after = first.last_key
        while True:
            chunk = _chunk(reader, table, after)
            rows += _rows(chunk)
            after = chunk.last_key
            if chunk.done:
                break
        assert len(rows) == 200
        assert rows[0] == expected
    finally:
        reader.close()


def test_mariadb_a_changed_primary_key_stops_the_copy_with_what_to_do(mariadb_server, mariadb_database):
    db = db_of(mariadb_database)
    _my_table(mariadb_server, db)
    reader = make_source(mariadb_server, db, [f"{db}.t"]).snapshot_reader()
    try:
        first = _chunk(reader, f"{db}.t", None)
        execute(mariadb_server, db, "ALTER TABLE t DROP PRIMARY KEY, ADD PRIMARY KEY (v, id)")
        with pytest.raises(SnapshotInputError) as err:
            _chunk(reader, f"{db}.t", first.last_key)
        message = str(err.value)
        assert f"primary key of {db}.t changed from (id) to (v, id)" in message
        assert "after key [100]" in message and "cdc snapshot" in message, message
    finally:
        reader.close()


# ---- the whole pipeline -----------------------------------------------------------------------

def _copied(runner) -> int | None:
    """The last key the copy handed on (None: not started or done)."""
    queue = ((runner.saved_position or {}).get("snapshot") or {}).get("queue") or []
    return queue[0]["after"][0] if queue and queue[0]["after"] else None


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _check_copy(events: list[dict], table: str, source_rows: dict, old_columns=("id", "v", "note"),
                repeats: bool = False) -> None:
    """Every row arrived once (``repeats``: at least once, after a kill): those copied before
    the DDL took effect with the table's old columns (the DDL is no row event), every one
    after them with its new columns."""
    reads = [e for e in events if e["op"] == "r" and e["source"]["table"] == table]
    ids = [e["after"]["id"] for e in reads]
    assert (set(ids) if repeats else sorted(ids)) == (set(source_rows) if repeats else sorted(source_rows))
    state = rebuild(events, table)
    keys = sorted(state)
    switch = next((i for i, k in enumerate(keys) if state[k] == source_rows[k]), None)
    assert switch is not None and switch > 0, "no row copied with the new columns, or none with the old"
    print(f"rows copied with the old columns: {switch}, with the new ones: {len(keys) - switch}")
    for k in keys[:switch]:
        assert state[k] == {c: {"id": k, "v": k, "note": f"n{k}"}[c] for c in old_columns}, (k, state[k])
    for k in keys[switch:]:
        assert state[k] == source_rows[k], (k, state[k], source_rows[k])


def test_postgres_pipeline_copy_with_columns_added_and_dropped_mid_copy(pg_database, tmp_path):
    sql(pg_database, "CREATE TABLE big (id int PRIMARY KEY, v int, note varchar(20))",
        "INSERT INTO big SELECT g, g, 'n' || g FROM generate_series(1, 20000) g")
    cfg = config(tmp_path, pg_database, ["public.big"], {"all": file_pipeline()}, snapshot="initial",
                 snapshot_chunk_size=100)
    out = tmp_path / "out/all.jsonl"
    with Running(cfg) as r:
        _wait(lambda: (_copied(r.runner) or 0) > 0, 60, "the first chunks")
        sql(pg_database, "ALTER TABLE big ADD COLUMN w int DEFAULT 7, DROP COLUMN note,"
                         " ALTER COLUMN v TYPE numeric USING v + 0.5")
        assert not r.runner.snapshots.finished, "the copy finished before the DDL: make the table bigger"
        _wait(lambda: r.runner.snapshots.finished or not r.thread.is_alive(), 120, "the copy")
        assert r.thread.is_alive(), r.runner.error
        assert r.runner.snapshots.skipped == {}
        _wait(lambda: len([e for e in read_complete(out) if e["op"] == "r"]) >= 20000, 60, "the rows")
    with __import__("psycopg").connect(pg_database) as conn:
        source = {row[0]: {"id": row[0], "v": str(row[1]), "w": row[2]}
                  for row in conn.execute("SELECT id, v, w FROM big")}
    _check_copy(read_complete(out), "big", source)


def test_mariadb_pipeline_copy_with_a_column_added_mid_copy(mariadb_server, mariadb_database, tmp_path):
    from test_snapshot_mysql import Running as MyRunning
    from test_snapshot_mysql import _config as my_config
    db = db_of(mariadb_database)
    execute(mariadb_server, db, "CREATE TABLE big (id int PRIMARY KEY, v int, note varchar(20))",
            "INSERT INTO big SELECT seq, seq, CONCAT('n', seq) FROM seq_1_to_60000")
    cfg = my_config(tmp_path, mariadb_server, db, [f"{db}.big"], snapshot="initial", snapshot_chunk_size=100)
    out = tmp_path / "out/all.jsonl"
    with MyRunning(cfg) as r:
        _wait(lambda: (_copied(r.runner) or 0) > 0, 60, "the first chunks")
        execute(mariadb_server, db, "ALTER TABLE big ADD COLUMN w int DEFAULT 7")  # instant: no rebuild
        assert not r.runner.snapshots.finished, "the copy finished before the DDL: make the table bigger"
        _wait(lambda: r.runner.snapshots.finished or not r.thread.is_alive(), 120, "the copy")
        assert r.thread.is_alive(), r.runner.error
        assert r.runner.snapshots.skipped == {}
        _wait(lambda: len([e for e in read_complete(out) if e["op"] == "r"]) >= 20000, 60, "the rows")
    with mariadb_server.connect(db) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, v, note, w FROM big")
        source = {row[0]: {"id": row[0], "v": row[1], "note": row[2], "w": row[3]} for row in cur.fetchall()}
    _check_copy(read_complete(out), "big", source)


def test_postgres_pipeline_table_truncated_mid_copy(pg_database, tmp_path):
    """The file sink's rebuilt table equals the source's, row for row."""
    sql(pg_database, "CREATE TABLE big (id int PRIMARY KEY, v int, note varchar(20))",
        "INSERT INTO big SELECT g, g, 'n' || g FROM generate_series(1, 20000) g")
    cfg = config(tmp_path, pg_database, ["public.big"], {"all": file_pipeline()}, snapshot="initial",
                 snapshot_chunk_size=100)
    out = tmp_path / "out/all.jsonl"
    with Running(cfg) as r:
        _wait(lambda: (_copied(r.runner) or 0) > 0, 60, "the first chunks")
        sql(pg_database, "TRUNCATE big", "INSERT INTO big SELECT g, -g, 'after' FROM generate_series(1, 30000, 7) g")
        assert not r.runner.snapshots.finished, "the copy finished before the DDL: make the table bigger"
        _wait(lambda: r.runner.snapshots.finished or not r.thread.is_alive(), 120, "the copy")
        assert r.thread.is_alive(), r.runner.error
        source = {row[0]: {"id": row[0], "v": row[1], "note": row[2]}
                  for row in sql(pg_database, "SELECT id, v, note FROM big")}
        _wait(lambda: rebuild(read_complete(out), "big") == source, 60, "the file sink to reach the source's state")
    assert r.runner.snapshots.skipped == {}


def test_postgres_table_dropped_and_created_again_mid_copy_stops_cdc_with_what_is_lost(pg_database, tmp_path):
    """PostgreSQL takes a dropped table out of the publication: the new table's changes are
    not streamed, and the copy would go on in the new table after the old one's key."""
    import subprocess
    import sys

    from snapshot_helpers import CopyUnderKills
    sql(pg_database, "CREATE TABLE big (id int PRIMARY KEY, v int, note varchar(20))",
        "INSERT INTO big SELECT g, g, 'n' || g FROM generate_series(1, 20000) g")
    config(tmp_path, pg_database, ["public.big"], {"all": file_pipeline()}, snapshot="initial",
           snapshot_chunk_size=100)
    progress = CopyUnderKills(tmp_path / "pipelines.yaml", tmp_path / "state/db.json", tmp_path, None)
    proc = subprocess.Popen([sys.executable, "-m", "cdc", "run", str(tmp_path / "pipelines.yaml")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait(lambda: (progress.copied() or 0) > 0, 60, "the first chunks")
        sql(pg_database, "BEGIN; DROP TABLE big; CREATE TABLE big (id int PRIMARY KEY, v int, note varchar(20));"
                         " INSERT INTO big SELECT g, -g, 'after' FROM generate_series(1, 30000, 7) g; COMMIT")
        assert progress.copied() != -1, "the copy finished before the DDL: make the table bigger"
        output = proc.communicate(timeout=60)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode not in (0, None), output
    assert "Traceback" not in output, output
    assert "table public.big was dropped and created again while it was copied" in output, output
    assert "cdc snapshot CONFIG --source db --table public.big" in output
    # the recovery it names: started again, the table is streamed again
    from cdc.config import load_config
    with Running(load_config(tmp_path / "pipelines.yaml")) as r:
        assert sql(pg_database, "SELECT tablename FROM pg_publication_tables") == [("big",)]
        sql(pg_database, "INSERT INTO big VALUES (99999, 1, 'streamed')")
        _wait(lambda: any(e["op"] == "c" and e["after"]["id"] == 99999 for e in read_complete(
            tmp_path / "out/all.jsonl")), 60, "the new table's change")
        assert r.thread.is_alive()


def test_postgres_table_renamed_mid_copy_names_the_rows_not_copied(pg_database, tmp_path, caplog):
    sql(pg_database, "CREATE TABLE big (id int PRIMARY KEY, v int, note varchar(20))",
        "INSERT INTO big SELECT g, g, 'n' || g FROM generate_series(1, 20000) g")
    cfg = config(tmp_path, pg_database, ["public.big"], {"all": file_pipeline()}, snapshot="initial",
                 snapshot_chunk_size=100)
    with Running(cfg) as r:
        _wait(lambda: (_copied(r.runner) or 0) > 0, 60, "the first chunks")
        sql(pg_database, "ALTER TABLE big RENAME TO big2")
        assert not r.runner.snapshots.finished, "the copy finished before the DDL: make the table bigger"
        _wait(lambda: r.runner.snapshots.finished or not r.thread.is_alive(), 60, "the copy to stop")
    errors = [rec.getMessage() for rec in caplog.records if rec.levelname == "ERROR" and "dropped" in rec.getMessage()]
    assert len(errors) == 1, errors
    assert "its rows after key [" in errors[0] and "cdc snapshot CONFIG --source db --table public.big" in errors[0]


@pytest.mark.parametrize("kind", ["postgres", "mariadb"])
def test_sigkill_after_ddl_mid_copy_then_restart(kind, tmp_path, request):
    """``kill -9`` right after DDL mid-copy, then ``cdc run`` again: the copy resumes with the
    table's new columns, every row arrives."""
    import os
    import random
    import signal

    from snapshot_helpers import CopyUnderKills
    if kind == "postgres":
        dsn = request.getfixturevalue("pg_database")
        sql(dsn, "CREATE TABLE big (id int PRIMARY KEY, v int, note varchar(20))",
            "INSERT INTO big SELECT g, g, 'n' || g FROM generate_series(1, 20000) g")
        config(tmp_path, dsn, ["public.big"], {"all": file_pipeline()}, snapshot="initial", snapshot_chunk_size=100)
        ddl = lambda: sql(dsn, "ALTER TABLE big ADD COLUMN w int DEFAULT 7, DROP COLUMN note")  # noqa: E731
        rows = lambda: {r[0]: {"id": r[0], "v": r[1], "w": r[2]} for r in sql(dsn, "SELECT id, v, w FROM big")}  # noqa: E731
    else:
        from test_snapshot_mysql import _config as my_config
        server, db = request.getfixturevalue("mariadb_server"), db_of(request.getfixturevalue("mariadb_database"))
        execute(server, db, "CREATE TABLE big (id int PRIMARY KEY, v int, note varchar(20))",
                "INSERT INTO big SELECT seq, seq, CONCAT('n', seq) FROM seq_1_to_60000")
        my_config(tmp_path, server, db, [f"{db}.big"], snapshot="initial", snapshot_chunk_size=100)
        ddl = lambda: execute(server, db, "ALTER TABLE big ADD COLUMN w int DEFAULT 7, DROP COLUMN note")  # noqa: E731

        def rows():
            with server.connect(db) as conn, conn.cursor() as cur:
                cur.execute("SELECT id, v, w FROM big")
                return {r[0]: {"id": r[0], "v": r[1], "w": r[2]} for r in cur.fetchall()}
    runs = CopyUnderKills(tmp_path / "pipelines.yaml", tmp_path / "state/db.json", tmp_path, random.Random(1))
    proc = runs.start()
    try:
        _wait(lambda: (runs.copied() or 0) > 0, 60, "the first chunks")
        ddl()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert runs.copied() not in (-1, None), "the copy finished before the kill: make the table bigger"
        proc = runs.start()
        _wait(lambda: runs.copied() == -1, 120, "the copy to finish after the restart")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    log = open(runs.runs[-1]).read()
    assert "ERROR" not in log and "Traceback" not in log, log
    _check_copy(read_complete(tmp_path / "out/all.jsonl"), "big", rows(), repeats=True)


def test_a_where_on_a_column_dropped_mid_copy_drops_the_copy_with_the_reason(pg_database, mariadb_server,
                                                                             mariadb_database):
    """On-demand copy with ``--where v > 0``, then ``DROP COLUMN v``: a clear error (the
    controller drops the copy and says what is not copied), not retries forever."""
    _pg_table(pg_database)
    db = db_of(mariadb_database)
    _my_table(mariadb_server, db)
    readers = [(_pg_reader(pg_database), "public.t", lambda: sql(pg_database, "ALTER TABLE t DROP COLUMN v")),
               (make_source(mariadb_server, db, [f"{db}.t"]).snapshot_reader(), f"{db}.t",
                lambda: execute(mariadb_server, db, "ALTER TABLE t DROP COLUMN v"))]
    for reader, table, drop in readers:
        try:
            first = reader.read_chunk(table, None, 100, "v > 0")
            assert first is not None and len(first.rows) == 100
            drop()
            with pytest.raises(SnapshotInputError, match="v"):
                _chunk(reader, table, first.last_key, where="v > 0")
        finally:
            reader.close()


@pytest.mark.parametrize("kind", ["postgres", "mariadb"])
def test_mirror_started_on_a_non_empty_table_with_ddl_mid_copy_ends_equal(kind, pg_server, tmp_path, request):
    """PostgreSQL -> PostgreSQL and MariaDB -> PostgreSQL mirrors: mid-copy, the operator adds
    the new column to the target, then the source gets it (with a default), loses a
    column and widens another.  The target ends equal to the source, row for row."""
    import random

    from test_snapshot_mirror import _cfg
    from test_snapshot_mysql import Running as MyRunning
    target = pg_server.create_database(f"mirror_{random.randrange(1 << 30)}")
    sql(target, "CREATE TABLE big (id int PRIMARY KEY, v int, note varchar(20))")
    if kind == "postgres":
        dsn = request.getfixturevalue("pg_database")
        sql(dsn, "CREATE TABLE big (id int PRIMARY KEY, v int, note varchar(20))",
            "INSERT INTO big SELECT g, g, 'n' || g FROM generate_series(1, 30000) g")
        cfg, running = _cfg(tmp_path, {"type": "postgres", "dsn": dsn, "tables": ["public.big"]}, target), Running
        ddl = lambda: sql(dsn, "ALTER TABLE big ADD COLUMN w int DEFAULT 7, DROP COLUMN note,"  # noqa: E731
                               " ALTER COLUMN v TYPE bigint")
        rows = lambda: sql(dsn, "SELECT id, v, w FROM big ORDER BY id")  # noqa: E731
    else:
        server, db = request.getfixturevalue("mariadb_server"), db_of(request.getfixturevalue("mariadb_database"))
        execute(server, db, "CREATE TABLE big (id int PRIMARY KEY, v int, note varchar(20))",
                "INSERT INTO big SELECT seq, seq, CONCAT('n', seq) FROM seq_1_to_30000")
        cfg = _cfg(tmp_path, {"type": "mysql", "dsn": server.dsn(db, user="cdc"), "tables": [f"{db}.big"],
                              "server_id": random.randint(5000, 90000)}, target)
        running = MyRunning
        ddl = lambda: execute(server, db, "ALTER TABLE big ADD COLUMN w int DEFAULT 7, DROP COLUMN note,"  # noqa: E731
                                          " MODIFY v bigint")

        def rows():
            with server.connect(db) as conn, conn.cursor() as cur:
                cur.execute("SELECT id, v, w FROM big ORDER BY id")
                return [tuple(r) for r in cur.fetchall()]
    import psycopg
    # The target is locked against writes (and altered) in a transaction held until the source's DDL is done:
    # the mirror waits, and the copy stops at the in-flight limit (4,096 rows), far from the
    # table's end, so the DDL lands mid-copy however fast the copy runs.
    with psycopg.connect(target) as hold:
        hold.execute("LOCK TABLE big IN EXCLUSIVE MODE")  # writes wait, reads do not
        with running(cfg) as r:
            try:
                _wait(lambda: r.runner.snapshots.chunks_emitted > 0, 60, "the first chunks")
                hold.execute("ALTER TABLE big ADD COLUMN w int DEFAULT 7, ALTER COLUMN v TYPE bigint")
                ddl()
                assert not r.runner.snapshots.finished, "the copy finished before the DDL: make the table bigger"
            finally:
                hold.commit()  # the mirror goes on (or stops) only once the lock is gone
            _wait(lambda: r.runner.snapshots.finished or not r.thread.is_alive(), 120, "the copy")
            assert r.thread.is_alive(), r.runner.error
            assert r.runner.snapshots.skipped == {}
            expected = [tuple(row) for row in rows()]
            _wait(lambda: [tuple(row) for row in sql(target, "SELECT id, v, w FROM big ORDER BY id")] == expected,
                  60, "the mirror to reach the source's state")
    assert len(expected) == 30000


def test_mariadb_pipeline_table_truncated_mid_copy(mariadb_server, mariadb_database, tmp_path):
    """The file sink's rebuilt table equals the source's, row for row."""
    from test_snapshot_mysql import Running as MyRunning
    from test_snapshot_mysql import _config as my_config
    db = db_of(mariadb_database)
    execute(mariadb_server, db, "CREATE TABLE big (id int PRIMARY KEY, v int, note varchar(20))",
            "INSERT INTO big SELECT seq, seq, CONCAT('n', seq) FROM seq_1_to_60000")
    cfg = my_config(tmp_path, mariadb_server, db, [f"{db}.big"], snapshot="initial", snapshot_chunk_size=100)
    out = tmp_path / "out/all.jsonl"
    with MyRunning(cfg) as r:
        _wait(lambda: (_copied(r.runner) or 0) > 0, 60, "the first chunks")
        with mariadb_server.connect(db) as conn, conn.cursor() as cur:
            cur.execute("LOCK TABLES big WRITE")  # the copy waits here: the TRUNCATE lands mid-copy
            assert not r.runner.snapshots.finished, "the copy finished before the DDL: make the table bigger"
            cur.execute("TRUNCATE big")
            cur.execute("UNLOCK TABLES")
        execute(mariadb_server, db, "INSERT INTO big SELECT seq, -seq, 'after' FROM seq_1_to_30000_step_7")
        _wait(lambda: r.runner.snapshots.finished or not r.thread.is_alive(), 120, "the copy")
        assert r.thread.is_alive(), r.runner.error
        with mariadb_server.connect(db) as conn, conn.cursor() as cur:
            cur.execute("SELECT id, v, note FROM big")
            source = {row[0]: {"id": row[0], "v": row[1], "note": row[2]} for row in cur.fetchall()}
        _wait(lambda: rebuild(read_complete(out), "big") == source, 60, "the file sink to reach the source's state")
    assert r.runner.snapshots.skipped == {}
