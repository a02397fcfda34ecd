"""What the PostgreSQL source promises about slots, publications and schema changes
(issue 10), each against a real PostgreSQL 15.  See docs/guarantees.md."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest

from cdc.errors import SourceSetupError
from cdc.sources.postgres import setup
from cdc.sources.postgres import source as pg_source

from pgutil import Running, file_pipeline, read_jsonl, sql, stream_config, wait_for_lines


class Run:
    """A SourceRunner on a thread that also keeps the exception ``run()`` may raise."""

    def __init__(self, cfg) -> None:
        self.inner = Running(cfg)
        self.runner = self.inner.runner
        self.raised: BaseException | None = None
        self.inner.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.inner.code = self.runner.run()
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            self.raised = exc

    def __enter__(self) -> Run:
        self.inner.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.inner.stop()

    def failure(self) -> str:
        return str(self.raised or self.runner.error or "")


def _slot(dsn: str, slot: str):
    rows = sql(dsn, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
               params=(slot,))
    return rows[0][0] if rows else None


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


def _checkpoint(tmp_path) -> dict:
    return json.loads((tmp_path / "state/db.json").read_text())["position"]


# ---- 1. a dropped slot is never re-created silently ------------------------------------------

def test_slot_dropped_while_running_stops_with_the_loss_named(pg_database, tmp_path):
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY)")
    cfg = stream_config(tmp_path, pg_database, ["public.t"], {"all": file_pipeline()})
    out = tmp_path / "out/all.jsonl"
    run = Run(cfg)
    with run:
        slot = run.runner.source.slot
        sql(pg_database, "INSERT INTO t VALUES (1)")
        assert len(wait_for_lines(out, 1)) == 1
        _drop_slot_under_cdc(pg_database, slot)
        sql(pg_database, "INSERT INTO t VALUES (2)")  # lost with the slot
        run.inner.thread.join(30)
        assert not run.inner.thread.is_alive(), "cdc went on reading after its slot was dropped"
    error = run.failure()
    assert f"slot {slot}" in error and "does not exist" in error
    assert "cdc checkpoint reset" in error and "lost" in error
    assert _slot(pg_database, slot) is None, "the slot was re-created"
    assert [e["after"]["id"] for e in read_jsonl(out)] == [1]


def test_slot_dropped_while_stopped_refuses_to_start(pg_database, tmp_path):
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY)")
    cfg = stream_config(tmp_path, pg_database, ["public.t"], {"all": file_pipeline()})
    with Running(cfg) as running:
        slot = running.runner.source.slot
        sql(pg_database, "INSERT INTO t VALUES (1)")
        wait_for_lines(tmp_path / "out/all.jsonl", 1)
    sql(pg_database, "SELECT pg_drop_replication_slot(%s)", params=(slot,))
    sql(pg_database, "INSERT INTO t VALUES (2)")
    source = cfg.sources["db"].build()
    with pytest.raises(SourceSetupError) as info:
        source.open(_checkpoint(tmp_path))
    message = str(info.value)
    assert "does not exist" in message and _checkpoint(tmp_path)["lsn"] in message
    assert "cdc checkpoint reset" in message
    assert _slot(pg_database, slot) is None
    # the helper `cdc check` calls says the same
    with setup.connect(pg_database, "db") as conn:
        assert "does not exist" in setup.slot_problem(conn, slot, _checkpoint(tmp_path))
        assert setup.slot_problem(conn, slot, None) is None  # a first run creates it


def test_slot_ahead_of_the_checkpoint_refuses_to_start(pg_database, tmp_path):
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY)")
    cfg = stream_config(tmp_path, pg_database, ["public.t"], {"all": file_pipeline()})
    with Running(cfg) as running:
        slot = running.runner.source.slot
        sql(pg_database, "INSERT INTO t VALUES (1)")
        wait_for_lines(tmp_path / "out/all.jsonl", 1)
    sql(pg_database, "INSERT INTO t VALUES (2)")
    sql(pg_database, "SELECT pg_replication_slot_advance(%s, pg_current_wal_lsn())", params=(slot,))
    source = cfg.sources["db"].build()
    with pytest.raises(SourceSetupError, match="cdc checkpoint reset") as info:
        source.open(_checkpoint(tmp_path))
    assert "after the checkpoint" in str(info.value)
    with setup.connect(pg_database, "db") as conn:
        assert "after the checkpoint" in setup.slot_problem(conn, slot, _checkpoint(tmp_path))


def test_first_run_creates_the_slot_and_a_reset_starts_over(pg_database, tmp_path):
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY)")
    cfg = stream_config(tmp_path, pg_database, ["public.t"], {"all": file_pipeline()})
    source = cfg.sources["db"].build()
    source.open(None)  # no checkpoint: create: true may create the slot
    source.close()
    assert _slot(pg_database, source.slot) is not None


# ---- 3. the publication follows tables: --------------------------------------------------------

def test_table_removed_from_config_is_no_longer_captured(pg_database, tmp_path, caplog):
    sql(pg_database, "CREATE TABLE a (id int PRIMARY KEY)", "CREATE TABLE secret (id int PRIMARY KEY)")
    out = tmp_path / "out/all.jsonl"
    cfg = stream_config(tmp_path, pg_database, ["public.a", "public.secret"], {"all": file_pipeline()})
    with Running(cfg):
        sql(pg_database, "INSERT INTO a VALUES (1)", "INSERT INTO secret VALUES (1)")
        wait_for_lines(out, 2)
    sql(pg_database, "INSERT INTO secret VALUES (2)", "INSERT INTO a VALUES (2)")  # while stopped
    cfg = stream_config(tmp_path, pg_database, ["public.a"], {"all": file_pipeline()})
    with setup.connect(pg_database, "db") as conn:  # what `cdc check` can say first
        [(level, text)] = setup.publication_problems(conn, cfg.sources["db"].build().publication, ["public.a"])
        assert level == "warning" and "public.secret" in text
    caplog.set_level(logging.INFO, logger="cdc.source.postgres")
    with Running(cfg) as running:
        publication = running.runner.source.publication
        sql(pg_database, "INSERT INTO secret VALUES (3)", "INSERT INTO a VALUES (3)")
        events = wait_for_lines(out, 4)
        time.sleep(0.5)
    tables = sql(pg_database, "SELECT tablename FROM pg_publication_tables WHERE pubname = %s",
                 params=(publication,))
    assert tables == [("a",)]
    events = read_jsonl(out)
    assert [(e["source"]["table"], e["after"]["id"]) for e in events] == [
        ("a", 1), ("secret", 1), ("a", 2), ("a", 3)]
    assert any("public.secret" in r.getMessage() and "removed" in r.getMessage() for r in caplog.records)


# ---- 4. partitioned tables come out under the parent's name --------------------------------------

def test_partitioned_table_events_are_named_after_the_parent(pg_database, tmp_path):
    sql(pg_database, "CREATE TABLE parts (id int, region text, PRIMARY KEY (id, region))"
                     " PARTITION BY LIST (region)",
        "CREATE TABLE parts_eu PARTITION OF parts FOR VALUES IN ('eu')",
        "CREATE TABLE parts_us PARTITION OF parts FOR VALUES IN ('us')")
    out = tmp_path / "out/parts.jsonl"
    cfg = stream_config(tmp_path, pg_database, ["public.parts"],
                 {"parts": file_pipeline("out/parts.jsonl", tables=["public.parts"])})
    with Running(cfg):
        sql(pg_database, "INSERT INTO parts VALUES (1, 'eu'), (2, 'us')",
            "UPDATE parts SET id = 3 WHERE id = 1", "DELETE FROM parts WHERE id = 2")
        events = wait_for_lines(out, 4, timeout=30)
    assert [(e["op"], e["source"]["table"]) for e in events] == [
        ("c", "parts"), ("c", "parts"), ("u", "parts"), ("d", "parts")]
    assert events[0]["key"] == {"id": 1, "region": "eu"}


# ---- 5. key columns follow the table -------------------------------------------------------------

def test_key_follows_a_renamed_key_column_and_a_moved_primary_key(pg_database, tmp_path):
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY, code text NOT NULL, v text)")
    out = tmp_path / "out/all.jsonl"
    cfg = stream_config(tmp_path, pg_database, ["public.t"], {"all": file_pipeline()})
    with Running(cfg):
        sql(pg_database, "INSERT INTO t VALUES (1, 'a', 'x')")
        wait_for_lines(out, 1)
        sql(pg_database, "ALTER TABLE t DROP CONSTRAINT t_pkey", "ALTER TABLE t ADD PRIMARY KEY (code)",
            "INSERT INTO t VALUES (2, 'b', 'x')", "UPDATE t SET v = 'y' WHERE code = 'b'")
        wait_for_lines(out, 3)
        sql(pg_database, "ALTER TABLE t RENAME COLUMN code TO tcode", "INSERT INTO t VALUES (3, 'c', 'x')")
        events = wait_for_lines(out, 4)
    assert [e["key"] for e in events] == [{"id": 1}, {"code": "b"}, {"code": "b"}, {"tcode": "c"}]


def test_key_of_a_replica_identity_full_table_follows_its_primary_key(pg_database, tmp_path):
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY, code text NOT NULL)",
        "ALTER TABLE t REPLICA IDENTITY FULL")
    out = tmp_path / "out/all.jsonl"
    cfg = stream_config(tmp_path, pg_database, ["public.t"], {"all": file_pipeline()})
    with Running(cfg):
        sql(pg_database, "INSERT INTO t VALUES (1, 'a')")
        wait_for_lines(out, 1)
        sql(pg_database, "ALTER TABLE t DROP CONSTRAINT t_pkey", "ALTER TABLE t ADD PRIMARY KEY (code)",
            "UPDATE t SET id = 5 WHERE code = 'a'")
        events = wait_for_lines(out, 2)
    assert [e["key"] for e in events] == [{"id": 1}, {"code": "a"}]


# ---- 10. a table renamed or dropped while cdc is stopped -----------------------------------------

@pytest.mark.parametrize("change", ["ALTER TABLE gone RENAME TO renamed", "DROP TABLE gone"])
def test_table_changed_while_stopped_delivers_its_changes_then_says_what_to_do(pg_database, tmp_path, change):
    sql(pg_database, "CREATE TABLE gone (id int PRIMARY KEY)", "CREATE TABLE other (id int PRIMARY KEY)")
    out = tmp_path / "out/all.jsonl"
    cfg = stream_config(tmp_path, pg_database, ["public.gone", "public.other"], {"all": file_pipeline()})
    with Running(cfg):
        sql(pg_database, "INSERT INTO gone VALUES (1)")
        wait_for_lines(out, 1)
    sql(pg_database, "INSERT INTO gone VALUES (2)", "INSERT INTO other VALUES (1)", change,
        "INSERT INTO other VALUES (2)")
    run = Run(cfg)
    run.inner.thread.start()
    run.inner.thread.join(60)
    assert not run.inner.thread.is_alive(), "cdc did not stop"
    error = run.failure()
    assert "public.gone" in error and "tables:" in error, error
    if "RENAME" in change:
        assert "public.renamed" in error
    events = [(e["source"]["table"], e["after"]["id"]) for e in read_jsonl(out)]
    assert events[:3] == [("gone", 1), ("gone", 2), ("other", 1)], events


# ---- 12. a transform that mutates its input stops the source -------------------------------------

MUTATOR = '''
def shout(event):
    event.after["status"] = event.after["status"].upper()  # wrong: the event is shared
    return event
'''


def test_transform_mutating_its_input_stops_before_any_pipeline_gets_it(pg_database, tmp_path):
    (tmp_path / "mutator.py").write_text(MUTATOR)
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY, status text)")
    cfg = stream_config(tmp_path, pg_database, ["public.t"], {
        "plain": file_pipeline("out/plain.jsonl"),
        "shouting": file_pipeline("out/shouting.jsonl",
                                  transforms=[{"type": "python", "function": "mutator:shout"}])})
    run = Run(cfg)
    with run:
        sql(pg_database, "INSERT INTO t VALUES (1, 'new')")
        run.inner.thread.join(30)
        assert not run.inner.thread.is_alive(), "the mutation went unnoticed"
    error = run.failure()
    assert "transforms[0]:python" in error and "shouting" in error and "mutat" in error
    assert "replace" in error  # the fix
    plain = read_jsonl(tmp_path / "out/plain.jsonl")
    assert all(e["after"]["status"] == "new" for e in plain), plain


# ---- bad data never halts the source ---------------------------------------------------------------

def test_filter_comparisons_on_nan_never_raise(pg_database, tmp_path):
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY, amount numeric, ratio float8)")
    out = tmp_path / "out/big.jsonl"
    cfg = stream_config(tmp_path, pg_database, ["public.t"], {"big": file_pipeline(
        "out/big.jsonl", transforms=[{"type": "filter", "where": {"amount": {"gt": 100}, "ratio": {"lt": 1}}}])})
    with Running(cfg) as running:
        sql(pg_database, "INSERT INTO t VALUES (1, 'NaN', 0.5), (2, 500, 'NaN'), (3, 500, 0.5)")
        wait_for_lines(out, 1, timeout=30)
        time.sleep(0.3)
        assert running.runner.error is None and running.thread.is_alive()
    assert [e["after"]["id"] for e in read_jsonl(out)] == [3]


def test_domain_types_come_out_as_their_base_type(pg_database, tmp_path):
    sql(pg_database, "CREATE DOMAIN qty AS int CHECK (VALUE >= 0)", "CREATE DOMAIN small_qty AS qty",
        "CREATE DOMAIN doc AS jsonb", "CREATE DOMAIN flag AS boolean",
        "CREATE TABLE t (id int PRIMARY KEY, q qty, s small_qty, d doc, f flag)")
    out = tmp_path / "out/all.jsonl"
    cfg = stream_config(tmp_path, pg_database, ["public.t"], {"all": file_pipeline()})
    with Running(cfg):
        sql(pg_database, """INSERT INTO t VALUES (1, 5, 6, '{"a": [1]}', true)""")
        events = wait_for_lines(out, 1)
    assert events[0]["after"] == {"id": 1, "q": 5, "s": 6, "d": {"a": [1]}, "f": True}


def test_bc_dates_are_iso_8601(pg_database, tmp_path):
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY, d date, ts timestamp, tz timestamptz, ds date[])")
    out = tmp_path / "out/all.jsonl"
    cfg = stream_config(tmp_path, pg_database, ["public.t"], {"all": file_pipeline()})
    with Running(cfg):
        sql(pg_database, "INSERT INTO t VALUES (1, '0044-03-15 BC', '0044-03-15 10:00:00.5 BC',"
                         " '0001-01-01 00:00:00+00 BC', '{0044-03-15 BC,2026-11-25}'),"
                         " (2, '2026-11-25', '2026-11-25 10:00:00', '2026-11-25 10:00:00+00', NULL)")
        events = wait_for_lines(out, 2)
    assert events[0]["after"] == {"id": 1, "d": "-0043-03-15", "ts": "-0043-03-15T10:00:00.5",
                                  "tz": "0000-01-01T00:00:00Z", "ds": ["-0043-03-15", "2026-11-25"]}
    assert events[1]["after"] == {"id": 2, "d": "2026-11-25", "ts": "2026-11-25T10:00:00",
                                  "tz": "2026-11-25T10:00:00Z", "ds": None}


def test_table_renamed_while_running_stops_at_its_next_change(pg_database, tmp_path):
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY)")
    out = tmp_path / "out/all.jsonl"
    run = Run(stream_config(tmp_path, pg_database, ["public.t"], {"all": file_pipeline()}))
    with run:
        sql(pg_database, "INSERT INTO t VALUES (1)", "ALTER TABLE t RENAME TO t2", "INSERT INTO t2 VALUES (2)")
        run.inner.thread.join(30)
        assert not run.inner.thread.is_alive(), "cdc went on after the rename"
    assert "renamed to public.t2" in run.failure() and "tables:" in run.failure()
    assert [e["after"]["id"] for e in read_jsonl(out)] == [1]


def test_table_dropped_and_created_again_while_running_stops_with_what_is_lost(pg_database, tmp_path):
    """DROP TABLE takes a table out of the publication: a table created again under the same
    name is not captured, and its changes would be missing silently.  cdc delivers what the
    WAL holds up to the drop, then stops naming the table, the gap and the recovery."""
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY)")
    out = tmp_path / "out/all.jsonl"
    run = Run(stream_config(tmp_path, pg_database, ["public.t"], {"all": file_pipeline()}))
    with run:
        sql(pg_database, "INSERT INTO t VALUES (1)")
        wait_for_lines(out, 1)
        sql(pg_database, "INSERT INTO t VALUES (2)", "DROP TABLE t", "CREATE TABLE t (id int PRIMARY KEY)",
            "INSERT INTO t VALUES (3)")
        run.inner.thread.join(60)
        assert not run.inner.thread.is_alive(), "cdc went on with a table that is no longer captured"
    failure = run.failure()
    assert "public.t was dropped and created again" in failure and "cdc snapshot" in failure, failure
    assert [e["after"]["id"] for e in read_jsonl(out)] == [1, 2]


def test_the_table_check_keeps_one_connection_and_a_table_with_quotes_in_its_name(pg_database, tmp_path,
                                                                                   monkeypatch):
    """The check that captured tables still exist (every 5 s) opened a new connection each
    time: 17,000 sessions a day in the server's log and its connection count.  It keeps one
    (the heartbeat's) and still sees a dropped table, whatever its name's characters."""
    monkeypatch.setattr(pg_source, "TABLE_CHECK_INTERVAL", 0.1)
    sql(pg_database, 'CREATE TABLE "Odd ""name"" t" (id int PRIMARY KEY)')
    out = tmp_path / "out/all.jsonl"
    run = Run(stream_config(tmp_path, pg_database, ['public.Odd "name" t'], {"all": file_pipeline()}))
    sessions = "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
    with run:
        sql(pg_database, 'INSERT INTO "Odd ""name"" t" VALUES (1)')
        wait_for_lines(out, 1)
        time.sleep(0.5)
        before = sql(pg_database, sessions)[0][0]
        time.sleep(2.0)  # about 20 checks
        after = sql(pg_database, sessions)[0][0]
        assert after - before <= 1, f"{after - before} sessions opened in 2 s (1 is the query's own)"
        sql(pg_database, 'INSERT INTO "Odd ""name"" t" VALUES (2)', 'DROP TABLE "Odd ""name"" t"')
        run.inner.thread.join(60)
        assert not run.inner.thread.is_alive(), "the dropped table was not noticed"
    assert 'public.Odd "name" t' in run.failure()
    assert [e["after"]["id"] for e in read_jsonl(out)] == [1, 2]


def test_table_renamed_while_stopped_with_the_config_following_it_loses_nothing(pg_database, tmp_path):
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY)")
    out = tmp_path / "out/all.jsonl"
    with Running(stream_config(tmp_path, pg_database, ["public.t"], {"all": file_pipeline()})):
        sql(pg_database, "INSERT INTO t VALUES (1)")
        wait_for_lines(out, 1)
    sql(pg_database, "INSERT INTO t VALUES (2)", "ALTER TABLE t RENAME TO t2", "INSERT INTO t2 VALUES (3)")
    with Running(stream_config(tmp_path, pg_database, ["public.t2"], {"all": file_pipeline()})) as running:
        events = wait_for_lines(out, 3)
        assert running.runner.error is None
    assert [(e["source"]["table"], e["after"]["id"]) for e in events] == [("t", 1), ("t2", 2), ("t2", 3)]


def test_a_position_that_is_not_an_lsn_is_refused_with_the_fix(pg_database, tmp_path):
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY)")
    source = stream_config(tmp_path, pg_database, ["public.t"], {"all": file_pipeline()}).sources["db"].build()
    for bad in ({"lsn": "zzz"}, {"gtid": "0-1-5", "file": "binlog.000001", "pos": 4}):
        with pytest.raises(SourceSetupError, match="not a PostgreSQL position.*cdc checkpoint"):
            source.open(bad)


def test_following_a_rename_after_the_stop_loses_nothing(pg_database, tmp_path):
    """After cdc stopped on a table renamed while it was stopped, the operator changes tables:.
    Changes made to the renamed table in between must still be delivered."""
    sql(pg_database, "CREATE TABLE gone (id int PRIMARY KEY)")
    out = tmp_path / "out/all.jsonl"
    cfg = stream_config(tmp_path, pg_database, ["public.gone"], {"all": file_pipeline()})
    with Running(cfg):
        sql(pg_database, "INSERT INTO gone VALUES (1)")
        wait_for_lines(out, 1)
    sql(pg_database, "INSERT INTO gone VALUES (2)", "ALTER TABLE gone RENAME TO renamed")
    run = Run(cfg)
    run.inner.thread.start()
    run.inner.thread.join(60)
    assert "public.renamed" in run.failure()
    sql(pg_database, "INSERT INTO renamed VALUES (3)")  # before the operator changed the config
    with Running(stream_config(tmp_path, pg_database, ["public.renamed"], {"all": file_pipeline()})):
        sql(pg_database, "INSERT INTO renamed VALUES (4)")
        events = wait_for_lines(out, 4, timeout=30)
    assert [e["after"]["id"] for e in events] == [1, 2, 3, 4]


def test_generated_columns_are_absent_and_can_be_listed(pg_database, tmp_path):
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY, n int, twice int GENERATED ALWAYS AS (n * 2) STORED)")
    out = tmp_path / "out/all.jsonl"
    with Running(stream_config(tmp_path, pg_database, ["public.t"], {"all": file_pipeline()})):
        sql(pg_database, "INSERT INTO t (id, n) VALUES (1, 5)")
        events = wait_for_lines(out, 1)
    assert events[0]["after"] == {"id": 1, "n": 5}  # as documented in the type table (PostgreSQL 15)
    with setup.connect(pg_database, "db") as conn:  # what `cdc check` can warn about
        assert setup.generated_columns(conn, ["public.t"]) == {"public.t": ["twice"]}
