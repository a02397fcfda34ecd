"""Peak RSS of `cdc run` carrying one 1,000,000-row transaction into Kafka, for both sources.

    .venv/bin/python bench/memory_bench.py [--rows 1000000] [--max-mib 150]

For PostgreSQL and for MariaDB in turn: `cdc run` (a real process, the defaults:
``max_in_flight_events`` 4096, ``max_in_flight_bytes`` 256 MiB) streams into a private
Kafka broker; one transaction inserts ``--rows`` rows of the orders table (notes of 30-110
characters); when the topic holds them all, `cdc run` is stopped with SIGTERM and its
peak RSS is read from ``wait4``.  Exits 1 when either is above ``--max-mib``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import yaml
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from servers import KafkaServer, MariaDBServer, PostgresServer  # noqa: E402


def topic_size(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "memory-bench"})
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1]
    finally:
        consumer.close()


def run_cdc(workdir: Path, source: dict, bootstrap: str, topic: str, rows: int, ready, write) -> float:
    """Start `cdc run`, wait for ``ready()``, ``write()``, wait for the topic; peak RSS in MiB."""
    cfg = {"sources": {"s": {**source, "checkpoint": {"type": "file", "path": "state.json"}, "snapshot": "never"}},
           "pipelines": {"p": {"source": "s", "sinks": [{"type": "kafka", "bootstrap_servers": bootstrap,
                                                         "topic": topic}]}}}
    path = workdir / "pipelines.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = open(workdir / "cdc.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "cdc", "run", str(path)], cwd=workdir, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"cdc did not start: {(workdir / 'cdc.log').read_text()[-2000:]}")
            time.sleep(0.2)
        started = time.monotonic()
        write()
        print(f"  one transaction of {rows:,} rows committed in {time.monotonic() - started:.1f}s", flush=True)
        deadline = time.monotonic() + 900
        while topic_size(bootstrap, topic) < rows:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"cdc stopped early: {(workdir / 'cdc.log').read_text()[-2000:]}")
            time.sleep(1)
        print(f"  all {rows:,} in Kafka {time.monotonic() - started:.1f}s after the write began", flush=True)
        proc.send_signal(signal.SIGTERM)
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"cdc exited {os.waitstatus_to_exitcode(status)}")
        return usage.ru_maxrss / 1024
    finally:
        if proc.poll() is None:
            proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--max-mib", type=float, default=150)
    args = parser.parse_args()
    rows = args.rows
    peaks: dict[str, float] = {}
    with KafkaServer() as kafka, tempfile.TemporaryDirectory(prefix="cdc-memory-bench-") as tmp:
        admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
        for topic in ("mem.pg", "mem.mysql"):
            admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(60)
        print("postgres:", flush=True)
        with PostgresServer() as pg:
            dsn = pg.create_database("mem")
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, status varchar(20),"
                             " amount numeric(12,2), note varchar(200), created_at timestamp)")
            workdir = Path(tmp) / "pg"
            workdir.mkdir()

            def pg_ready() -> bool:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    return bool(conn.execute("SELECT 1 FROM pg_replication_slots WHERE active").fetchone())

            def pg_write() -> None:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute("INSERT INTO orders SELECT g, g % 997, 'new', (g % 100000) / 100.0,"
                                 " left(repeat(md5(g::text), 4), 30 + g % 81), now()"
                                 f" FROM generate_series(1, {rows}) g")

            peaks["postgres"] = run_cdc(workdir, {"type": "postgres", "dsn": dsn, "tables": ["orders"]},
                                        kafka.bootstrap, "mem.pg", rows, pg_ready, pg_write)
            print(f"  peak RSS {peaks['postgres']:.0f} MiB", flush=True)
        print("mariadb:", flush=True)
        with MariaDBServer() as maria:
            maria.create_database("mem")
            with maria.connect("mem") as conn, conn.cursor() as cur:
                cur.execute("CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, status varchar(20),"
                            " amount decimal(12,2), note varchar(200), created_at datetime)")
            workdir = Path(tmp) / "mysql"
            workdir.mkdir()

            def maria_ready() -> bool:
                with maria.connect() as conn, conn.cursor() as cur:
                    cur.execute("SELECT 1 FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%'")
                    return cur.fetchone() is not None

            def maria_write() -> None:
                with maria.connect("mem") as conn, conn.cursor() as cur:
                    cur.execute("SET SESSION max_statement_time = 0")
                    cur.execute("INSERT INTO orders SELECT seq, seq % 997, 'new', (seq % 100000) / 100.0,"
                                " left(repeat(md5(seq), 4), 30 + seq % 81), now()"
                                f" FROM seq_1_to_{rows}")

            peaks["mariadb"] = run_cdc(workdir, {"type": "mysql", "dsn": maria.dsn("mem", user="cdc"),
                                                 "tables": ["mem.orders"], "server_id": 4501},
                                       kafka.bootstrap, "mem.mysql", rows, maria_ready, maria_write)
            print(f"  peak RSS {peaks['mariadb']:.0f} MiB", flush=True)
    ok = all(p <= args.max_mib for p in peaks.values())
    print(("PASS" if ok else "FAIL") + ": peak RSS " + ", ".join(f"{k} {v:.0f} MiB" for k, v in peaks.items())
          + f" (maximum {args.max_mib:.0f} MiB) for one {rows:,}-row transaction into Kafka")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
