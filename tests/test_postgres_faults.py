"""Faults on a real PostgreSQL: the walsender killed in the middle of a large
transaction, a sink down at shutdown, the database down at shutdown."""

import json
import time

from _ops_helpers import wait_for
from pgutil import Running, file_pipeline, read_jsonl, sql, stream_config
from servers import PostgresServer

DOWN_SINK = '''
from cdc.errors import TransientSinkError

class DownSink:
    """Its destination never answers."""
    def open(self): pass
    def write(self, events): raise TransientSinkError("destination unreachable")
    def close(self): pass
'''


def test_walsender_killed_mid_transaction_no_gap_no_duplicate(pg_database, tmp_path):
    sql(pg_database, "CREATE TABLE big (id int PRIMARY KEY, pad text)")
    cfg = stream_config(tmp_path, pg_database, ["public.big"], {"all": file_pipeline()},
                 max_in_flight_events=2000, max_poll_events=500)
    out = tmp_path / "out/all.jsonl"
    kills = 0
    with Running(cfg) as running:
        slot = running.runner.source.slot
        sql(pg_database, "INSERT INTO big SELECT g, repeat('z', 200) FROM generate_series(1, 60000) g")
        deadline = time.time() + 120
        while running.runner.counts["received"] < 60000 and time.time() < deadline:
            received = running.runner.counts["received"]
            if kills < 3 and received > (kills + 1) * 12000:  # mid-transaction: 60,000 rows, one commit
                killed = sql(pg_database, "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                                          " WHERE slot_name = %s AND active", params=(slot,))
                kills += bool(killed and killed[0][0])
            time.sleep(0.01)
        while not running.runner.tracker.drained and time.time() < deadline:
            time.sleep(0.05)
    assert kills == 3
    events = read_jsonl(out)
    ids = [e["after"]["id"] for e in events]
    assert len(ids) == len(set(ids)) == 60000, f"{len(ids)} events, {len(set(ids))} distinct"
    assert sorted(ids) == list(range(1, 60001))
    assert len({e["id"] for e in events}) == 60000


def test_shutdown_with_a_sink_down_neither_skips_nor_acknowledges(pg_database, tmp_path):
    (tmp_path / "downsink.py").write_text(DOWN_SINK)
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY)")
    pipelines = {"p": {"source": "db", "sinks": [{"type": "downsink:DownSink", "on_error": "skip",
                                                  "retry": {"initial_backoff": 0.1, "max_backoff": 0.2}}]}}
    cfg = stream_config(tmp_path, pg_database, ["public.t"], pipelines)
    running = Running(cfg)
    running.runner.grace_period = 1.0
    with running:
        sql(pg_database, "INSERT INTO t VALUES (1), (2)")
        wait_for(lambda: running.runner.counts["received"] >= 2, 30, "2 events read")
        before = sql(pg_database, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots"
                                  " WHERE slot_name = %s", params=(running.runner.source.slot,))[0][0]
    worker = running.runner.workers[0]
    assert worker.counts["skipped"] == 0 and worker.counts["written"] == 0
    assert running.runner.tracker.acked_events == 0
    saved = tmp_path / "state/db.json"
    position = json.loads(saved.read_text())["position"]["lsn"] if saved.exists() else None
    assert position is None or position == before  # nothing past the undelivered inserts


def test_stop_during_a_source_outage_with_a_sink_down_does_not_hang(tmp_path):
    (tmp_path / "downsink.py").write_text(DOWN_SINK)
    with PostgresServer() as server:
        dsn = server.create_database("shop")
        sql(dsn, "CREATE TABLE t (id int PRIMARY KEY)")
        pipelines = {"p": {"source": "db", "sinks": [{"type": "downsink:DownSink"}]}}
        cfg = stream_config(tmp_path, dsn, ["public.t"], pipelines)
        running = Running(cfg)
        running.runner.grace_period = 2.0
        with running:
            sql(dsn, "INSERT INTO t VALUES (1)")
            wait_for(lambda: running.runner.counts["received"] >= 1, 30, "1 event read")
            server.kill()  # the source goes away while the sink holds an event
            time.sleep(1.0)
            started = time.monotonic()
            running.runner.request_stop()
            running.thread.join(20)
            assert not running.thread.is_alive(), "stop hung"
            assert time.monotonic() - started < 15
