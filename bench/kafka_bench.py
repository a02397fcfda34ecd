"""PostgreSQL -> Kafka: catch-up rows/s against cdc's own PostgreSQL -> discard and
pg_recvlogical, and latency at 5,000 rows/s.

    .venv/bin/python bench/kafka_bench.py [--min-discard-ratio 0.8] [--min-ratio 0.1] [--rate 5000] [--seconds 20]

1. The 400k workload (/work/shared/perf-anchors.md) is written while two pgoutput
   slots wait: one for cdc, one for pg_recvlogical.
2. Catch-up: pg_recvlogical (pgoutput -> /dev/null, TCP), cdc into ``discard`` and cdc
   (pgoutput source -> engine -> Kafka sink, every message acknowledged by the
   broker) each read all 400,000 changes from their own slot; rows/s and the ratios,
   measured in this run.
3. Steady state: a writer commits 50-row transactions 100 times a second (5,000
   rows/s); for each event, latency = when the Kafka sink's batch was acknowledged
   by the broker (``write`` returned) minus the source commit timestamp.

Exits 1 when cdc -> Kafka is below ``--min-discard-ratio`` x cdc -> discard (issue 13:
0.8), or below ``--min-ratio`` x pg_recvlogical's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import string
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from cdc.config import parse_config  # noqa: E402
from cdc.engine import SourceRunner, tune_process  # noqa: E402
from cdc.sinks.kafka import KafkaSink  # noqa: E402

from servers import (  # noqa: E402
    KafkaServer,
    PostgresServer,
    pg_bindir,  # noqa: E402
)

TRANSACTIONS, ROWS_PER_TX = 200, 1000
TOTAL = 2 * TRANSACTIONS * ROWS_PER_TX
TOPIC = "bench.orders"


class TimedKafkaSink(KafkaSink):
    """The Kafka sink, noting commit-to-acknowledged latency while ``latencies`` is a list:
    when ``wait`` confirms a batch (the worker keeps several in flight) or ``write`` returns."""

    latencies: list[float] | None = None

    def send(self, events):
        handle = super().send(events)
        self._sent = getattr(self, "_sent", {})
        self._sent[id(handle)] = (handle, events)
        return handle

    def wait(self, handle, timeout):
        done = super().wait(handle, timeout)
        if done:
            _, events = self._sent.pop(id(handle), (None, ()))
            if self.latencies is not None:
                now_ms = time.time() * 1000
                self.latencies.extend(now_ms - e.source["ts_ms"] for e in events)
        return done


def note(n: int) -> str:
    return "".join(random.choices(string.ascii_letters + " ", k=30 + n % 81))


def write_workload(dsn: str) -> str:
    """200 x INSERT 1,000 rows, then 200 x UPDATE 1,000 rows; returns the end LSN."""
    with psycopg.connect(dsn) as conn:
        for t in range(TRANSACTIONS):
            first = t * ROWS_PER_TX + 1
            rows = [(i, i % 997, "new", f"{i % 10000}.{i % 100:02d}", note(i))
                    for i in range(first, first + ROWS_PER_TX)]
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany("INSERT INTO orders (id, customer_id, status, amount, note, created_at)"
                                " VALUES (%s, %s, %s, %s, %s, now())", rows)
        for t in range(TRANSACTIONS):
            with conn.transaction():
                conn.execute("UPDATE orders SET status = 'shipped' WHERE id BETWEEN %s AND %s",
                             (t * ROWS_PER_TX + 1, (t + 1) * ROWS_PER_TX))
        return conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]


def time_pg_recvlogical(dsn: str, end_lsn: str) -> float:
    started = time.perf_counter()
    subprocess.run([f"{pg_bindir()}/pg_recvlogical", "-d", dsn, "--slot", "recv_bench", "--start",
                    "-o", "proto_version=1", "-o", "publication_names=cdc_bench",
                    "--endpos", end_lsn, "--no-loop", "-f", "/dev/null"], check=True)
    return time.perf_counter() - started


IN_FLIGHT: dict[str, int] = {}  # --max-in-flight-events: the source option, when given


def make_runner(dsn: str, bootstrap: str | None, workdir: Path, slot: str = "cdc_bench") -> SourceRunner:
    """cdc into Kafka, or into ``discard`` when ``bootstrap`` is None."""
    sink = ({"type": "kafka", "bootstrap_servers": bootstrap, "topic": TOPIC} if bootstrap
            else {"type": "discard"})
    raw = {"sources": {"bench": {"type": "postgres", "dsn": dsn, "tables": ["orders"],
                                 "slot": slot, "publication": "cdc_bench", "create": False,
                                 "checkpoint": {"type": "memory"}, "snapshot": "never", **IN_FLIGHT}},
           "pipelines": {"p": {"source": "bench", "sinks": [sink]}}}
    config = parse_config(raw, workdir / "bench.yaml", {})
    if bootstrap:
        config.pipelines["p"].sinks[0].factory = TimedKafkaSink
    tune_process()  # as `cdc run` does
    return SourceRunner(config, "bench", grace_period=60)


def wait_acked(runner: SourceRunner, count: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while runner.tracker.acked_events < count:
        if runner.error or time.monotonic() > deadline:
            raise SystemExit(f"cdc stopped at {runner.tracker.acked_events}/{count}: {runner.error}")
        time.sleep(0.005)


def paced_writer(dsn: str, rate: int, seconds: float, first_id: int) -> int:
    """Commit ``rate`` rows/s as 50-row transactions on a fixed schedule; returns rows written."""
    per_tx = 50
    interval = per_tx / rate
    written = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        start = time.monotonic()
        for i in range(int(seconds / interval)):
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            lo = first_id + written
            conn.execute("INSERT INTO orders SELECT g, g %% 997, 'new', 12.34, 'steady state row', now()"
                         " FROM generate_series(%s::bigint, %s::bigint) g", (lo, lo + per_tx - 1))
            written += per_tx
    return written


def cpu_seconds() -> float:
    """User + system CPU of this process (every thread: reader, sink, librdkafka)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--min-discard-ratio", type=float, default=0.8,
                        help="fail below this fraction of cdc -> discard rows/s (default 0.8)")
    parser.add_argument("--min-ratio", type=float, default=0.1,
                        help="fail below this fraction of pg_recvlogical's rows/s (default 0.1)")
    parser.add_argument("--rate", type=int, default=5000, help="steady-state rows/s (default 5000)")
    parser.add_argument("--seconds", type=float, default=20, help="steady-state duration (default 20)")
    parser.add_argument("--max-in-flight-events", type=int, help="the source option (default: cdc's default)")
    args = parser.parse_args()
    if args.max_in_flight_events:
        IN_FLIGHT["max_in_flight_events"] = args.max_in_flight_events

    with PostgresServer() as pg, KafkaServer() as kafka:
        dsn = pg.create_database("bench")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, status varchar(20),"
                         " amount numeric(12,2), note varchar(200), created_at timestamp)")
            conn.execute("CREATE PUBLICATION cdc_bench FOR TABLE orders")
            for slot in ("cdc_bench", "cdc_discard", "recv_bench"):
                conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
        admin.create_topics([NewTopic(TOPIC, 1, 1)])[TOPIC].result(60)
        print("writing the 400k workload...", flush=True)
        end_lsn = write_workload(dsn)

        recv_s = time_pg_recvlogical(dsn, end_lsn)
        discard = make_runner(dsn, None, pg.data_dir, slot="cdc_discard")
        engine = threading.Thread(target=discard.run, daemon=True)
        started, cpu = time.perf_counter(), cpu_seconds()
        engine.start()
        wait_acked(discard, TOTAL)
        discard_s, discard_cpu = time.perf_counter() - started, cpu_seconds() - cpu
        discard.request_stop()
        engine.join(60)
        runner = make_runner(dsn, kafka.bootstrap, pg.data_dir)
        engine = threading.Thread(target=runner.run, daemon=True)
        started, cpu = time.perf_counter(), cpu_seconds()
        engine.start()
        wait_acked(runner, TOTAL)
        cdc_s, kafka_cpu = time.perf_counter() - started, cpu_seconds() - cpu
        recv_rate, cdc_rate, discard_rate = TOTAL / recv_s, TOTAL / cdc_s, TOTAL / discard_s
        print(f"catch-up: pg_recvlogical {recv_rate:,.0f} rows/s; cdc -> discard {discard_rate:,.0f} rows/s;"
              f" cdc -> kafka (acked) {cdc_rate:,.0f} rows/s; kafka/discard {cdc_rate / discard_rate:.3f},"
              f" kafka/pg_recvlogical {cdc_rate / recv_rate:.3f}; cdc CPU seconds: discard {discard_cpu:.1f},"
              f" kafka {kafka_cpu:.1f}", flush=True)

        sink = runner.workers[0].sink
        sink.latencies = []
        written = paced_writer(dsn, args.rate, args.seconds, first_id=TOTAL + 1)
        wait_acked(runner, TOTAL + written, timeout=120)
        runner.request_stop()
        engine.join(60)
        lat = sink.latencies
        p50, p99 = percentile(lat, 50), percentile(lat, 99)
        achieved = written / args.seconds
        print(f"steady state: {written:,} rows at {achieved:,.0f} rows/s; commit -> acknowledged "
              f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(lat):.1f} ms (mean {statistics.mean(lat):.1f})")

    results = {"pg_recvlogical_rows_s": round(recv_rate), "cdc_discard_rows_s": round(discard_rate),
               "cdc_kafka_rows_s": round(cdc_rate), "ratio": round(cdc_rate / recv_rate, 3),
               "kafka_discard_ratio": round(cdc_rate / discard_rate, 3),
               "cpu_s": {"discard": round(discard_cpu, 1), "kafka": round(kafka_cpu, 1)}, "steady_rows_s": round(achieved),
               "latency_ms": {"p50": round(p50, 1), "p99": round(p99, 1), "max": round(max(lat), 1)}}
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "kafka_bench.json").write_text(json.dumps(results, indent=2) + "\n")
    ok = cdc_rate / recv_rate >= args.min_ratio and cdc_rate / discard_rate >= args.min_discard_ratio
    print(("PASS" if ok else "FAIL") + f": kafka/discard {cdc_rate / discard_rate:.3f} (minimum"
          f" {args.min_discard_ratio}), kafka/pg_recvlogical {cdc_rate / recv_rate:.3f} (minimum {args.min_ratio})")
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
