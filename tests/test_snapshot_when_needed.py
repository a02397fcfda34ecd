"""``snapshot: when_needed`` (issue 9), against real servers: a stored checkpoint whose log
position is gone (PostgreSQL: the slot was dropped; MariaDB: the binlog was purged) starts
a full re-snapshot with one WARNING, then streams; every other mode keeps the clear stop."""

from __future__ import annotations

import json
import logging
import random
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
import yaml
from snapshot_helpers import read_complete

from cdc.cli.check import check_config
from cdc.config import parse_config
from cdc.engine import SourceRunner

from mysql_helpers import execute
from pgutil import config as pg_config
from pgutil import sql
from servers import MariaDBServer, PostgresServer

OUT = "out/all.jsonl"


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


class Run:
    """A SourceRunner on a thread that keeps what ``run()`` returned or raised."""

    def __init__(self, cfg) -> None:
        self.runner = SourceRunner(cfg, "db", grace_period=10.0)
        self.code: int | None = None
        self.raised: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.code = self.runner.run()
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            self.raised = exc

    def __enter__(self) -> Run:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.runner.request_stop()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the runner did not stop"

    def ended(self, timeout: float = 30) -> str:
        """Wait for the runner to stop by itself; its error."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "cdc runs on"
        return str(self.raised or self.runner.error or "")


def _position(tmp_path) -> dict:
    return json.loads((tmp_path / "state/db.json").read_text())["position"]


def _ops(events: list[dict]) -> list[tuple[str, int]]:
    return [(e["op"], (e["after"] or e["before"])["id"]) for e in events]


def _copied(tmp_path) -> bool:
    position = (tmp_path / "state/db.json").exists() and _position(tmp_path)
    return bool(position) and not position["snapshot"]["queue"]


# ---- PostgreSQL: the slot was dropped while cdc was stopped ------------------------------------

def _pg_first_run(tmp_path, dsn: str, mode: str) -> str:
    """Rows 1..40 exist; run once (copy, then a live insert of 41); stop. The slot's name."""
    sql(dsn, "CREATE TABLE t (id int PRIMARY KEY, v text)",
        "INSERT INTO t SELECT g, 'old' FROM generate_series(1, 40) g")
    cfg = pg_config(tmp_path, dsn, ["public.t"], {"all": {"source": "db", "sinks": [{"type": "file", "path": OUT}]}},
                    snapshot=mode, snapshot_chunk_size=16)
    out = tmp_path / OUT
    copied = 0 if mode == "never" else 40
    with Run(cfg) as run:
        wait_for(lambda: _copied(tmp_path), 30, "the initial copy")
        if mode == "initial_only":
            assert not run.ended(), "initial_only stops by itself, without an error"
        else:
            sql(dsn, "INSERT INTO t VALUES (41, 'live')")
            wait_for(lambda: len(read_complete(out)) >= copied + 1, 30, "the live insert")
        slot = run.runner.source.slot
    return slot


def _pg_while_stopped(dsn: str, slot: str) -> None:
    sql(dsn, "INSERT INTO t VALUES (42, 'in the gap')", "UPDATE t SET v = 'changed in the gap' WHERE id = 7",
        "DELETE FROM t WHERE id = 3")
    sql(dsn, "SELECT pg_drop_replication_slot(%s)", params=(slot,))


def test_postgres_slot_dropped_while_stopped_re_snapshots_then_streams(pg_database, tmp_path, caplog):
    slot = _pg_first_run(tmp_path, pg_database, "when_needed")
    lost = _position(tmp_path)["lsn"]
    _pg_while_stopped(pg_database, slot)
    cfg = pg_config(tmp_path, pg_database, ["public.t"],
                    {"all": {"source": "db", "sinks": [{"type": "file", "path": OUT}]}},
                    snapshot="when_needed", snapshot_chunk_size=16)
    # what `cdc check` says first: a warning, not an error, with when_needed
    problems = cfg.sources["db"].build().preflight(_position(tmp_path), None)
    about_slot = [(level, text) for level, text in problems if f"slot {slot}" in text]
    assert [level for level, _ in about_slot] == ["warning"], problems
    assert "when_needed" in about_slot[0][1] and "snapshot" in about_slot[0][1]
    findings = check_config(cfg)  # `cdc check` exits 0 on warnings
    assert "error" not in {f.level for f in findings}, findings

    out = tmp_path / OUT
    before = len(read_complete(out))
    caplog.set_level(logging.WARNING)
    with Run(cfg) as run:
        wait_for(lambda: run.runner.source_connected or not run.thread.is_alive(), 30, "the source")
        assert run.thread.is_alive(), run.ended()
        wait_for(lambda: _copied(tmp_path) and _position(tmp_path)["lsn"] != lost, 60, "the re-snapshot")
        sql(pg_database, "INSERT INTO t VALUES (43, 'live after')", "UPDATE t SET v = 'live' WHERE id = 1")
        wait_for(lambda: ("u", 1) in _ops(read_complete(out)[before:]), 30, "the live changes")
    second = read_complete(out)[before:]
    rows = {r[0]: r[1] for r in sql(pg_database, "SELECT id, v FROM t WHERE id <> 43")}
    reads = [e for e in second if e["op"] == "r"]
    # every row of the table now, as it is now, as op "r"; the rows deleted in the gap are not
    assert sorted((e["after"]["id"], e["after"]["v"]) for e in reads if e["after"]["id"] != 1) == \
        sorted((k, v) for k, v in rows.items() if k != 1)
    assert {e["after"]["id"] for e in reads} == set(rows)
    assert reads[-1]["source"]["snapshot"] == "last"
    # then live changes, after the copy of their rows
    assert ("c", 43) in _ops(second) and _ops(second).index(("u", 1)) > _ops(second).index(("r", 1))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "when_needed" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert lost in warnings[0] and f"slot {slot}" in warnings[0] and "public.t" in warnings[0]
    assert sql(pg_database, "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", params=(slot,))
    assert _position(tmp_path)["lsn"] != lost


def _drop_slot_under_cdc(dsn: str, slot: str) -> None:
    """What an operator (or a failover tool) does: terminate the walsender, drop the slot."""
    deadline = time.time() + 30
    while True:
        sql(dsn, "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                 " WHERE slot_name = %s AND active", params=(slot,))
        try:
            sql(dsn, "SELECT pg_drop_replication_slot(%s)", params=(slot,))
            return
        except Exception:  # still active: cdc reconnected in between
            assert time.time() < deadline, "could not drop the slot"
            time.sleep(0.05)


def test_postgres_slot_dropped_while_running_re_snapshots_then_streams(pg_database, tmp_path, caplog):
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY, v text)",
        "INSERT INTO t SELECT g, 'old' FROM generate_series(1, 40) g")
    cfg = pg_config(tmp_path, pg_database, ["public.t"],
                    {"all": {"source": "db", "sinks": [{"type": "file", "path": OUT}]}},
                    snapshot="when_needed", snapshot_chunk_size=16)
    out = tmp_path / OUT
    caplog.set_level(logging.WARNING)
    with Run(cfg) as run:
        wait_for(lambda: _copied(tmp_path), 30, "the initial copy")
        sql(pg_database, "INSERT INTO t VALUES (41, 'live')")
        wait_for(lambda: ("c", 41) in _ops(read_complete(out)), 30, "the live insert")
        slot = run.runner.source.slot
        dropped_at = time.time()
        _drop_slot_under_cdc(pg_database, slot)
        sql(pg_database, "UPDATE t SET v = 'changed after the drop' WHERE id = 7")
        wait_for(lambda: _ops(read_complete(out)).count(("r", 40)) == 2 and _copied(tmp_path)
                 or not run.thread.is_alive(), 60, "the second copy")
        assert run.thread.is_alive(), run.ended()
        sql(pg_database, "INSERT INTO t VALUES (43, 'live after')")
        wait_for(lambda: ("c", 43) in _ops(read_complete(out)), 30, "the live change after the copy")
        progress = run.runner.snapshots.figures()["tables"]  # cdc status, the progress bar
        assert [(p["table"], p["rows"]) for p in progress] == [("public.t", 41)], progress
        assert progress[0]["started"] >= dropped_at and progress[0]["finished"] >= progress[0]["started"]
    events = read_complete(out)
    second = events[max(i for i, e in enumerate(events) if e["op"] == "c" and e["after"]["id"] == 41) + 1:]
    reads = {e["after"]["id"]: e["after"]["v"] for e in second if e["op"] == "r"}
    assert reads == {k: v for k, v in sql(pg_database, "SELECT id, v FROM t WHERE id <> 43")}
    assert reads[7] == "changed after the drop"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "when_needed" in r.getMessage()]
    assert len(warnings) == 1 and f"slot {slot}" in warnings[0], warnings
    assert sql(pg_database, "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", params=(slot,))


@pytest.mark.parametrize("mode", ["initial", "never", "initial_only"])
def test_postgres_slot_dropped_while_stopped_stops_other_modes(pg_database, tmp_path, mode):
    slot = _pg_first_run(tmp_path, pg_database, mode)
    lost = _position(tmp_path)["lsn"]
    _pg_while_stopped(pg_database, slot)
    cfg = pg_config(tmp_path, pg_database, ["public.t"],
                    {"all": {"source": "db", "sinks": [{"type": "file", "path": OUT}]}},
                    snapshot=mode, snapshot_chunk_size=16)
    problems = cfg.sources["db"].build().preflight(_position(tmp_path), None)
    assert [level for level, text in problems if f"slot {slot}" in text] == ["error"], problems
    before = len(read_complete(tmp_path / OUT))
    with Run(cfg) as run:
        error = run.ended()
    assert f"slot {slot}" in error and "does not exist" in error and lost in error, error
    assert "cdc checkpoint reset" in error
    assert read_complete(tmp_path / OUT)[before:] == []
    assert not sql(pg_database, "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", params=(slot,)), \
        "the slot was re-created"
    assert _position(tmp_path)["lsn"] == lost


# ---- MariaDB: the binlog was purged past the saved position while cdc was stopped --------------


@pytest.fixture(scope="module")
def purgeable_mariadb():
    """A MariaDB of this module's own: purging the shared server's binlogs would change
    what other tests see."""
    with MariaDBServer() as server:
        yield server


def _maria_config(tmp_path, server, db: str, mode: str):
    raw = {"sources": {"db": {"type": "mysql", "dsn": server.dsn(db, user="cdc"), "tables": [f"{db}.items"],
                              "server_id": random.randint(5000, 90000), "snapshot": mode,
                              "snapshot_chunk_size": 16,
                              "checkpoint": {"type": "file", "path": "state/db.json"},
                              "checkpoint_interval": 0.0}},
           "pipelines": {"all": {"source": "db", "sinks": [{"type": "file", "path": OUT}]}}}
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump(raw))
    return parse_config(raw, path, {})


def _maria_first_run_then_purge(tmp_path, server, db: str, mode: str) -> dict:
    """Rows 1..40; run once (copy, a live insert of 41); stop; write more, then purge
    every binlog before a new one.  The checkpoint that cannot be resumed."""
    execute(server, db, "CREATE TABLE items (id bigint PRIMARY KEY, v varchar(40))",
            "INSERT INTO items SELECT seq, 'old' FROM seq_1_to_40")
    out = tmp_path / OUT
    with Run(_maria_config(tmp_path, server, db, mode)) as run:
        wait_for(lambda: run.runner.source_connected or not run.thread.is_alive(), 30, "the source")
        wait_for(lambda: _copied(tmp_path), 60, "the initial copy")
        execute(server, db, "INSERT INTO items VALUES (41, 'live')")
        wait_for(lambda: ("c", 41) in _ops(read_complete(out)), 30, "the live insert")
        wait_for(lambda: _position(tmp_path) == run.runner.tracker.position, 30, "the checkpoint")
    saved = _position(tmp_path)
    execute(server, db, "INSERT INTO items VALUES (42, 'in the gap')",
            "UPDATE items SET v = 'changed in the gap' WHERE id = 7", "DELETE FROM items WHERE id = 3",
            "FLUSH BINARY LOGS")
    with server.connect() as conn, conn.cursor() as cur:
        cur.execute("SHOW BINARY LOGS")
        current = cur.fetchall()[-1][0]

        def purged() -> bool:  # a file still open by the stopped reader's dump thread is kept
            cur.execute(f"PURGE BINARY LOGS TO '{current}'")
            cur.execute("SHOW BINARY LOGS")
            return cur.fetchall()[0][0] == current
        wait_for(purged, 30, "the purge")
    return saved


def test_mariadb_binlog_purged_while_stopped_re_snapshots_then_streams(purgeable_mariadb, tmp_path, caplog):
    mariadb_server = purgeable_mariadb
    db = f"wn_{uuid.uuid4().hex[:10]}"
    mariadb_server.create_database(db)
    lost = _maria_first_run_then_purge(tmp_path, mariadb_server, db, "when_needed")
    cfg = _maria_config(tmp_path, mariadb_server, db, "when_needed")
    # what `cdc check` says first: a warning, not an error, with when_needed
    problems = cfg.sources["db"].build().preflight(_position(tmp_path), 60)
    about_gtid = [(level, text) for level, text in problems if lost["gtid"] in text]
    assert [level for level, _ in about_gtid] == ["warning"], problems
    assert "purged" in about_gtid[0][1] and "when_needed" in about_gtid[0][1]
    out = tmp_path / OUT
    before = len(read_complete(out))
    caplog.set_level(logging.WARNING)
    with Run(cfg) as run:
        wait_for(lambda: (_copied(tmp_path) and _position(tmp_path)["gtid"] != lost["gtid"])
                 or not run.thread.is_alive(), 60, "the re-snapshot")
        assert run.thread.is_alive(), run.ended()
        execute(mariadb_server, db, "INSERT INTO items VALUES (43, 'live after')",
                "UPDATE items SET v = 'live' WHERE id = 1")
        wait_for(lambda: ("u", 1) in _ops(read_complete(out)[before:]), 30, "the live changes")
    second = read_complete(out)[before:]
    with mariadb_server.connect(db) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, v FROM items WHERE id NOT IN (1, 43)")
        rows = {int(k): v for k, v in cur.fetchall()}
    reads = [e for e in second if e["op"] == "r"]
    assert {e["after"]["id"]: e["after"]["v"] for e in reads if e["after"]["id"] != 1} == rows
    assert 1 in {e["after"]["id"] for e in reads} and 3 not in {e["after"]["id"] for e in reads}
    assert reads[-1]["source"]["snapshot"] == "last"
    assert ("c", 43) in _ops(second) and _ops(second).index(("u", 1)) > _ops(second).index(("r", 1))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "when_needed" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert lost["gtid"] in warnings[0] and f"{db}.items" in warnings[0]


def test_mariadb_binlog_purged_while_stopped_stops_with_initial(purgeable_mariadb, tmp_path):
    mariadb_server = purgeable_mariadb
    db = f"wn_{uuid.uuid4().hex[:10]}"
    mariadb_server.create_database(db)
    lost = _maria_first_run_then_purge(tmp_path, mariadb_server, db, "initial")
    cfg = _maria_config(tmp_path, mariadb_server, db, "initial")
    problems = cfg.sources["db"].build().preflight(_position(tmp_path), 60)
    assert [level for level, text in problems if lost["gtid"] in text] == ["error"], problems
    before = len(read_complete(tmp_path / OUT))
    with Run(cfg) as run:
        error = run.ended()
    assert "cannot resume" in error and lost["gtid"] in error, error
    assert read_complete(tmp_path / OUT)[before:] == []
    assert _position(tmp_path) == lost


def test_postgres_slot_ahead_of_the_checkpoint_re_snapshots(pg_database, tmp_path, caplog):
    """The slot confirmed past the checkpoint (another reader, or an old copy of the
    checkpoint): the changes in between are lost to cdc, so when_needed copies again."""
    slot = _pg_first_run(tmp_path, pg_database, "when_needed")
    lost = _position(tmp_path)["lsn"]
    sql(pg_database, "UPDATE t SET v = 'skipped by the slot' WHERE id = 9")
    sql(pg_database, "SELECT pg_replication_slot_advance(%s, pg_current_wal_lsn())", params=(slot,))
    cfg = pg_config(tmp_path, pg_database, ["public.t"],
                    {"all": {"source": "db", "sinks": [{"type": "file", "path": OUT}]}},
                    snapshot="when_needed", snapshot_chunk_size=16)
    out = tmp_path / OUT
    before = len(read_complete(out))
    caplog.set_level(logging.WARNING)
    with Run(cfg) as run:
        wait_for(lambda: (_copied(tmp_path) and _position(tmp_path)["lsn"] != lost)
                 or not run.thread.is_alive(), 60, "the re-snapshot")
        assert run.thread.is_alive(), run.ended()
    reads = {e["after"]["id"]: e["after"]["v"] for e in read_complete(out)[before:] if e["op"] == "r"}
    assert reads == dict(sql(pg_database, "SELECT id, v FROM t"))
    assert reads[9] == "skipped by the slot"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "when_needed" in r.getMessage()]
    assert len(warnings) == 1 and lost in warnings[0] and "after it" in warnings[0], warnings


def test_postgres_mirror_after_a_lost_slot_keeps_the_rows_deleted_in_the_gap(pg_server, pg_database, tmp_path):
    """What the database mirror does with a when_needed re-copy (docs/snapshots.md): every
    row that exists ends current; a row deleted in the gap stays (the documented caveat)."""
    target = pg_server.create_database(f"mirror_{pg_database.rsplit('/', 1)[1]}")
    sql(target, "CREATE TABLE t (id int PRIMARY KEY, v text)")
    mirror = {"all": {"source": "db", "sinks": [{"type": "postgres", "dsn": target}]}}
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY, v text)",
        "INSERT INTO t SELECT g, 'old' FROM generate_series(1, 40) g")
    cfg = pg_config(tmp_path, pg_database, ["public.t"], mirror, snapshot="when_needed", snapshot_chunk_size=16)

    def mirrored() -> dict:
        return dict(sql(target, "SELECT id, v FROM t"))

    with Run(cfg) as run:
        wait_for(lambda: len(mirrored()) == 40 or not run.thread.is_alive(), 30, "the first copy")
        slot = run.runner.source.slot
    _pg_while_stopped(pg_database, slot)  # inserts 42, changes 7, deletes 3, drops the slot
    cfg = pg_config(tmp_path, pg_database, ["public.t"], mirror, snapshot="when_needed", snapshot_chunk_size=16)
    with Run(cfg) as run:
        wait_for(lambda: 42 in mirrored() or not run.thread.is_alive(), 60, "the re-copy")
        assert run.thread.is_alive(), run.ended()
        source = dict(sql(pg_database, "SELECT id, v FROM t"))
        wait_for(lambda: {k: v for k, v in mirrored().items() if k != 3} == source, 30, "the mirror")
    assert mirrored()[7] == "changed in the gap"
    assert 3 not in source and mirrored()[3] == "old", "the row deleted in the gap stays in the mirror"


@pytest.fixture(scope="module")
def small_wal_postgres():
    """A PostgreSQL of this module's own that invalidates a slot holding over 1 MB of WAL."""
    with PostgresServer(settings={"max_slot_wal_keep_size": "1MB"}) as server:
        yield server


def _invalidate_slot(dsn: str, slot: str) -> None:
    """Write and switch WAL segments past max_slot_wal_keep_size, then CHECKPOINT."""
    for i in range(6):
        sql(dsn, f"INSERT INTO filler SELECT g + {i * 2000}, repeat('x', 200) FROM generate_series(1, 2000) g",
            "SELECT pg_switch_wal()", "CHECKPOINT")
        if sql(dsn, "SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s", params=(slot,)) == [("lost",)]:
            return
    raise AssertionError("the slot was not invalidated")


@pytest.mark.parametrize("mode", ["when_needed", "initial"])
def test_postgres_slot_invalidated_by_max_slot_wal_keep_size(small_wal_postgres, tmp_path, caplog, mode):
    """A slot that fell behind max_slot_wal_keep_size is invalidated (wal_status lost): it
    exists but cannot serve the checkpoint.  when_needed re-creates it and copies again;
    initial stops and names the reason."""
    dsn = small_wal_postgres.create_database(f"wn_{uuid.uuid4().hex[:10]}")
    sql(dsn, "CREATE TABLE filler (id int PRIMARY KEY, v text)")
    slot = _pg_first_run(tmp_path, dsn, mode)
    lost = _position(tmp_path)["lsn"]
    sql(dsn, "UPDATE t SET v = 'while the slot was lost' WHERE id = 5")
    _invalidate_slot(dsn, slot)
    cfg = pg_config(tmp_path, dsn, ["public.t"], {"all": {"source": "db", "sinks": [{"type": "file", "path": OUT}]}},
                    snapshot=mode, snapshot_chunk_size=16)
    problems = cfg.sources["db"].build().preflight(_position(tmp_path), None)
    about_slot = [(level, text) for level, text in problems if "invalidated" in text]
    assert [level for level, _ in about_slot] == ["warning" if mode == "when_needed" else "error"], problems
    out = tmp_path / OUT
    before = len(read_complete(out))
    caplog.set_level(logging.WARNING)
    with Run(cfg) as run:
        if mode == "initial":
            error = run.ended()
            assert f"slot {slot}" in error and "invalidated" in error and lost in error, error
            assert read_complete(out)[before:] == []
            return
        wait_for(lambda: (_copied(tmp_path) and _position(tmp_path)["lsn"] != lost)
                 or not run.thread.is_alive(), 60, "the re-snapshot")
        assert run.thread.is_alive(), run.ended()
        sql(dsn, "INSERT INTO t VALUES (43, 'live after')")
        wait_for(lambda: ("c", 43) in _ops(read_complete(out)[before:]), 30, "the live change")
    reads = {e["after"]["id"]: e["after"]["v"] for e in read_complete(out)[before:] if e["op"] == "r"}
    assert reads == dict(sql(dsn, "SELECT id, v FROM t WHERE id <> 43"))
    assert reads[5] == "while the slot was lost"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "when_needed" in r.getMessage()]
    assert len(warnings) == 1 and lost in warnings[0] and "invalidated" in warnings[0], warnings
    assert sql(dsn, "SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s", params=(slot,)) != [("lost",)]


def test_cdc_run_re_snapshots_once_then_resumes_normally(pg_database, tmp_path):
    """The process (``cdc run``): after a when_needed start-over and a clean stop, the next
    start resumes from the new checkpoint: no second copy, no second WARNING."""
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY, v text)",
        "INSERT INTO t SELECT g, 'old' FROM generate_series(1, 40) g")
    pg_config(tmp_path, pg_database, ["public.t"], {"all": {"source": "db", "sinks": [{"type": "file", "path": OUT}]}},
              snapshot="when_needed", snapshot_chunk_size=16)
    out, log_path = tmp_path / OUT, tmp_path / "cdc.log"

    def run_until(done, what: str) -> str:
        with open(log_path, "w") as log:
            proc = subprocess.Popen([sys.executable, "-m", "cdc", "run", str(tmp_path / "pipelines.yaml")],
                                    cwd=tmp_path, stdout=log, stderr=log)
        try:
            wait_for(lambda: done() or proc.poll() is not None, 60, what)
            assert proc.poll() is None, log_path.read_text()
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0, log_path.read_text()
        return log_path.read_text()

    run_until(lambda: _copied(tmp_path), "the first copy")
    slot = sql(pg_database, "SELECT slot_name FROM pg_replication_slots WHERE database = current_database()")[0][0]
    sql(pg_database, "SELECT pg_drop_replication_slot(%s)", params=(slot,))
    sql(pg_database, "INSERT INTO t VALUES (42, 'in the gap')")
    lost = _position(tmp_path)["lsn"]
    log = run_until(lambda: _copied(tmp_path) and _position(tmp_path)["lsn"] != lost, "the re-copy")
    assert sum("when_needed" in line and "WARNING" in line for line in log.splitlines()) == 1, log
    assert _ops(read_complete(out)).count(("r", 42)) == 1 and _ops(read_complete(out)).count(("r", 1)) == 2
    sql(pg_database, "INSERT INTO t VALUES (43, 'live')")
    log = run_until(lambda: ("c", 43) in _ops(read_complete(out)), "the live insert after a restart")
    assert "when_needed" not in log, log
    assert _ops(read_complete(out)).count(("r", 1)) == 2, "copied a third time"
