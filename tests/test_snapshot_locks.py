"""A table locked by another session (a migration's ACCESS EXCLUSIVE lock, held longer than
the copy's ``statement_timeout``) dropped its copy on PostgreSQL, as if the chunk's query
were too slow: the operator had to copy it again by hand (MariaDB retried: its lock wait
timeout is a transient error).  Now a chunk waits at most ``LOCK_TIMEOUT``, and the copy
tries again later with a WARNING that names the sessions holding the table; it finishes once
they are gone."""

from __future__ import annotations

import logging
import time

import psycopg

from pgutil import Running, config, file_pipeline, read_jsonl, sql


def _copied(r, tmp_path, rows: int):
    """The file sink's output once the copy has finished, none dropped, and its ``rows`` rows are out."""
    deadline = time.monotonic() + 60
    while not r.runner.snapshots.finished:
        assert time.monotonic() < deadline and r.thread.is_alive(), r.runner.error
        time.sleep(0.05)
    assert r.runner.snapshots.skipped == {}
    out = tmp_path / "out/all.jsonl"
    deadline = time.monotonic() + 30
    while len([e for e in read_jsonl(out) if e["op"] == "r"]) < rows:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return out


def test_a_copy_waits_out_a_table_lock_held_longer_than_the_statement_timeout(pg_database, tmp_path, caplog,
                                                                               monkeypatch):
    from cdc.snapshot import controller
    from cdc.sources.postgres import snapshot
    monkeypatch.setattr(snapshot, "STATEMENT_TIMEOUT", 2.0)  # 60 s in use
    monkeypatch.setattr(snapshot, "LOCK_TIMEOUT", 1.0)       # 5 s in use
    monkeypatch.setattr(controller, "LOCKED_DELAY", 0.5)
    sql(pg_database, "CREATE TABLE big (id int PRIMARY KEY, v text)",
        "INSERT INTO big SELECT g, 'v' || g FROM generate_series(1, 3000) g",
        "CREATE TABLE other (id int PRIMARY KEY)", "INSERT INTO other SELECT generate_series(1, 700)")
    # found by review: one locked table held up the copies of the others (queued after it)
    cfg = config(tmp_path, pg_database, ["public.big", "public.other"], {"all": file_pipeline()},
                 snapshot="initial", snapshot_chunk_size=500)
    # the publication and the slot exist already: creating them would wait for the migration too (the
    # lock, and its transaction id: tests/test_pg_setup_waits.py)
    source = cfg.sources["db"].build()
    sql(pg_database, f"CREATE PUBLICATION {source.publication} FOR TABLE big, other",
        f"SELECT pg_create_logical_replication_slot('{source.slot}', 'pgoutput')")
    with psycopg.connect(pg_database, application_name="nightly-migration") as migration:
        migration.execute("LOCK TABLE big IN ACCESS EXCLUSIVE MODE")
        with caplog.at_level(logging.INFO, logger="cdc"), Running(cfg) as r:
            time.sleep(4.0)  # twice the statement timeout
            assert r.thread.is_alive(), r.runner.error
            assert not r.runner.snapshots.finished and r.runner.snapshots.skipped == {}, r.runner.snapshots.skipped
            assert r.runner.snapshots.done == ["public.other"], r.runner.snapshots.done  # not held up by big
            migration.commit()
            out = _copied(r, tmp_path, 3700)
    ids = sorted(e["after"]["id"] for e in read_jsonl(out) if e["op"] == "r" and e["source"]["table"] == "big")
    assert ids == list(range(1, 3001))
    waits = [r.getMessage() for r in caplog.records if "lock" in r.getMessage()]
    assert waits and "nightly-migration" in waits[0] and "holding an ACCESS EXCLUSIVE lock" in waits[0], waits
    assert "the copies of the other tables go on" in waits[0], waits
    assert any("not locked any more: the copy goes on" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


def test_mariadb_copy_waits_out_a_table_lock_held_longer_than_its_read_timeout(mariadb_server, mariadb_database,
                                                                                tmp_path, caplog, monkeypatch):
    """``LOCK TABLES ... WRITE`` (or DDL's metadata lock) held longer than the copy's
    ``read_timeout``: the chunk got no row while the server answered, so the copy was dropped
    as a too slow query."""
    from test_snapshot_mysql import Running as MyRunning
    from test_snapshot_mysql import _config as my_config

    from cdc.snapshot import controller
    from cdc.sources.mysql import snapshot

    from mysql_helpers import db_of, execute
    monkeypatch.setattr(snapshot, "READ_TIMEOUT", 2.0)   # 60 s in use
    monkeypatch.setattr(snapshot, "LOCK_TIMEOUT", 1.0)   # 5 s in use
    monkeypatch.setattr(controller, "LOCKED_DELAY", 0.5)
    db = db_of(mariadb_database)
    execute(mariadb_server, db, "CREATE TABLE big (id int PRIMARY KEY, v varchar(20))",
            "INSERT INTO big SELECT seq, CONCAT('v', seq) FROM seq_1_to_3000")
    cfg = my_config(tmp_path, mariadb_server, db, [f"{db}.big"], snapshot="initial", snapshot_chunk_size=500)
    with mariadb_server.connect(db) as migration, migration.cursor() as cur:
        cur.execute("LOCK TABLES big WRITE")
        with caplog.at_level(logging.WARNING, logger="cdc"), MyRunning(cfg) as r:
            time.sleep(4.0)  # twice the read timeout
            assert r.thread.is_alive(), r.runner.error
            assert not r.runner.snapshots.finished and r.runner.snapshots.skipped == {}, r.runner.snapshots.skipped
            cur.execute("UNLOCK TABLES")
            out = _copied(r, tmp_path, 3000)
    ids = sorted(e["after"]["id"] for e in read_jsonl(out) if e["op"] == "r")
    assert ids == list(range(1, 3001))
    waits = [r.getMessage() for r in caplog.records if "lock_wait_timeout" in r.getMessage()]
    assert waits and "SHOW PROCESSLIST" in waits[0], [r.getMessage() for r in caplog.records]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


def test_a_lock_queued_behind_another_session_names_both(pg_database, monkeypatch):
    """Found by review: an ALTER TABLE waiting behind a session's open transaction makes the
    copy's read queue behind the ALTER; the message said 'held by another session (gone by now)'."""
    import threading

    import pytest

    from cdc.snapshot.chunk import TableLocked
    from cdc.sources.postgres import snapshot
    monkeypatch.setattr(snapshot, "LOCK_TIMEOUT", 1.0)
    sql(pg_database, "CREATE TABLE big (id int PRIMARY KEY)", "INSERT INTO big SELECT generate_series(1, 10)")
    reader = snapshot.PostgresSnapshotReader(pg_database, "db", pg_database.rsplit("/", 1)[1])
    reader.read_chunk("public.big", None, 5, None)  # its columns read before the locks
    with psycopg.connect(pg_database, application_name="report") as reading, \
            psycopg.connect(pg_database, application_name="migration") as altering:
        reader_pid, alter_pid = reading.info.backend_pid, altering.info.backend_pid
        reading.execute("SELECT count(*) FROM big")  # an ACCESS SHARE lock, in an open transaction
        alter = threading.Thread(target=lambda: altering.execute("ALTER TABLE big ADD COLUMN z int"), daemon=True)
        alter.start()
        time.sleep(0.5)  # the ALTER waits behind the open transaction
        try:
            with pytest.raises(TableLocked) as err:
                reader.read_chunk("public.big", [5], 5, None)
        finally:
            reading.rollback()
            alter.join(10)
            reader.close()
    message = str(err.value)
    assert f"pid {alter_pid} (" in message and "application migration" in message, message
    assert "waiting for an ACCESS EXCLUSIVE lock" in message and f"behind pid {reader_pid} (" in message
    assert "application report" in message, message


def test_cdc_snapshot_on_a_locked_table_takes_the_request(pg_database, tmp_path):
    """Found by review: `cdc snapshot --table` on a table a migration held waited 60 s, then
    blamed the server ("no answer within 60 s ... hung, overloaded"); with --where it failed
    after 5 s.  The request is taken: the copy waits for the lock when it runs."""
    import subprocess
    import sys

    import yaml
    sql(pg_database, "CREATE TABLE big (id int PRIMARY KEY)")
    raw = {"sources": {"db": {"type": "postgres", "dsn": pg_database, "tables": ["public.big"],
                              "checkpoint": {"type": "file", "path": "state/db.json"}}},
           "pipelines": {"all": {"source": "db", "sinks": [{"type": "discard"}]}}}
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump(raw))
    with psycopg.connect(pg_database) as migration:
        migration.execute("LOCK TABLE big IN ACCESS EXCLUSIVE MODE")
        for extra in ([], ["--where", "id > 5"]):
            started = time.monotonic()
            proc = subprocess.run([sys.executable, "-m", "cdc", "snapshot", str(path), "--source", "db",
                                   "--table", "big", *extra], capture_output=True, text=True, timeout=120,
                                  cwd=tmp_path)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert time.monotonic() - started < 30, proc.stdout + proc.stderr
    assert len(list((tmp_path / "state").glob("**/*.request*"))) == 2
