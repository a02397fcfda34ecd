"""``max_in_flight_bytes`` holds for one transaction of wide rows, from both sources: the
reader stops between polls once the bytes of change log read but not acknowledged reach
the limit, and one poll reads at most about 1 MiB (or one larger row)."""

from __future__ import annotations

import threading
import time

from cdc.config import parse_config
from cdc.engine import SourceRunner

from mysql_helpers import db_of, execute
from pgutil import sql

ROWS, ROW_BYTES = 120, 256 * 1024      # one transaction of 30 MiB
LIMIT = 4 << 20                        # max_in_flight_bytes
SLACK = (1 << 20) + 2 * ROW_BYTES      # one poll: ~1 MiB of log, or one frame larger than that


class SlowSink:
    """Acknowledges slowly, so that the reader runs into the limit."""

    def __init__(self) -> None:
        self.events = 0

    def open(self) -> None: ...

    def write(self, events) -> None:
        time.sleep(0.02)
        self.events += len(events)

    def close(self) -> None: ...


def _run(raw: dict, tmp_path, write) -> tuple[int, int]:
    config = parse_config(raw, tmp_path / "c.yaml", {})
    config.pipelines["p"].sinks[0].factory = SlowSink
    runner = SourceRunner(config, "s", grace_period=30)
    peak = [0]
    runner.on_tick.append(lambda r: peak.__setitem__(0, max(peak[0], r.tracker.bytes_in_flight)))
    engine = threading.Thread(target=runner.run, daemon=True)
    engine.start()
    try:
        deadline = time.monotonic() + 30
        while not runner.source_connected:
            assert engine.is_alive() and time.monotonic() < deadline, runner.error
            time.sleep(0.05)
        write()
        deadline = time.monotonic() + 180
        while runner.tracker.acked_events < ROWS:
            assert engine.is_alive() and runner.error is None and time.monotonic() < deadline, \
                (runner.tracker.acked_events, runner.error)
            time.sleep(0.05)
    finally:
        runner.request_stop()
        engine.join(60)
    return peak[0], runner.tracker.acked_events


def test_postgres_transaction_of_wide_rows_stays_within_max_in_flight_bytes(pg_database, tmp_path):
    sql(pg_database, "CREATE TABLE wide (id int PRIMARY KEY, payload text NOT NULL)",
        "ALTER TABLE wide ALTER payload SET STORAGE EXTERNAL")  # not compressed
    raw = {"sources": {"s": {"type": "postgres", "dsn": pg_database, "tables": ["wide"],
                             "checkpoint": {"type": "memory"}, "snapshot": "never",
                             "max_in_flight_events": 1_000_000, "max_in_flight_bytes": LIMIT}},
           "pipelines": {"p": {"source": "s", "sinks": [{"type": "discard", "batch_size": 4}]}}}
    peak, acked = _run(raw, tmp_path, lambda: sql(
        pg_database, f"INSERT INTO wide SELECT g, repeat(md5(g::text), {ROW_BYTES // 32})"
                     f" FROM generate_series(1, {ROWS}) g"))
    print(f"postgres: peak bytes in flight {peak / 2**20:.1f} MiB (limit {LIMIT / 2**20:.0f} MiB)")
    assert acked == ROWS
    assert LIMIT // 2 < peak <= LIMIT + SLACK


def test_mysql_transaction_of_wide_rows_stays_within_max_in_flight_bytes(mariadb_server, mariadb_database,
                                                                       tmp_path):
    db = db_of(mariadb_database)
    execute(mariadb_server, db, "CREATE TABLE wide (id int PRIMARY KEY, payload longtext NOT NULL)")
    raw = {"sources": {"s": {"type": "mysql", "dsn": mariadb_server.dsn(db, user="cdc"), "server_id": 4377,
                             "tables": [f"{db}.wide"], "checkpoint": {"type": "memory"}, "snapshot": "never",
                             "max_in_flight_events": 1_000_000, "max_in_flight_bytes": LIMIT}},
           "pipelines": {"p": {"source": "s", "sinks": [{"type": "discard", "batch_size": 4}]}}}

    def write() -> None:
        values = ", ".join(f"({i}, repeat(md5({i}), {ROW_BYTES // 32}))" for i in range(1, ROWS + 1))
        execute(mariadb_server, db, "SET SESSION max_statement_time = 0",
                f"INSERT INTO wide VALUES {values}")

    peak, acked = _run(raw, tmp_path, write)
    print(f"mysql: peak bytes in flight {peak / 2**20:.1f} MiB (limit {LIMIT / 2**20:.0f} MiB)")
    assert acked == ROWS
    assert LIMIT // 2 < peak <= LIMIT + SLACK
