"""PostgreSQL snapshot (copy) connections that cannot connect or that hang: a refusal that
will not pass drops the copy with the way back, a passing one is retried; a server that
accepts the connection and never answers (its backend really stopped with SIGSTOP) is an
error naming the server, what did not answer and for how long; the controller's retries
say how often and how long, and when they end.  Against a real PostgreSQL."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import psycopg
import pytest
from test_snapshot_postgres import wait_for

from cdc.errors import SourceConnectionError
from cdc.snapshot import SnapshotInputError, requests
from cdc.sources.postgres import snapshot as pg_snapshot
from cdc.sources.postgres.snapshot import PostgresSnapshotReader

from _ops_helpers import within
from pgutil import Running, config, file_pipeline, read_jsonl, sql
from servers import PostgresServer

PASSWORD = "secret-pw-1"


class _PasswordServer(PostgresServer):
    """Members of the role pwauth log in with a password (the shared server trusts everyone)."""

    def init(self) -> None:
        super().init()
        hba = self.pgdata / "pg_hba.conf"
        hba.write_text("host all +pwauth 127.0.0.1/32 scram-sha-256\n" + hba.read_text())


@pytest.fixture(scope="module")
def private_pg():
    """A server of this module's own: its postmaster is stopped by one test."""
    server = _PasswordServer()
    server.start()
    try:
        sql(server.dsn(), "CREATE ROLE pwauth NOLOGIN")
        yield server
    finally:
        server.close()


def _password_user(server, superuser: bool = True) -> str:
    name = f"u{uuid.uuid4().hex[:8]}"
    sql(server.dsn(), f"CREATE ROLE {name} LOGIN {'SUPERUSER' if superuser else ''} REPLICATION"
                      f" PASSWORD '{PASSWORD}' IN ROLE pwauth")
    return name


def _database(server, *statements: str) -> str:
    name = f"d{uuid.uuid4().hex[:8]}"
    server.create_database(name)
    if statements:
        sql(server.dsn(name), *statements)
    return name


def _reader(dsn: str) -> PostgresSnapshotReader:
    return PostgresSnapshotReader(dsn, "db", dsn.rsplit("/", 1)[1])


def _port(dsn: str) -> int:
    return int(dsn.rsplit(":", 1)[1].split("/", 1)[0])


# ---- connections refused ------------------------------------------------------------------------


def test_password_changed_while_streaming_drops_the_copy_and_streaming_goes_on(private_pg, tmp_path, caplog):
    """Before, the refused copy was retried every 5 s for ever."""
    user = _password_user(private_pg)
    db = _database(private_pg, "CREATE TABLE t (id int PRIMARY KEY)", "INSERT INTO t SELECT generate_series(1, 50)")
    dsn = f"postgresql://{user}:{PASSWORD}@127.0.0.1:{private_pg.port}/{db}"
    cfg = config(tmp_path, dsn, ["public.t"], {"all": file_pipeline()}, slot=f"s_{db}")
    out = tmp_path / "out/all.jsonl"
    caplog.set_level(logging.WARNING)
    with Running(cfg) as r:
        sql(private_pg.dsn(), f"ALTER ROLE {user} PASSWORD 'another-pw'")
        requests.submit(cfg.state_dir, "db", "public.t", None)
        wait_for(lambda: any("dropped" in rec.getMessage() for rec in caplog.records), 20,
                 "the copy to be dropped (not retried)")
        assert not r.runner.snapshots.queue
        sql(private_pg.dsn(db), "INSERT INTO t VALUES (51)")
        wait_for(lambda: any(e["op"] == "c" for e in read_jsonl(out)), 30, "the stream")
    errors = [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert any("password authentication failed" in m and "public.t" in m and f"127.0.0.1:{private_pg.port}" in m
               and "still streamed" in m and "cdc snapshot CONFIG --source db --table public.t" in m
               for m in errors), errors
    assert not any("source db: source db" in m or m.count("source db:") > 1 for m in errors), errors
    assert not any("retrying" in rec.getMessage() for rec in caplog.records)
    assert "another-pw" not in caplog.text and PASSWORD not in caplog.text
    assert not any(e["op"] == "r" for e in read_jsonl(out))


def test_cdc_snapshot_refused_by_the_server_is_not_a_bad_table(private_pg, tmp_path):
    """``cdc snapshot --table``: the server's refusal exits 1, nothing requested (not exit 2)."""
    from click.testing import CliRunner

    from cdc.cli import main
    user = _password_user(private_pg)
    db = _database(private_pg, "CREATE TABLE t (id int PRIMARY KEY)")
    config(tmp_path, f"postgresql://{user}:wrong-pw@127.0.0.1:{private_pg.port}/{db}", ["public.t"],
           {"all": file_pipeline()})
    result = CliRunner().invoke(main, ["snapshot", str(tmp_path / "pipelines.yaml"), "--table", "public.t"])
    assert result.exit_code == 1, result.output
    assert "password authentication failed" in result.output and "nothing was requested" in result.output, \
        result.output
    assert "wrong-pw" not in result.output


def test_the_roles_connection_limit_reached_drops_the_copy_with_the_fix(pg_database):
    user = f"u{uuid.uuid4().hex[:8]}"
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY)", f"CREATE ROLE {user} LOGIN CONNECTION LIMIT 1",
        f"GRANT SELECT ON t TO {user}")
    dsn = pg_database.replace("postgres@", f"{user}@")
    with psycopg.connect(dsn):
        reader = _reader(dsn)
        try:
            with pytest.raises(SnapshotInputError, match=r"127\.0\.0\.1:\d+ refuses.*too many connections for role"
                                                         r".*CONNECTION LIMIT.*cdc snapshot CONFIG --source db"):
                reader.read_chunk("public.t", None, 10, None)
        finally:
            reader.close()


def test_a_copy_that_cannot_connect_for_a_passing_reason_is_retried_naming_the_server(pg_database):
    """Connection refused (nothing listens) may pass: a SourceConnectionError naming the server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    reader = _reader(pg_database.replace(f":{_port(pg_database)}/", f":{port}/"))
    with pytest.raises(SourceConnectionError, match=f"127.0.0.1:{port}"):
        reader.read_chunk("public.t", None, 10, None)


# ---- servers that accept the connection and never answer (SIGSTOP) -------------------------------


@pytest.fixture
def short_timeouts(monkeypatch):
    monkeypatch.setattr(pg_snapshot, "READ_TIMEOUT", 1.5, raising=False)
    monkeypatch.setattr(pg_snapshot, "CONNECT_TIMEOUT", 2, raising=False)


class _StoppedBackend:
    """The reader's own backend stopped (SIGSTOP): its socket accepts and says nothing."""

    def __init__(self, reader: PostgresSnapshotReader) -> None:
        assert reader.conn is not None
        self.pid = reader.conn.execute("SELECT pg_backend_pid()").fetchone()[0]

    def __enter__(self):
        os.kill(self.pid, signal.SIGSTOP)
        return self

    def __exit__(self, *exc):
        os.kill(self.pid, signal.SIGCONT)


@pytest.mark.parametrize("what", ["a chunk", "the columns"])
def test_a_stopped_backend_times_out_naming_the_server(pg_database, short_timeouts, what):
    """Before, ``_wait_readable`` (the chunk) and psycopg (the columns' queries) waited for ever."""
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY)", "INSERT INTO t SELECT generate_series(1, 300)",
        "CREATE TABLE u (id int PRIMARY KEY)")
    reader = _reader(pg_database)
    table = "public.t" if what == "a chunk" else "public.u"
    try:
        reader.read_chunk("public.t", None, 10, None)  # connected, the columns of t read
        with _StoppedBackend(reader):
            outcome = within(15, reader.read_chunk, table, None, 1000, None)
        error = outcome.get("error")
        assert isinstance(error, SourceConnectionError), outcome
        assert f"127.0.0.1:{_port(pg_database)} did not answer" in str(error), error
        assert what in str(error) and "1.5 s" in str(error), error
        assert outcome["seconds"] < 10
        chunk = reader.read_chunk("public.t", None, 1000, None)  # and after SIGCONT, it reads again
        assert chunk.done and len(chunk.rows) == 300
    finally:
        reader.close()


def test_connecting_to_a_stopped_server_times_out_naming_it(private_pg, short_timeouts):
    db = _database(private_pg, "CREATE TABLE t (id int PRIMARY KEY)")
    reader = _reader(private_pg.dsn(db))
    os.kill(private_pg.pid, signal.SIGSTOP)
    try:
        outcome = within(15, reader.read_chunk, "public.t", None, 10, None)
    finally:
        os.kill(private_pg.pid, signal.SIGCONT)
    error = outcome.get("error")
    assert isinstance(error, SourceConnectionError), outcome
    assert f"127.0.0.1:{private_pg.port} did not answer within 2 s (connect_timeout)" in str(error), error
    assert outcome["seconds"] < 8


def test_a_chunk_slower_than_the_statement_timeout_drops_the_copy_with_the_fix(pg_database, monkeypatch):
    """A live server running a slow chunk is not a hung one: its statement_timeout ends the query,
    and the copy is dropped with the fix (reading it again would be as slow)."""
    monkeypatch.setattr(pg_snapshot, "STATEMENT_TIMEOUT", 0.5, raising=False)
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY)", "INSERT INTO t VALUES (1)")
    reader = _reader(pg_database)
    try:
        with pytest.raises(SnapshotInputError, match=r"statement timeout.*snapshot_chunk_size.*statement_timeout"):
            reader.read_chunk("public.t", None, 10, "pg_sleep(2) IS NOT NULL")
    finally:
        reader.close()


def test_cdc_check_keeps_the_connect_timeout_of_the_dsn(private_pg, tmp_path):
    """`cdc check` of a server that accepts connections and never answers (its postmaster
    stopped): the DSN's connect_timeout (2 s) bounds the wait.  cdc's own default of 10 s
    replaced it."""
    db = _database(private_pg, "CREATE TABLE t (id int PRIMARY KEY)")
    config(tmp_path, private_pg.dsn(db) + "?connect_timeout=2", ["public.t"], {"p": file_pipeline()})
    os.kill(private_pg.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        checked = subprocess.run([sys.executable, "-m", "cdc", "check", str(tmp_path / "pipelines.yaml")],
                                 capture_output=True, text=True, timeout=60)
        seconds = time.monotonic() - started
    finally:
        os.kill(private_pg.pid, signal.SIGCONT)
    assert checked.returncode != 0, checked.stdout
    assert "timeout" in (checked.stdout + checked.stderr).lower(), (checked.stdout, checked.stderr)
    assert seconds < 8, (seconds, checked.stdout, checked.stderr)
