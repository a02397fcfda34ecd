"""MariaDB side connections (the snapshot reader's, the pre-flight's) that cannot connect or
that hang: a refusal that will not pass drops the copy with the way back, a passing one is
retried; a server that accepts the connection and never answers (really stopped with
SIGSTOP) is an error naming the server, what did not answer and for how long.  Against a
real MariaDB 10.11."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid

import pytest
from test_snapshot_mysql import Running, wait_for

from cdc.config import parse_config
from cdc.errors import SourceConnectionError
from cdc.snapshot import SnapshotInputError, requests
from cdc.sources.mysql import preflight as mysql_preflight
from cdc.sources.mysql import snapshot as mysql_snapshot

from _ops_helpers import within
from mysql_helpers import db_of, execute, make_source, mysql_config, preflight
from pgutil import read_jsonl
from servers import MariaDBServer


def _user(server, db: str, **limits) -> tuple[str, str]:
    """A user of its own (the tests change its password and limits), as cdc's is granted."""
    name, password = f"u{uuid.uuid4().hex[:8]}", "secret-pw-1"
    extra = " WITH " + " ".join(f"{k.upper()} {v}" for k, v in limits.items()) if limits else ""
    execute(server, db, f"CREATE USER '{name}'@'%' IDENTIFIED BY '{password}'",
            f"GRANT SELECT, REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO '{name}'@'%'{extra}")
    return name, password


def _dsn(server, db: str, user: str, password: str, query: str = "") -> str:
    return f"mysql://{user}:{password}@127.0.0.1:{server.port}/{db}{query}"


def _config(tmp_path, dsn: str, tables: list[str], **options):
    return mysql_config(tmp_path, dsn, tables, **options)


# ---- connections refused ------------------------------------------------------------------------


def test_access_denied_for_the_copy_drops_it_and_streaming_goes_on(mariadb_server, mariadb_database, tmp_path,
                                                                     caplog):
    """The password changed while the binlog stream runs: the copy's connection is refused
    (1045). Before, it was retried every 5 s for ever."""
    db = db_of(mariadb_database)
    execute(mariadb_server, db, "CREATE TABLE t (id int PRIMARY KEY)", "INSERT INTO t SELECT seq FROM seq_1_to_50")
    user, password = _user(mariadb_server, db)
    cfg = _config(tmp_path, _dsn(mariadb_server, db, user, password), [f"{db}.t"], snapshot="never")
    out = tmp_path / "out/all.jsonl"
    caplog.set_level(logging.WARNING)
    with Running(cfg) as r:
        execute(mariadb_server, db, f"ALTER USER '{user}'@'%' IDENTIFIED BY 'another-pw'")
        requests.submit(cfg.state_dir, "db", f"{db}.t", None)
        wait_for(lambda: any("dropped" in rec.getMessage() for rec in caplog.records), 15,
                 "the copy to be dropped (not retried)")
        assert not r.runner.snapshots.queue
        execute(mariadb_server, db, "INSERT INTO t VALUES (51)")
        wait_for(lambda: any(e["op"] == "c" for e in read_jsonl(out)), 30, "the stream")
        assert r.thread.is_alive()
    errors = [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert any("Access denied" in m and f"{db}.t" in m and f"127.0.0.1:{mariadb_server.port}" in m
               and "still streamed" in m and f"cdc snapshot CONFIG --source db --table {db}.t" in m
               for m in errors), errors
    assert not any("retrying" in rec.getMessage() for rec in caplog.records)
    assert "another-pw" not in caplog.text and password not in caplog.text
    assert not any(e["op"] == "r" for e in read_jsonl(out))


def test_cdc_snapshot_refused_by_the_server_is_not_a_bad_table(mariadb_server, mariadb_database, tmp_path):
    """``cdc snapshot --table`` asks the server first: its refusal is the server's problem (exit 1,
    nothing requested), not the table's or the condition's (exit 2)."""
    from click.testing import CliRunner

    from cdc.cli import main
    db = db_of(mariadb_database)
    execute(mariadb_server, db, "CREATE TABLE t (id int PRIMARY KEY)")
    user, password = _user(mariadb_server, db)
    _config(tmp_path, _dsn(mariadb_server, db, user, "wrong-pw"), [f"{db}.t"])
    result = CliRunner().invoke(main, ["snapshot", str(tmp_path / "pipelines.yaml"), "--table", "t"])
    assert result.exit_code == 1, result.output
    assert "Access denied" in result.output and "nothing was requested" in result.output, result.output
    assert "wrong-pw" not in result.output


def test_max_user_connections_reached_drops_the_copy_with_the_fix(mariadb_server, mariadb_database):
    db = db_of(mariadb_database)
    execute(mariadb_server, db, "CREATE TABLE t (id int PRIMARY KEY)")
    user, password = _user(mariadb_server, db, max_user_connections=1)
    source = make_source(mariadb_server, db, [f"{db}.t"])
    source.settings.update(user=user, password=password)
    with mariadb_server.connect(db, user="root") as _:
        import pymysql
        held = pymysql.connect(host="127.0.0.1", port=mariadb_server.port, user=user, password=password)
        reader = source.snapshot_reader()
        try:
            with pytest.raises(SnapshotInputError, match="max_user_connections.*cdc snapshot CONFIG"):
                reader.read_chunk(f"{db}.t", None, 10, None)
        finally:
            reader.close()
            held.close()


def test_a_copy_that_cannot_connect_for_a_passing_reason_is_retried(mariadb_server, mariadb_database):
    """Connection refused (nothing listens) is a passing state: retried, and the error names the
    server."""
    db = db_of(mariadb_database)
    source = make_source(mariadb_server, db, [f"{db}.t"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    source.settings["port"] = port
    reader = source.snapshot_reader()
    with pytest.raises(SourceConnectionError, match=f"127.0.0.1:{port}"):
        reader.read_chunk(f"{db}.t", None, 10, None)


def test_a_dsn_that_sets_connect_timeout_is_not_a_traceback(mariadb_server, mariadb_database):
    """dsn options go to PyMySQL; connect_timeout given there was passed twice (TypeError)."""
    db = db_of(mariadb_database)
    execute(mariadb_server, db, "CREATE TABLE t (id int PRIMARY KEY)", "INSERT INTO t VALUES (1)")
    dsn = mariadb_server.dsn(db, user="cdc") + "?connect_timeout=5&read_timeout=20&write_timeout=20"
    assert not [p for p in preflight(dsn, [f"{db}.t"]) if p[0] == "error"]
    source = make_source(mariadb_server, db, [f"{db}.t"])
    source.settings.update(connect_timeout=5, read_timeout=20, write_timeout=20)
    reader = source.snapshot_reader()
    try:
        assert len(reader.read_chunk(f"{db}.t", None, 10, None).rows) == 1
    finally:
        reader.close()


@pytest.mark.unit
@pytest.mark.parametrize("value", ["soon", "0", "-1", "nan", "inf"])
def test_a_dsn_timeout_that_is_not_seconds_is_a_config_error(value):
    """Before, PyMySQL failed on it with a TypeError (a string compared with 0) or a ValueError."""
    from pathlib import Path

    from cdc.config import Context
    from cdc.errors import ConfigError
    from cdc.sources.mysql import MySQLSource
    raw = {"sources": {"s": {"type": "mysql", "dsn": f"mysql://cdc:pw@127.0.0.1:3306/db?read_timeout={value}",
                             "tables": ["db.t"], "checkpoint": {"type": "memory"}}},
           "pipelines": {"p": {"source": "s", "sinks": [{"type": "stdout"}]}}}
    with pytest.raises(ConfigError, match=r"sources\.s\.dsn: the dsn option read_timeout is a number of seconds"):
        parse_config(raw, Path("c.yaml"), {})  # as cdc validate reads it
    source = MySQLSource(dsn="mysql://cdc:pw@127.0.0.1:3306/db?read_timeout=2.5&connect_timeout=3", tables=["db.t"],
                         context=Context(config_dir=None, source="s", name="s"))
    assert source.settings["read_timeout"] == 2.5 and source.settings["connect_timeout"] == 3


# ---- servers that accept the connection and never answer (SIGSTOP) -------------------------------


@pytest.fixture(scope="module")
def private_mariadb():
    """A server of this module's own: stopping it must not stall other tests' server."""
    server = MariaDBServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


class Stopped:
    """The server's process stopped (SIGSTOP): its sockets accept and say nothing."""

    def __init__(self, server) -> None:
        self.server = server

    def __enter__(self):
        os.kill(self.server.pid, signal.SIGSTOP)
        return self

    def __exit__(self, *exc):
        os.kill(self.server.pid, signal.SIGCONT)


@pytest.fixture
def short_timeouts(monkeypatch):
    monkeypatch.setattr(mysql_snapshot, "READ_TIMEOUT", 1.5, raising=False)
    monkeypatch.setattr(mysql_snapshot, "WRITE_TIMEOUT", 1.5, raising=False)
    monkeypatch.setattr(mysql_preflight, "READ_TIMEOUT", 1.5, raising=False)
    monkeypatch.setattr(mysql_preflight, "WRITE_TIMEOUT", 1.5, raising=False)


def _table(server, rows: int = 300) -> str:
    db = f"d{uuid.uuid4().hex[:8]}"
    server.create_database(db)
    execute(server, db, "CREATE TABLE t (id int PRIMARY KEY)", f"INSERT INTO t SELECT seq FROM seq_1_to_{rows}")
    return db


def test_snapshot_connection_to_a_stopped_server_times_out_naming_it(private_mariadb, short_timeouts):
    db = _table(private_mariadb)
    reader = make_source(private_mariadb, db, [f"{db}.t"]).snapshot_reader()
    try:
        with Stopped(private_mariadb):
            outcome = within(15, reader.read_chunk, f"{db}.t", None, 10, None)
        error = outcome.get("error")
        assert isinstance(error, SourceConnectionError), outcome
        assert f"127.0.0.1:{private_mariadb.port}" in str(error) and "did not answer" in str(error)
        assert "1.5 s" in str(error), error
        assert outcome["seconds"] < 10
        assert reader.read_chunk(f"{db}.t", None, 1000, None).done  # and after SIGCONT, it reads
    finally:
        reader.close()


def test_snapshot_chunk_on_a_server_stopped_mid_read_times_out(private_mariadb, short_timeouts):
    db = _table(private_mariadb)
    reader = make_source(private_mariadb, db, [f"{db}.t"]).snapshot_reader()
    try:
        reader.read_chunk(f"{db}.t", None, 10, None)  # connected, columns read
        stop = threading.Timer(0.5, os.kill, (private_mariadb.pid, signal.SIGSTOP))
        stop.start()
        try:
            outcome = within(15, reader.read_chunk, f"{db}.t", None, 1000, "SLEEP(0.01) = 0")
        finally:
            stop.join()
            os.kill(private_mariadb.pid, signal.SIGCONT)
        error = outcome.get("error")
        assert isinstance(error, SourceConnectionError), outcome
        assert f"127.0.0.1:{private_mariadb.port}" in str(error) and "did not answer" in str(error)
        assert f"{db}.t" in str(error)
        chunk = reader.read_chunk(f"{db}.t", None, 1000, None)
        assert chunk.done and len(chunk.rows) == 300
    finally:
        reader.close()


def test_preflight_of_a_stopped_server_times_out_naming_it(private_mariadb, short_timeouts):
    db = _table(private_mariadb)
    dsn = private_mariadb.dsn(db, user="cdc")
    with Stopped(private_mariadb):
        outcome = within(15, preflight, dsn, [f"{db}.t"])
    error = outcome.get("error")
    assert isinstance(error, SourceConnectionError), outcome
    assert f"127.0.0.1:{private_mariadb.port}" in str(error) and "did not answer" in str(error)
    assert "1.5 s" in str(error)


def test_cdc_check_of_a_stopped_server_says_so_before_the_command_timeout(private_mariadb, short_timeouts,
                                                                          tmp_path, monkeypatch):
    """What ``cdc check`` prints: before, only the command's deadline (CDC_COMMAND_TIMEOUT) ended it."""
    from click.testing import CliRunner

    from cdc.cli import main
    db = _table(private_mariadb)
    _config(tmp_path, private_mariadb.dsn(db, user="cdc"), [f"{db}.t"])
    monkeypatch.setenv("CDC_COMMAND_TIMEOUT", "20")
    with Stopped(private_mariadb):
        started = time.monotonic()
        result = CliRunner().invoke(main, ["check", str(tmp_path / "pipelines.yaml")])
        seconds = time.monotonic() - started
    assert result.exit_code == 1, result.output
    assert seconds < 15 and "no answer within 20 s" not in result.output, result.output
    assert f"ERROR source db (mysql): source db: the server 127.0.0.1:{private_mariadb.port} did not answer " \
           f"within 1.5 s (read_timeout) while connecting" in result.output, result.output
    assert ":cdc@" not in result.output


def test_checkpoint_set_check_of_a_stopped_server_times_out(private_mariadb, short_timeouts):
    """``cdc checkpoint set`` asks the server whether the position exists."""
    db = _table(private_mariadb)
    source = make_source(private_mariadb, db, [f"{db}.t"])
    with Stopped(private_mariadb):
        outcome = within(15, source.check_position, {"gtid": "0-1-1"})
    error = outcome.get("error")
    assert isinstance(error, SourceConnectionError), outcome  # not "--position refused"
    assert f"127.0.0.1:{private_mariadb.port}" in str(error) and "did not answer" in str(error)


def test_a_chunk_slower_than_read_timeout_on_a_server_that_answers_drops_the_copy(mariadb_server,
                                                                                   mariadb_database, short_timeouts):
    """Not a hung server but a slow query (here a --where that sleeps): reading it again would
    time out again, for ever; the copy is dropped with the fix, and the query is killed."""
    db = db_of(mariadb_database)
    execute(mariadb_server, db, "CREATE TABLE t (id int PRIMARY KEY)", "INSERT INTO t SELECT seq FROM seq_1_to_50")
    reader = make_source(mariadb_server, db, [f"{db}.t"]).snapshot_reader()
    try:
        with pytest.raises(SnapshotInputError, match=r"within 1.5 s \(read_timeout\).*snapshot_chunk_size.*"
                                                     r"read_timeout"):
            reader.read_chunk(f"{db}.t", None, 10, "SLEEP(2) = 0")
    finally:
        reader.close()
    with mariadb_server.connect() as conn, conn.cursor() as cur:
        time.sleep(0.5)
        cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE '%SLEEP(2) = 0%'"
                    " AND ID <> CONNECTION_ID()")
        assert cur.fetchone()[0] == 0  # killed, not left running


def test_opening_the_stream_on_a_stopped_server_names_it(private_mariadb):
    """``cdc run``'s checks before streaming (the library's metadata connection)."""
    db = _table(private_mariadb)
    source = make_source(private_mariadb, db, [f"{db}.t"])
    source.settings["read_timeout"] = 2
    with Stopped(private_mariadb):
        outcome = within(15, source.open, None)
    source.close()
    error = outcome.get("error")
    assert isinstance(error, SourceConnectionError), outcome
    assert f"127.0.0.1:{private_mariadb.port}" in str(error) and "did not answer within 2 s" in str(error)


def test_closing_the_reader_of_a_stopped_server_takes_two_seconds_whatever_the_dsn_says(private_mariadb):
    """Found by review: ending the binlog dump at close was bounded by 2 s only when the DSN's
    read_timeout and write_timeout were equal (PyMySQL sets the socket's timeout from them at
    each read and write): with ?write_timeout=10 a stop took the full read_timeout, 30 s."""
    db = _table(private_mariadb)
    source = make_source(private_mariadb, db, [f"{db}.t"])
    source.settings["write_timeout"] = 10
    source.open(None)
    with Stopped(private_mariadb):
        outcome = within(20, source.close)
    assert "error" not in outcome, outcome
    assert outcome["seconds"] < 5, outcome


def test_the_read_elsewhere_check_of_checkpoint_set_on_a_stopped_server_goes_on(private_mariadb):
    """Found by review: the check that the source is not read elsewhere connected with no
    read_timeout: on a stopped server `cdc checkpoint set` waited for CDC_COMMAND_TIMEOUT (60 s).
    An unreachable server says nothing (the lock decides alone): within the 10 s default."""
    db = _table(private_mariadb)
    source = make_source(private_mariadb, db, [f"{db}.t"])
    with Stopped(private_mariadb):
        outcome = within(30, source.reader_elsewhere, print)
    assert outcome.get("value", "missing") is None and outcome["seconds"] < 25, outcome


def test_the_read_elsewhere_check_keeps_the_dsn_connect_timeout(mariadb_server, mariadb_database):
    """Found by review: `?connect_timeout=3` in the DSN made `cdc checkpoint set` and `reset`
    fail with a TypeError (connect_timeout given twice)."""
    db = db_of(mariadb_database)
    execute(mariadb_server, db, "CREATE TABLE t (id int PRIMARY KEY)")
    source = make_source(mariadb_server, db, [f"{db}.t"])
    source.settings["connect_timeout"] = 3
    assert source.reader_elsewhere(print) is None  # nothing reads its binlog
