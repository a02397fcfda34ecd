"""What the MySQL/MariaDB source promises about positions and schema changes (issue 10),
each against a real MariaDB 10.11.  See docs/guarantees.md."""

from __future__ import annotations

import json
import threading
import time

import pytest
import yaml

from cdc.config import parse_config
from cdc.engine import SourceRunner
from cdc.errors import SourceError, SourceSetupError
from cdc.event import ChangeEvent, Commit

from mysql_helpers import collect, db_of, execute, make_source
from pgutil import read_jsonl, wait_for_lines

DOWN_SINK = '''
from cdc.errors import TransientSinkError

class DownSink:
    """Its destination never answers."""
    def open(self): pass
    def write(self, events): raise TransientSinkError("destination unreachable")
    def close(self): pass
'''


@pytest.fixture
def shop(mariadb_server, mariadb_database):
    return mariadb_server, db_of(mariadb_database)


def _config(tmp_path, server, db: str, tables: list[str], sink: dict, **options):
    """A streaming source (``snapshot: never``): these tests are about the binlog."""
    options.setdefault("snapshot", "never")
    raw = {"sources": {"legacy": {"type": "mysql", "dsn": server.dsn(db, user="cdc"), "server_id": 4301,
                                  "tables": tables, "checkpoint_interval": 0.0,
                                  "checkpoint": {"type": "file", "path": "state/legacy.json"},
                                  "snapshot": "never", **options}},  # streaming tests: no copy
           "pipelines": {"copy": {"source": "legacy", "sinks": [sink]}}}
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump(raw))
    return parse_config(raw, path, {})


class Run:
    """A SourceRunner on a thread; keeps what ``run()`` returned or raised."""

    def __init__(self, cfg) -> None:
        self.runner = SourceRunner(cfg, "legacy", grace_period=2.0)
        self.code = None
        self.raised: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.code = self.runner.run()
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            self.raised = exc

    def __enter__(self) -> Run:
        self.thread.start()
        deadline = time.time() + 30
        while self.runner.source.reader is None:
            assert self.thread.is_alive(), f"runner exited: {self.raised or self.runner.error}"
            assert time.time() < deadline, "source did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.runner.request_stop()
        self.thread.join(30)


def _events(source, until, timeout: float = 30.0) -> list:
    """Poll until ``until(events)``; a SourceError ends the polling and is returned last."""
    got: list = []
    deadline = time.monotonic() + timeout
    while not until(got) and time.monotonic() < deadline:
        try:
            got += [i for i in source.poll(0.2) if isinstance(i, ChangeEvent)]
        except SourceError as exc:
            got.append(exc)
            break
    return got


# ---- 5. key columns follow the table -------------------------------------------------------------

def test_key_follows_a_renamed_key_column_and_a_moved_primary_key(shop):
    server, db = shop
    execute(server, db, "CREATE TABLE t (id int PRIMARY KEY, code varchar(10) NOT NULL, v int)")
    source = make_source(server, db, [f"{db}.t"])
    source.open(None)
    try:
        execute(server, db, "INSERT INTO t VALUES (1, 'a', 0)",
                "ALTER TABLE t CHANGE id tid int NOT NULL", "INSERT INTO t VALUES (2, 'b', 0)",
                "ALTER TABLE t DROP PRIMARY KEY, ADD PRIMARY KEY (code)", "INSERT INTO t VALUES (3, 'c', 0)",
                "UPDATE t SET v = 1 WHERE code = 'c'", "ALTER TABLE t RENAME COLUMN code TO tcode",
                "INSERT INTO t VALUES (4, 'd', 0)")
        events = collect(source, 5)
    finally:
        source.close()
    assert [e.key for e in events] == [{"id": 1}, {"tid": 2}, {"code": "c"}, {"code": "c"}, {"tcode": "d"}]


# ---- 6. the first run stores where it starts --------------------------------------------------------

def test_first_run_stores_its_start_position_before_reading(shop, tmp_path):
    server, db = shop
    execute(server, db, "CREATE TABLE t (id int PRIMARY KEY)")
    (tmp_path / "downsink.py").write_text(DOWN_SINK)
    down = {"type": "downsink:DownSink", "retry": {"initial_backoff": 0.1, "max_backoff": 0.2}}
    with Run(_config(tmp_path, server, db, [f"{db}.t"], down)) as run:
        execute(server, db, "INSERT INTO t VALUES (1)")
        deadline = time.time() + 30
        while run.runner.counts["received"] < 1:
            assert time.time() < deadline, "the insert was not read"
            time.sleep(0.05)
    saved = json.loads((tmp_path / "state/legacy.json").read_text())["position"]
    assert saved["gtid"] and saved["file"]
    execute(server, db, "INSERT INTO t VALUES (2)")  # while cdc is stopped
    out = tmp_path / "out/t.jsonl"
    with Run(_config(tmp_path, server, db, [f"{db}.t"], {"type": "file", "path": "out/t.jsonl"})):
        events = wait_for_lines(out, 2, timeout=20)
    assert [e["after"]["id"] for e in events] == [1, 2]


# ---- 7. statement-format DML stops with the position and the fix ------------------------------------

def test_statement_format_dml_on_a_captured_table_stops_with_the_fix(shop):
    server, db = shop
    execute(server, db, "CREATE TABLE t (id int PRIMARY KEY)", "CREATE TABLE other (id int PRIMARY KEY)")
    source = make_source(server, db, [f"{db}.t"])
    source.open(None)
    commits: list = []
    try:
        execute(server, db, "INSERT INTO t VALUES (1)")
        collect(source, 1, commits=commits)
        # statement format on a table that is not captured: no error, and no checkpoint inside it
        execute(server, db, "SET SESSION binlog_format = 'STATEMENT'", "BEGIN", "INSERT INTO other VALUES (1)",
                "INSERT INTO other SELECT id + 1 FROM t", "COMMIT")  # reading t is no change of t
        execute(server, db, "INSERT INTO t VALUES (2)")
        events = []
        deadline = time.monotonic() + 30
        while not events and time.monotonic() < deadline:
            for item in source.poll(0.2):
                (commits if isinstance(item, Commit) else events).append(item)
        assert [e.after["id"] for e in events] == [2]
        gtids = [c.position["gtid"] for c in commits]
        assert len(gtids) == len(set(gtids)) >= 3, f"one commit per transaction, none mid-transaction: {commits}"
        execute(server, db, "SET SESSION binlog_format = 'STATEMENT'", "INSERT INTO t VALUES (3)")
        got = _events(source, lambda g: False, timeout=30)
    finally:
        source.close()
    assert got and isinstance(got[-1], SourceSetupError), got
    message = str(got[-1])
    assert f"{db}.t" in message and "binlog_format" in message and "ROW" in message
    assert "0-1-" in message  # the GTID of the transaction


def test_statement_format_dml_can_be_skipped_by_option(shop):
    server, db = shop
    execute(server, db, "CREATE TABLE t (id int PRIMARY KEY)")
    source = make_source(server, db, [f"{db}.t"], statement_dml="skip")
    source.open(None)
    try:
        execute(server, db, "SET SESSION binlog_format = 'STATEMENT'", "INSERT INTO t VALUES (1)")
        execute(server, db, "INSERT INTO t VALUES (2)")
        events = collect(source, 1)
    finally:
        source.close()
    assert [e.after["id"] for e in events] == [2]


# ---- 8. TRUNCATE ----------------------------------------------------------------------------------

def test_truncate_is_emitted(shop):
    server, db = shop
    execute(server, db, "CREATE TABLE t (id int PRIMARY KEY)", "CREATE TABLE other (id int PRIMARY KEY)")
    source = make_source(server, db, [f"{db}.t"])
    source.open(None)
    try:
        execute(server, db, "INSERT INTO t VALUES (1)", "TRUNCATE TABLE other", "TRUNCATE t",
                "INSERT INTO t VALUES (2)")
        events = collect(source, 3)
    finally:
        source.close()
    assert [e.op for e in events] == ["c", "t", "c"]
    truncate = events[1]
    assert truncate.table == f"{db}.t" and truncate.before is None and truncate.after is None
    assert truncate.source["table"] == "t" and truncate.source["gtid"]
    assert truncate.id.startswith(truncate.source["gtid"])


# ---- 9. table metadata followed at runtime ---------------------------------------------------------

def test_json_column_added_and_changed_while_running(shop):
    server, db = shop
    execute(server, db, "CREATE TABLE t (id int PRIMARY KEY)")
    source = make_source(server, db, [f"{db}.t"])
    source.open(None)
    try:
        execute(server, db, "INSERT INTO t VALUES (1)", "ALTER TABLE t ADD COLUMN doc json",
                """INSERT INTO t VALUES (2, '{"a": [1, 2]}')""")
        first = collect(source, 2)
        execute(server, db, "ALTER TABLE t MODIFY doc text", """INSERT INTO t VALUES (3, '{"b": 1}')""")
        second = collect(source, 1)
    finally:
        source.close()
    assert first[1].after == {"id": 2, "doc": {"a": [1, 2]}}
    assert second[0].after == {"id": 3, "doc": '{"b": 1}'}


# ---- 10. a table renamed or dropped while cdc is stopped -----------------------------------------

@pytest.mark.parametrize("change", ["RENAME TABLE gone TO renamed", "DROP TABLE gone"])
def test_table_changed_while_stopped_delivers_its_changes_then_says_what_to_do(shop, tmp_path, change):
    server, db = shop
    execute(server, db, "CREATE TABLE gone (id int PRIMARY KEY)", "CREATE TABLE other (id int PRIMARY KEY)")
    cfg = _config(tmp_path, server, db, [f"{db}.gone", f"{db}.other"], {"type": "file", "path": "out/all.jsonl"})
    out = tmp_path / "out/all.jsonl"
    with Run(cfg):
        execute(server, db, "INSERT INTO gone VALUES (1)")
        wait_for_lines(out, 1)
    execute(server, db, "INSERT INTO gone VALUES (2)", "INSERT INTO other VALUES (1)", change,
            "INSERT INTO other VALUES (2)")
    run = Run(cfg)
    run.thread.start()
    run.thread.join(60)
    assert not run.thread.is_alive(), "cdc did not stop"
    error = str(run.raised or run.runner.error)
    assert f"{db}.gone" in error and "tables:" in error, error
    if "RENAME" in change:
        assert f"{db}.renamed" in error
    events = [(e["source"]["table"], e["after"]["id"]) for e in read_jsonl(out)]
    assert events[:3] == [("gone", 1), ("gone", 2), ("other", 1)], events


# ---- bad data: geometry ------------------------------------------------------------------------------

def test_geometry_is_wkb_with_its_srid_beside_it(shop):
    import base64
    server, db = shop
    execute(server, db, "CREATE TABLE g (id int PRIMARY KEY, p geometry)")
    source = make_source(server, db, [f"{db}.g"])
    source.open(None)
    try:
        execute(server, db, "INSERT INTO g VALUES (1, ST_GeomFromText('POINT(1 2)', 4326)), (2, NULL)")
        events = collect(source, 2)
    finally:
        source.close()
    with server.connect(db) as conn, conn.cursor() as cur:
        cur.execute("SELECT ST_AsBinary(p) FROM g WHERE id = 1")
        wkb = cur.fetchone()[0]
    assert events[0].after["p"] == {"wkb": base64.b64encode(wkb).decode(), "srid": 4326}
    assert events[1].after["p"] is None


def test_table_renamed_while_running_stops_after_the_rename(shop):
    server, db = shop
    execute(server, db, "CREATE TABLE t (id int PRIMARY KEY)")
    source = make_source(server, db, [f"{db}.t"])
    source.open(None)
    try:
        execute(server, db, "INSERT INTO t VALUES (1)", "ALTER TABLE t RENAME TO t2", "INSERT INTO t2 VALUES (2)")
        got = _events(source, lambda g: False, timeout=30)
    finally:
        source.close()
    assert [e.after["id"] for e in got[:-1]] == [1]
    assert isinstance(got[-1], SourceSetupError) and f"renamed to {db}.t2" in str(got[-1])


def test_table_renamed_while_stopped_with_the_config_following_it_names_the_gap(shop, tmp_path):
    """The binlog names rows by the table's name at the time: rows written under the old name are
    not in a config that names only the new one. cdc must say so once, then go on."""
    server, db = shop
    execute(server, db, "CREATE TABLE t (id int PRIMARY KEY)")
    out = tmp_path / "out/all.jsonl"
    sink = {"type": "file", "path": "out/all.jsonl"}
    with Run(_config(tmp_path, server, db, [f"{db}.t"], sink)):
        execute(server, db, "INSERT INTO t VALUES (1)")
        wait_for_lines(out, 1)
    execute(server, db, "INSERT INTO t VALUES (2)", "RENAME TABLE t TO t2", "INSERT INTO t2 VALUES (3)")
    cfg = _config(tmp_path, server, db, [f"{db}.t2"], sink)
    first = Run(cfg)
    first.thread.start()
    first.thread.join(60)
    assert not first.thread.is_alive()
    error = str(first.raised or first.runner.error)
    assert f"{db}.t2 was called {db}.t" in error and "not captured" in error, error
    with Run(cfg):  # started again: on after the rename
        events = wait_for_lines(out, 2, timeout=20)
    assert [e["after"]["id"] for e in events] == [1, 3]


def test_a_position_that_is_not_a_binlog_position_is_refused_with_the_fix(shop):
    server, db = shop
    execute(server, db, "CREATE TABLE t (id int PRIMARY KEY)")
    source = make_source(server, db, [f"{db}.t"])
    for bad in ({"lsn": "0/16B3748"}, {"file": "binlog.000001", "pos": "x"}):
        with pytest.raises(SourceSetupError, match="not a binlog position.*cdc checkpoint"):
            source.open(bad)


def test_following_a_rename_after_the_stop_loses_nothing(shop, tmp_path):
    server, db = shop
    execute(server, db, "CREATE TABLE gone (id int PRIMARY KEY)")
    out = tmp_path / "out/all.jsonl"
    sink = {"type": "file", "path": "out/all.jsonl"}
    cfg = _config(tmp_path, server, db, [f"{db}.gone"], sink)
    with Run(cfg):
        execute(server, db, "INSERT INTO gone VALUES (1)")
        wait_for_lines(out, 1)
    execute(server, db, "INSERT INTO gone VALUES (2)", "RENAME TABLE gone TO renamed", "INSERT INTO renamed VALUES (3)")
    run = Run(cfg)
    run.thread.start()
    run.thread.join(60)
    assert f"{db}.renamed" in str(run.raised or run.runner.error)
    execute(server, db, "INSERT INTO renamed VALUES (4)")  # before the operator changed the config
    with Run(_config(tmp_path, server, db, [f"{db}.renamed"], sink)):
        execute(server, db, "INSERT INTO renamed VALUES (5)")
        events = wait_for_lines(out, 5, timeout=20)
    assert [e["after"]["id"] for e in events] == [1, 2, 3, 4, 5]
