"""Flow control and slot hygiene on a real PostgreSQL: back-pressure, heartbeats,
logical decoding messages."""

import time

from pgutil import Running, file_pipeline, read_jsonl, sql, stream_config, wait_for_lines

SLOW_SINK = '''
import time

class SlowSink:
    """Takes 50 ms per batch of at most batch_size events."""
    def open(self): pass
    def write(self, events): time.sleep(0.05)
    def close(self): pass
'''


def test_back_pressure_bounds_events_in_flight(pg_database, tmp_path):
    (tmp_path / "slowsink.py").write_text(SLOW_SINK)
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY, pad text)")
    pipelines = {"slow": {"source": "db", "sinks": [{"type": "slowsink:SlowSink", "batch_size": 100}]}}
    cfg = stream_config(tmp_path, pg_database, ["public.t"], pipelines, max_in_flight_events=1000,
                 max_poll_events=200)
    peak = 0
    with Running(cfg) as running:
        sql(pg_database, "INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 20000) g")
        tracker = running.runner.tracker
        deadline = time.time() + 120
        while tracker.acked_events < 20000 and time.time() < deadline:
            peak = max(peak, tracker.events_in_flight)
            time.sleep(0.005)
        assert tracker.acked_events == 20000
    # the reader stops at the limit; one more poll of at most max_poll_events may pass it
    assert 1000 <= peak <= 1000 + 200


def test_heartbeat_moves_an_idle_slot(pg_database, tmp_path):
    """The captured table is idle while another table is busy: without a heartbeat the
    slot would hold all that WAL."""
    sql(pg_database, "CREATE TABLE captured (id int PRIMARY KEY)", "CREATE TABLE busy (id int PRIMARY KEY, pad text)")
    cfg = stream_config(tmp_path, pg_database, ["public.captured"], {"all": file_pipeline()},
                 heartbeat_interval=0.3, checkpoint_interval=0.1)
    with Running(cfg) as running:
        slot = running.runner.source.slot
        start = sql(pg_database, "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = %s",
                    params=(slot,))[0][0]
        sql(pg_database, "INSERT INTO busy SELECT g, repeat('y', 500) FROM generate_series(1, 5000) g")
        wal_after_busy = sql(pg_database, "SELECT pg_current_wal_lsn()")[0][0]
        deadline = time.time() + 5  # keepalives alone move it only every 10 s
        while time.time() < deadline:
            confirmed = sql(pg_database, "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = %s",
                            params=(slot,))[0][0]
            if confirmed >= wal_after_busy:
                break
            time.sleep(0.2)
    assert confirmed > start and confirmed >= wal_after_busy
    assert read_jsonl(tmp_path / "out/all.jsonl") == []  # heartbeats are not events


def test_logical_decoding_messages(pg_database, tmp_path):
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY)")
    cfg = stream_config(tmp_path, pg_database, ["public.t"], {"all": file_pipeline()}, messages=True)
    with Running(cfg):
        sql(pg_database, "BEGIN", "INSERT INTO t VALUES (1)",
            "SELECT pg_logical_emit_message(true, 'audit', 'order 1 created')", "COMMIT",
            "SELECT pg_logical_emit_message(false, 'ping', '\\x00ff'::bytea)")
        events = wait_for_lines(tmp_path / "out/all.jsonl", 3)
    insert, in_tx, outside = events
    assert insert["op"] == "c" and in_tx["op"] == "m" and outside["op"] == "m"
    assert in_tx["message"] == {"prefix": "audit", "content": "order 1 created"}
    assert in_tx["id"].split(":")[0] == insert["id"].split(":")[0]  # the same transaction
    assert outside["message"] == {"prefix": "ping", "content": "AP8=", "encoding": "base64"}
