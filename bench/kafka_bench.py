"""PostgreSQL -> Kafka catch-up: rows/s against cdc's own PostgreSQL -> discard (issue 13).

    .venv/bin/python bench/kafka_bench.py [--rounds 3] [--min-discard-ratio 0.8] [--min-ratio 0.1]
        [--max-in-flight-events N] [--sink-config JSON]

1. The 400k workload (/work/shared/perf-anchors.md) is written while the pgoutput
   slots wait: one for pg_recvlogical, and one per round for each cdc run.
2. pg_recvlogical (pgoutput -> /dev/null, TCP) reads all 400,000 changes once.
3. Each round runs cdc in this process, into ``discard`` and into Kafka (pgoutput
   source -> engine -> Kafka sink, every message acknowledged by the broker, one
   partition), each from its own slot; the order alternates between rounds.
   Reported per run: rows/s, cdc's CPU seconds (every thread) and the broker's.
4. Each round also times a bare producer in this process: 400,000 messages of the size
   of cdc's (the envelope of a change of this workload, its key and two headers), the
   sink's producer settings, produced in a plain loop and flushed: what producing alone
   costs here, with nothing read or serialised.  bare / discard above 1 / 0.8 says
   how much of the Kafka run's time producing alone would need if it overlapped
   the reading perfectly.  The producing thread's own CPU seconds (``produce`` and the
   delivery reports, which confluent-kafka serves with the GIL held, one per message)
   cannot overlap cdc's reading in one process: discard time / (discard time + that)
   is reported as the ceiling of kafka/discard.
5. The CPU budget: a Kafka run at ``--min-discard-ratio`` of the discard run needs at least
   the discard run's CPU (cdc and its walsender, which decodes the WAL) plus what producing
   alone costs (the bare producer's process and the broker's CPU), all within the discard
   run's time / ratio, on every core of the machine.  When it needs more than the cores
   have, the target is out of this machine's reach whatever cdc does.

Commit -> acknowledged latency under steady writers is ``bench/latency_bench.py``.

Exits 1 when the median of the rounds' Kafka / discard ratios is below
``--min-discard-ratio`` (issue 13: 0.8), or Kafka below ``--min-ratio`` x pg_recvlogical.
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
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from cdc.config import parse_config  # noqa: E402
from cdc.engine import SourceRunner, tune_process  # noqa: E402
from cdc.event import ChangeEvent  # noqa: E402

from servers import (  # noqa: E402
    KafkaServer,
    PostgresServer,
    pg_bindir,  # noqa: E402
)

TRANSACTIONS, ROWS_PER_TX = 200, 1000
TOTAL = 2 * TRANSACTIONS * ROWS_PER_TX
TOPIC = "bench.orders"


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
SINK_OPTIONS: dict = {}  # --sink-config


def make_runner(dsn: str, bootstrap: str | None, workdir: Path, slot: str = "cdc_bench") -> SourceRunner:
    """cdc into Kafka, or into ``discard`` when ``bootstrap`` is None."""
    sink = ({"type": "kafka", "bootstrap_servers": bootstrap, "topic": TOPIC, **SINK_OPTIONS} if bootstrap
            else {"type": "discard"})
    raw = {"sources": {"bench": {"type": "postgres", "dsn": dsn, "tables": ["orders"],
                                 "slot": slot, "publication": "cdc_bench", "create": False,
                                 "checkpoint": {"type": "memory"}, "snapshot": "never", **IN_FLIGHT}},
           "pipelines": {"p": {"source": "bench", "sinks": [sink]}}}
    config = parse_config(raw, workdir / "bench.yaml", {})
    tune_process()  # as `cdc run` does
    return SourceRunner(config, "bench", grace_period=60)


def wait_acked(runner: SourceRunner, count: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while runner.tracker.acked_events < count:
        if runner.error or time.monotonic() > deadline:
            raise SystemExit(f"cdc stopped at {runner.tracker.acked_events}/{count}: {runner.error}")
        time.sleep(0.005)


def cpu_seconds() -> float:
    """User + system CPU of this process (every thread: reader, sink, librdkafka)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of another process (the broker's JVM), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def catch_up(dsn: str, bootstrap: str | None, workdir: Path, slot: str, broker_pid: int) -> dict:
    """Run cdc from ``slot`` until all 400,000 changes are acknowledged: rows/s, CPU seconds."""
    runner = make_runner(dsn, bootstrap, workdir, slot=slot)
    engine = threading.Thread(target=runner.run, daemon=True)
    started, cpu, broker = time.perf_counter(), cpu_seconds(), proc_cpu(broker_pid)
    engine.start()
    walsender = walsender_pid(dsn, slot)
    wait_acked(runner, TOTAL)
    seconds = time.perf_counter() - started
    result = {"rows_s": TOTAL / seconds, "cpu_s": cpu_seconds() - cpu, "broker_cpu_s": proc_cpu(broker_pid) - broker,
              "walsender_cpu_s": proc_cpu(walsender)}
    runner.request_stop()
    engine.join(60)
    return result


def walsender_pid(dsn: str, slot: str) -> int:
    """The server process that decodes ``slot`` for cdc (its CPU: the same WAL decoded)."""
    deadline = time.monotonic() + 30
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
            if row and row[0]:
                return row[0]
            time.sleep(0.01)
    raise SystemExit(f"slot {slot}: no walsender within 30 s")


def warm_up_broker(bootstrap: str) -> None:
    """200,000 messages to another topic first: the broker's JIT then warms up before the
    first timed run rather than during it (without this, the first Kafka run took about
    twice the broker CPU of the later ones)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "compression.type": "lz4",
                         "enable.idempotence": True, "acks": "all"})
    value = b"x" * 300
    for i in range(200_000):
        while True:
            try:
                producer.produce("bench.warmup", value, str(i).encode(), headers=[("id", b"0/0:0")])
                break
            except BufferError:
                producer.poll(0.1)
    producer.flush(120)


def bare_producer(bootstrap: str, broker_pid: int) -> dict:
    """A plain loop producing TOTAL messages of ``value``'s size, then a flush (see step 4)."""
    conf = {"linger.ms": 5, "compression.type": "lz4", "queue.buffering.max.messages": 1_000_000,
            "enable.idempotence": True, "acks": "all", "bootstrap.servers": bootstrap}
    producer = Producer(conf)
    producer.list_topics(timeout=30)  # connected before the clock starts, as cdc's sink is
    started, cpu, broker = time.perf_counter(), cpu_seconds(), proc_cpu(broker_pid)
    thread_cpu = time.thread_time()
    produce = producer.produce
    insert, update = values()
    for i in range(TOTAL):
        key = b'{"id":%d}' % i
        value, op = (insert, b"c") if i < TOTAL // 2 else (update, b"u")
        while True:
            try:
                produce("bench.bare", value, key, headers=[("id", b"0/1A2B3C8:%d" % i), ("op", op)])
                break
            except BufferError:
                producer.poll(0.1)
    produce_cpu = time.thread_time() - thread_cpu  # produce() holds the GIL throughout
    if producer.flush(120) != 0:
        raise SystemExit("bare producer: messages left after flush")
    seconds = time.perf_counter() - started
    return {"rows_s": TOTAL / seconds, "cpu_s": cpu_seconds() - cpu, "broker_cpu_s": proc_cpu(broker_pid) - broker,
            "thread_cpu_s": time.thread_time() - thread_cpu, "produce_cpu_s": produce_cpu}


def values() -> tuple[bytes, bytes]:
    """Envelopes the size of cdc's for this workload: an insert and an update (before and after)."""
    row = {"id": 123456, "customer_id": 123, "status": "new", "amount": "3456.56", "note": note(70),
           "created_at": "2026-12-01T03:30:00.123456Z"}
    source = {"connector": "postgresql", "name": "bench", "db": "bench", "schema": "public", "table": "orders",
              "lsn": 27405256, "txId": 771, "ts_ms": 1764091000123}
    insert = ChangeEvent("0/1A2B3C8:12", "c", None, row, {"id": 123456}, source, 1764091000456, "public.orders")
    update = insert.replace(op="u", before=row, after=dict(row, status="shipped"))
    return insert.to_json(), update.to_json()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--min-discard-ratio", type=float, default=0.8,
                        help="fail below this fraction of cdc -> discard rows/s (default 0.8)")
    parser.add_argument("--min-ratio", type=float, default=0.1,
                        help="fail below this fraction of pg_recvlogical's rows/s (default 0.1)")
    parser.add_argument("--rounds", type=int, default=3, help="discard/Kafka pairs, alternating (default 3)")
    parser.add_argument("--max-in-flight-events", type=int, help="the source option (default: cdc's default)")
    parser.add_argument("--sink-config", default="{}", help="JSON: extra options of the kafka sink")
    args = parser.parse_args()
    if args.max_in_flight_events:
        IN_FLIGHT["max_in_flight_events"] = args.max_in_flight_events
    SINK_OPTIONS.update(json.loads(args.sink_config))

    with PostgresServer() as pg, KafkaServer() as kafka:
        dsn = pg.create_database("bench")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, status varchar(20),"
                         " amount numeric(12,2), note varchar(200), created_at timestamp)")
            conn.execute("CREATE PUBLICATION cdc_bench FOR TABLE orders")
            slots = ["recv_bench"] + [f"{kind}_{i}" for i in range(args.rounds) for kind in ("discard", "kafka")]
            for slot in slots:
                conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
        admin.create_topics([NewTopic(TOPIC, 1, 1)])[TOPIC].result(60)
        warm_up_broker(kafka.bootstrap)
        print("writing the 400k workload...", flush=True)
        end_lsn = write_workload(dsn)

        recv_rate = TOTAL / time_pg_recvlogical(dsn, end_lsn)
        print(f"pg_recvlogical {recv_rate:,.0f} rows/s", flush=True)
        rounds = []
        for i in range(args.rounds):  # discard first in even rounds, Kafka first in odd ones
            order = [None, kafka.bootstrap] if i % 2 == 0 else [kafka.bootstrap, None]
            done = {("kafka" if b else "discard"): catch_up(dsn, b, pg.data_dir, f"{'kafka' if b else 'discard'}_{i}",
                                                            kafka.pid)
                    for b in order}
            d, k = done["discard"], done["kafka"]
            b = bare_producer(kafka.bootstrap, kafka.pid)
            # produce() holds the GIL throughout, and each delivery report takes it once (served by
            # flush): work no other thread of cdc's overlaps.  Added to the discard run's time, the
            # producing thread's CPU bounds what a Kafka run in one Python process can reach; its
            # produce() calls alone give a bound that counts nothing but GIL-held work.
            ceiling = (TOTAL / d["rows_s"]) / (TOTAL / d["rows_s"] + b["thread_cpu_s"])
            strict = (TOTAL / d["rows_s"]) / (TOTAL / d["rows_s"] + b["produce_cpu_s"])
            # The CPU a Kafka run at the target would need, at least, against what the machine has in
            # that time: the discard run's cdc and walsender, plus producing alone (its process and the
            # broker), all within min_discard_ratio of the discard run's time on every core.
            needed = d["cpu_s"] + d["walsender_cpu_s"] + b["cpu_s"] + b["broker_cpu_s"]
            available = (os.cpu_count() or 1) * (TOTAL / d["rows_s"]) / args.min_discard_ratio
            rounds.append({"discard": d, "kafka": k, "bare": b, "ratio": k["rows_s"] / d["rows_s"],
                           "bare_ratio": b["rows_s"] / d["rows_s"], "ceiling": ceiling, "strict_ceiling": strict,
                           "cpu_needed_s": needed, "cpu_available_s": available})
            print(f"round {i + 1}: cdc -> discard {d['rows_s']:,.0f} rows/s (cdc CPU {d['cpu_s']:.1f} s);"
                  f" cdc -> kafka (acked) {k['rows_s']:,.0f} rows/s (cdc CPU {k['cpu_s']:.1f} s, broker CPU"
                  f" {k['broker_cpu_s']:.1f} s); kafka/discard {rounds[-1]['ratio']:.3f}; bare producer"
                  f" {b['rows_s']:,.0f} msg/s (CPU {b['cpu_s']:.1f} s, broker CPU {b['broker_cpu_s']:.1f} s),"
                  f" bare/discard {rounds[-1]['bare_ratio']:.3f}; the bare producer's own thread {b['thread_cpu_s']:.2f}"
                  f" CPU s ({b['produce_cpu_s']:.2f} in produce()): kafka/discard at most {ceiling:.3f}"
                  f" ({strict:.3f} from produce() alone); CPU for {args.min_discard_ratio}x: at least {needed:.1f} s"
                  f" (cdc {d['cpu_s']:.1f} + its walsender {d['walsender_cpu_s']:.1f} + producing alone {b['cpu_s']:.1f}"
                  f" + the broker {b['broker_cpu_s']:.1f}), {os.cpu_count()} cores have {available:.1f} s in that"
                  f" time", flush=True)

    ratios = sorted(r["ratio"] for r in rounds)
    ratio = statistics.median(ratios)
    kafka_rate = statistics.median(r["kafka"]["rows_s"] for r in rounds)
    bare_ratio = statistics.median(r["bare_ratio"] for r in rounds)
    ceiling = statistics.median(r["ceiling"] for r in rounds)
    strict = statistics.median(r["strict_ceiling"] for r in rounds)
    print(f"bare producer alone / cdc -> discard: median {bare_ratio:.3f}")
    needed = statistics.median(r["cpu_needed_s"] for r in rounds)
    available = statistics.median(r["cpu_available_s"] for r in rounds)
    print(f"CPU a Kafka run at {args.min_discard_ratio}x of discard needs at least, median {needed:.1f} s; the machine's"
          f" {os.cpu_count()} cores have {available:.1f} s in that time"
          + (": the target needs more CPU than this machine has" if needed > available else ""))
    print(f"ceiling: discard time / (discard time + the bare producer thread's CPU), median {ceiling:.3f};"
          f" with its produce() calls alone {strict:.3f}")
    results = {"pg_recvlogical_rows_s": round(recv_rate), "kafka_discard_ratio_median": round(ratio, 3),
               "bare_producer_discard_ratio_median": round(bare_ratio, 3), "ceiling_median": round(ceiling, 3),
               "produce_only_ceiling_median": round(strict, 3), "cpu_needed_s_median": round(needed, 2),
               "cpu_available_s_median": round(available, 2),
               "kafka_discard_ratios": [round(r, 3) for r in ratios],
               "rounds": [{k: ({n: round(v, 1) for n, v in r[k].items()} if isinstance(r[k], dict) else round(r[k], 3))
                           for k in r} for r in rounds], "sink_config": SINK_OPTIONS}
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "kafka_bench.json").write_text(json.dumps(results, indent=2) + "\n")
    ok = kafka_rate / recv_rate >= args.min_ratio and ratio >= args.min_discard_ratio
    print(("PASS" if ok else "FAIL") + f": kafka/discard median {ratio:.3f} (rounds {', '.join(f'{r:.3f}' for r in ratios)};"
          f" minimum {args.min_discard_ratio}), kafka/pg_recvlogical {kafka_rate / recv_rate:.3f} (minimum {args.min_ratio})")
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
