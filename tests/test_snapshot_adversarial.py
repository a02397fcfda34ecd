"""Snapshots driven the way a new user would, with awkward input: conditions that are not
one condition, cancels of copies that are not there, chunk settings below 1, requests
made in the same second.  PostgreSQL and MariaDB, against real servers."""

from __future__ import annotations

import json
import logging

import pytest
import yaml
from snapshot_helpers import read_complete
from test_snapshot_incremental import cdc
from test_snapshot_mysql import Running as MySQLRunning
from test_snapshot_mysql import _config as mysql_config
from test_snapshot_postgres import wait_for

from cdc.config import parse_config
from cdc.errors import ConfigError
from cdc.snapshot import requests
from cdc.snapshot.where import condition_problem

from mysql_helpers import db_of, execute
from pgutil import Running, config, file_pipeline, sql

# ``(k) > (last) AND (b > 3) OR (true)``: each chunk would start from the first row again
ESCAPING = "b > 3) OR (true"


def test_postgres_where_that_closes_its_parentheses_is_refused(pg_database, tmp_path, caplog):
    sql(pg_database, "CREATE TABLE comp (a text, b int, PRIMARY KEY (b, a))",
        "INSERT INTO comp SELECT 'x' || (g % 3), g FROM generate_series(1, 30) g")
    cfg = config(tmp_path, pg_database, ["public.comp"], {"all": file_pipeline()}, snapshot_chunk_size=7)
    path = str(tmp_path / "pipelines.yaml")
    # a request that did not come through the command (written by hand) is dropped by the pipeline
    # (before any CliRunner call: it sets up the logging caplog reads)
    caplog.set_level(logging.INFO)
    with Running(cfg) as r:
        snapshot_id = requests.submit(cfg.state_dir, "db", "public.comp", ESCAPING)
        wait_for(lambda: f"{snapshot_id}:public.comp" in r.runner.snapshots.progress and r.runner.snapshots.finished,
                 30, "the request to be dropped")
        assert r.runner.snapshots.rows_total == 0
        assert "closes a parenthesis" in caplog.text, caplog.text
        sql(pg_database, "INSERT INTO comp VALUES ('new', 100)")
        wait_for(lambda: any(e["op"] == "c" for e in read_complete(tmp_path / "out/all.jsonl")), 30, "streaming")
    code, text = cdc("snapshot", path, "--source", "db", "--table", "comp", "--where", ESCAPING)
    assert code == 2 and "closes a parenthesis" in text and "public.comp" in text, text
    # quotes, quoted names and dollar quotes holding parentheses are one condition
    code, text = cdc("snapshot", path, "--source", "db", "--table", "comp",
                     "--where", "a <> ')' AND \"a\" <> $$(($$ AND a <> E'\\')'")
    assert code == 0, text


def test_mysql_where_that_closes_its_parentheses_is_refused(mariadb_server, mariadb_database, tmp_path, caplog):
    db = db_of(mariadb_database)
    execute(mariadb_server, db, "CREATE TABLE comp (a varchar(10), b int, PRIMARY KEY (b, a))",
            "INSERT INTO comp SELECT concat('x', seq % 3), seq FROM seq_1_to_30")
    cfg = mysql_config(tmp_path, mariadb_server, db, [f"{db}.comp"], snapshot="never", snapshot_chunk_size=7)
    path = str(tmp_path / "pipelines.yaml")
    caplog.set_level(logging.INFO)
    with MySQLRunning(cfg) as r:
        snapshot_id = requests.submit(cfg.state_dir, "db", f"{db}.comp", ESCAPING)
        wait_for(lambda: f"{snapshot_id}:{db}.comp" in r.runner.snapshots.progress and r.runner.snapshots.finished,
                 30, "the request to be dropped")
        assert r.runner.snapshots.rows_total == 0
        assert "closes a parenthesis" in caplog.text, caplog.text
    code, text = cdc("snapshot", path, "--source", "db", "--table", "comp", "--where", ESCAPING)
    assert code == 2 and "closes a parenthesis" in text and f"{db}.comp" in text, text
    code, text = cdc("snapshot", path, "--source", "db", "--table", "comp",
                     "--where", "a <> ')' AND `a` <> '\\')' AND a <> \"(\"")
    assert code == 0, text


@pytest.mark.unit
@pytest.mark.parametrize("where, mysql, problem", [
    ("a > 1", False, None),
    ("(a > 1) OR (b < 2)", False, None),
    ("a = 'it''s (' AND \"we(ird\" = 1", False, None),
    ("a = E'\\')'", False, None),
    ("a = $x$ ) $x$", False, None),
    ("a = '\\' OR b) OR (c", False, "closes"),    # PostgreSQL: a backslash is a character in '...'
    ("a = '\\')'", True, None),             # MariaDB: it escapes
    ("`we)ird` = 1", True, None),
    ("a > 1) OR (true", False, "closes"),
    ("a > 1) OR (true", True, "closes"),
    ("(a > 1", False, "not closed"),
    ("a = 'x", True, "not closed"),
    ("true; DROP TABLE t", False, "';'"),
    ("a > 1 -- )", False, "comment"),
    ("a > 1 # )", True, "comment"),
    ("a > 1 /* ) */", True, "comment"),
])
def test_condition_problem(where, mysql, problem):
    found = condition_problem(where, mysql)
    assert (found is None) if problem is None else (found is not None and problem in found), found


def test_cancel_of_an_unknown_or_finished_copy_is_an_error(pg_database, tmp_path):
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY)", "INSERT INTO t SELECT generate_series(1, 20)")
    cfg = config(tmp_path, pg_database, ["public.t"], {"all": file_pipeline()}, snapshot_chunk_size=7)
    path = str(tmp_path / "pipelines.yaml")
    code, text = cdc("snapshot", path, "--source", "db", "--cancel", "20260101000000-abcdef")
    assert code == 2 and "no snapshot 20260101000000-abcdef" in text, text
    with Running(cfg) as r:
        code, text = cdc("snapshot", path, "--source", "db", "--table", "t")
        assert code == 0, text
        snapshot_id = text.split("snapshot ")[1].split(" ")[0]
        wait_for(lambda: r.runner.snapshots.rows_total == 20 and r.runner.snapshots.finished, 30, "the copy")
        wait_for(lambda: "no snapshot queued" in cdc("snapshot", path, "--source", "db", "--list")[1], 10,
                 "--list to show it finished")
        code, text = cdc("snapshot", path, "--source", "db", "--cancel", snapshot_id)
        assert code == 2 and f"no snapshot {snapshot_id}" in text, text
        # a request not yet taken by the pipeline can be cancelled
        queued = requests.submit(cfg.state_dir, "db", "public.t")
        code, text = cdc("snapshot", path, "--source", "db", "--cancel", queued)
        assert code == 0, text


@pytest.mark.unit
@pytest.mark.parametrize("key, value", [("snapshot_chunk_size", 0), ("snapshot_chunk_size", -5),
                                        ("snapshot_parallelism", 0), ("snapshot_parallelism", -1)])
@pytest.mark.parametrize("source_type", ["postgres", "mysql"])
def test_chunk_settings_below_one_are_config_errors(tmp_path, source_type, key, value):
    dsn = "postgresql://u@127.0.0.1/db" if source_type == "postgres" else "mysql://u@127.0.0.1/db"
    raw = {"sources": {"s": {"type": source_type, "dsn": dsn, "tables": ["db.t"], key: value,
                             "checkpoint": {"type": "file", "path": "state/s.json"}}},
           "pipelines": {"p": {"source": "s", "sinks": [{"type": "file", "path": "out.jsonl"}]}}}
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, path, {})
    assert f"sources.s.{key}: must be at least 1 (got {value})" in str(caught.value), str(caught.value)


@pytest.mark.unit
def test_requests_of_the_same_second_are_taken_in_the_order_made(tmp_path):
    made = [requests.submit(tmp_path, "db", f"public.t{i}") for i in range(30)]
    taken, _ = requests.take(tmp_path, "db")
    assert [r["id"] for r in taken] == made


def test_status_does_not_call_a_table_copied_when_its_copy_was_refused_or_cancelled(pg_database, tmp_path):
    """A table without a primary key is streamed but not copied (docs/snapshots.md); an initial
    copy can be cancelled.  Neither is "done": ``cdc status`` says what happened, also from the
    checkpoint after a restart."""
    sql(pg_database, "CREATE TABLE a (id int PRIMARY KEY)", "INSERT INTO a SELECT generate_series(1, 20)",
        "CREATE TABLE nokey (n int)", "ALTER TABLE nokey REPLICA IDENTITY FULL", "INSERT INTO nokey VALUES (1)",
        "CREATE TABLE slow (id int PRIMARY KEY)", "INSERT INTO slow SELECT generate_series(1, 200000)")
    cfg = config(tmp_path, pg_database, ["public.a", "public.nokey", "public.slow"], {"all": file_pipeline()},
                 snapshot="initial", snapshot_chunk_size=100, snapshot_parallelism=1)
    path = str(tmp_path / "pipelines.yaml")
    with Running(cfg) as r:
        wait_for(lambda: r.runner.snapshots.rows_total > 20, 60, "the copy of slow to start")
        requests.cancel(cfg.state_dir, "db", "initial")
        wait_for(lambda: r.runner.snapshots.finished, 30, "the cancel")
        sql(pg_database, "INSERT INTO a VALUES (100)")
        wait_for(lambda: r.runner.saved_position and r.runner.saved_position["snapshot"]["queue"] == [], 30,
                 "the checkpoint")
    code, text = cdc("status", path, "--json")
    assert code == 0, text
    states = {s["table"]: s for s in json.loads(text)[0]["snapshots"]}
    assert states["public.a"]["state"] == "done", states
    assert states["public.nokey"]["state"] == "not copied" and "no primary key" in states["public.nokey"]["error"], states
    assert states["public.slow"]["state"] == "not copied" and "cancelled" in states["public.slow"]["error"], states
    code, text = cdc("status", path)
    assert "not copied" in text, text
    # a restart keeps the record and copies neither again
    with Running(cfg) as r:
        assert r.runner.snapshots.finished
        assert r.runner.snapshots.state["skipped"].keys() == {"public.nokey", "public.slow"}


def test_a_stopped_copy_is_not_shown_as_running(pg_database, tmp_path):
    """``cdc run`` stopped mid-copy (SIGTERM) leaves its status file behind: ``cdc status``
    and ``cdc snapshot --list`` then show the copy as waiting for the next start (from the
    checkpoint), not as copying."""
    import os
    import signal
    import subprocess
    import sys

    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY, pad text)",
        "INSERT INTO t SELECT g, repeat('x', 50) FROM generate_series(1, 300000) g")
    config(tmp_path, pg_database, ["public.t"], {"all": file_pipeline()}, snapshot="initial",
           snapshot_chunk_size=100, snapshot_parallelism=1)
    path = str(tmp_path / "pipelines.yaml")
    checkpoint = tmp_path / "state/db.json"
    with open(tmp_path / "run.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cdc", "run", path], stdout=log, stderr=log,
                                cwd=tmp_path, env=dict(os.environ))
        try:
            def copying() -> bool:
                queue = json.loads(checkpoint.read_text())["position"]["snapshot"]["queue"]
                return bool(queue and queue[0]["after"]) and (tmp_path / "state/db.status.json").exists()
            wait_for(lambda: checkpoint.exists() and copying(), 60, "the copy to be under way")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    assert json.loads(checkpoint.read_text())["position"]["snapshot"]["queue"], "the copy finished: make it longer"
    code, text = cdc("status", path, "--json")
    assert code == 0, text
    row = json.loads(text)[0]
    assert not row["running"] and [s["state"] for s in row["snapshots"]] == ["to resume"], row
    code, text = cdc("snapshot", path, "--source", "db", "--list")
    assert code == 0 and "public.t  to resume" in text and "running" not in text, text


def test_mysql_keys_of_every_ordering_are_copied_whole(mariadb_server, mariadb_database, tmp_path):
    """Keyset pagination compares the last key read with the table's key: varbinary, bit, enum,
    set and float keys were compared as the JSON text of the event (base64, '0101', the
    member's name, 6 digits) and rows were skipped or read again.  Every row, once; and a float
    is its exact value, as the binlog gives it."""
    db = db_of(mariadb_database)
    tables = {"kbin": ("varbinary(16)", "unhex(lpad(hex(seq * 7919 % 1000), 6, '0'))"),
              "kbit": ("bit(12)", "seq * 37 % 4096"),
              "kenum": ("enum('b','a','c')", "elt(seq % 3 + 1, 'b', 'a', 'c')"),
              "kset": ("set('z','y','x')", "elt(seq % 4 + 1, '', 'z', 'y,x', 'x')"),
              "kflt": ("float", "seq / 3"),
              "kdbl": ("double", "seq / 7e0")}
    statements = []
    for name, (column, value) in tables.items():
        key = "k" if name in ("kbin", "kbit", "kflt", "kdbl") else "k, n"
        statements += [f"CREATE TABLE {name} (k {column}, n int, PRIMARY KEY ({key}))",
                       f"INSERT INTO {name} SELECT {value}, seq FROM seq_1_to_60"]
    execute(mariadb_server, db, *statements)
    cfg = mysql_config(tmp_path, mariadb_server, db, [f"{db}.{t}" for t in tables], snapshot="initial",
                       snapshot_chunk_size=7)
    with MySQLRunning(cfg) as r:
        wait_for(lambda: r.runner.snapshots.finished, 60, "the copy")
        execute(mariadb_server, db, "UPDATE kflt SET n = -1 WHERE n = 1")
        wait_for(lambda: any(e["op"] == "u" for e in read_complete(tmp_path / "out/all.jsonl")), 30, "the update")
    events = read_complete(tmp_path / "out/all.jsonl")
    for name in tables:
        reads = sorted(e["after"]["n"] for e in events if e["op"] == "r" and e["source"]["table"] == name)
        assert reads == list(range(1, 61)), (name, reads)
    update = next(e for e in events if e["op"] == "u")
    read = next(e for e in events if e["op"] == "r" and e["source"]["table"] == "kflt" and e["after"]["n"] == 1)
    assert read["after"] == update["before"], (read["after"], update["before"])


def test_postgres_keys_of_every_type_are_copied_whole(pg_database, tmp_path, caplog):
    """The last key read goes back to the server as a literal: a bytea key (base64 in the
    event) was compared as text and rows were skipped, a real key as numeric and rows were
    read twice, an int[] key as smallint[] and the copy failed."""
    tables = {"kbytea": ("bytea", "decode(lpad(to_hex(g * 7919 % 1000), 6, '0'), 'hex')"),
              "kreal": ("real", "g / 3.0"),
              "karr": ("int[]", "ARRAY[g % 5, g]"),
              "kbit": ("bit(12)", "(g * 37 % 4096)::bit(12)"),
              "kchar": ("char(5)", "'a' || g")}
    statements = []
    for name, (column, value) in tables.items():
        statements += [f"CREATE TABLE {name} (k {column} PRIMARY KEY, n int)",
                       f"INSERT INTO {name} SELECT {value}, g FROM generate_series(1, 60) g"]
    sql(pg_database, *statements)
    cfg = config(tmp_path, pg_database, [f"public.{t}" for t in tables], {"all": file_pipeline()},
                 snapshot="initial", snapshot_chunk_size=7)
    caplog.set_level(logging.INFO)
    with Running(cfg) as r:
        wait_for(lambda: r.runner.snapshots.finished, 60, "the copy")
    events = read_complete(tmp_path / "out/all.jsonl")
    for name in tables:
        reads = sorted(e["after"]["n"] for e in events if e["op"] == "r" and e["source"]["table"] == name)
        assert reads == list(range(1, 61)), (name, reads, caplog.text[-2000:])


def test_postgres_table_that_does_not_exist_is_a_clear_error(pg_database, tmp_path, caplog):
    """A table in ``tables:`` that is not in the database (dropped since the start): ``cdc
    snapshot`` says so (exit 2, no traceback), and a request for it drops the copy, not the
    pipeline."""
    sql(pg_database, "CREATE TABLE a (id int PRIMARY KEY)", "CREATE TABLE gone (id int PRIMARY KEY)")
    cfg = config(tmp_path, pg_database, ["public.a", "public.gone"], {"all": file_pipeline()})
    caplog.set_level(logging.INFO)
    with Running(cfg) as r:
        sql(pg_database, "DROP TABLE gone")
        snapshot_id = requests.submit(cfg.state_dir, "db", "public.gone")
        wait_for(lambda: f"{snapshot_id}:public.gone" in r.runner.snapshots.progress and r.runner.snapshots.finished,
                 30, "the request to be dropped")
        assert 'relation "public.gone" does not exist' in caplog.text, caplog.text
        sql(pg_database, "INSERT INTO a VALUES (1)")
        wait_for(lambda: any(e["op"] == "c" for e in read_complete(tmp_path / "out/all.jsonl")), 30, "streaming")
    code, text = cdc("snapshot", str(tmp_path / "pipelines.yaml"), "--source", "db", "--table", "gone")
    assert code == 2 and 'relation "public.gone" does not exist' in text and "Traceback" not in text, text
