"""PostgreSQL -> Kafka: commit -> acknowledged latency under steady writers (issue 13).

    .venv/bin/python bench/latency_bench.py [--rates 1000,5000,20000] [--seconds 20]
        [--rows-per-tx 20] [--rows-per-writer 10000] [--max-p99-ms 20] [--data-on tmpfs,disk]

cdc runs in this process (pgoutput source -> engine -> Kafka sink, the sink's defaults:
acks=all, idempotence), one topic with one partition on a local single-node broker.
For each rate in turn, writer *processes* (one per ``--rows-per-writer`` rows/s, so
that they do not take the GIL from cdc) commit ``--rows-per-tx``-row INSERT
transactions on a fixed schedule over their own connections (autocommit, one
``INSERT ... SELECT generate_series`` per transaction).

For every change: latency = when the Kafka sink confirmed the batch holding it (the
worker's ``wait`` returned True: the broker had acknowledged every message of it)
minus the transaction's commit timestamp (``source.ts_ms``, PostgreSQL's commit time,
truncated to the millisecond, so a latency is overstated by < 1 ms).  The first
``--warmup`` seconds of each rate are left out.  Reported per rate: the achieved
rate (rows committed / seconds from the first to the last commit), p50, p99, p999
and max.

The whole measurement runs once per ``--data-on`` placement of the servers' data: on
tmpfs, then on the disk.  PostgreSQL and Kafka share this machine and its one virtual
disk; there, the writers' own INSERTs (autocommit) stall for tens of ms now and then
(reported as "INSERT p99"), and every change of such a transaction reaches the
walsender that much later.  The target is checked on the first placement (tmpfs: the
disk is left out of a figure about cdc); the other is reported beside it.

Exits 1 when p99 > ``--max-p99-ms`` at the highest rate, 2 when the writers did not
sustain 95% of that rate (the figure would not mean what it says).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from cdc.config import parse_config  # noqa: E402
from cdc.engine import SourceRunner, tune_process  # noqa: E402
from cdc.event import ChangeEvent  # noqa: E402
from cdc.sinks.kafka import KafkaSink  # noqa: E402

from servers import KafkaServer, PostgresServer  # noqa: E402

TOPIC = "bench.orders"


# --data-on: the base directory of the servers' data (None: the system's temporary directory)
DATA_ON = {"tmpfs": "/dev/shm", "disk": None}

PG_EPOCH_MS = 946_684_800_000  # 2000-01-01, PostgreSQL's timestamp epoch, in Unix ms
SENT: dict[str, float] = {}    # event id -> when PostgreSQL's walsender sent it, Unix ms


def note_send_times(source) -> None:
    """Wrap ``source.poll`` (this instance only) to note, for every event it returns,
    the send time that PostgreSQL's walsender wrote into the first XLogData message of
    the buffer read (``sendTime``): an event is never sent before that, so the stage
    "sent by PostgreSQL -> acknowledged" is overstated, never understated."""
    poll = source.poll

    def timed_poll(timeout):
        stream = source.stream
        receive = stream.receive
        first = []

        def noting_receive(t):
            received = receive(t)
            if received is not None:  # (buffer, where this poll starts reading it)
                buf, p = received
                # CopyData 'd', length, XLogData 'w', start LSN, end LSN, sendTime (µs since 2000)
                if len(buf) >= p + 30 and buf[p] == 0x64 and buf[p + 5] == 0x77:
                    first.append(int.from_bytes(buf[p + 22:p + 30], "big", signed=True) / 1000 + PG_EPOCH_MS)
            return received

        stream.receive = noting_receive
        try:
            items = poll(timeout)
        finally:
            del stream.receive
        if first:
            for item in items:
                if isinstance(item, ChangeEvent):
                    SENT[item.id] = first[0]
        return items

    source.poll = timed_poll


class AckTimedKafkaSink(KafkaSink):
    """The Kafka sink noting, for every event of a confirmed batch, (commit, sent by
    PostgreSQL, read by the source, produced, acknowledged), wall-clock ms."""

    samples: list[tuple[int, float, int, float, float]] | None = None

    def send(self, events):
        handle = super().send(events)
        self._sent = getattr(self, "_sent", {})
        self._sent[id(handle)] = (events, time.time() * 1000)
        return handle

    def wait(self, handle, timeout):
        done = super().wait(handle, timeout)
        if done:
            events, sent_ms = self._sent.pop(id(handle), ((), 0.0))
            if self.samples is not None:
                now_ms = time.time() * 1000
                self.samples.extend((e.source["ts_ms"], SENT.pop(e.id, e.ts_ms), e.ts_ms, sent_ms, now_ms)
                                    for e in events)
        return done


def writer(dsn: str, rate: float, seconds: float, first_id: int, per_tx: int) -> None:
    """A child process: commit ``rate`` rows/s as ``per_tx``-row transactions on a fixed
    schedule; prints {rows, first, last (commit wall times), behind (worst lag, s), took
    (each INSERT's own time, ms: what the application waits for its commit)}."""
    interval = per_tx / rate
    written, behind, took = 0, 0.0, []
    first = last = 0.0
    with psycopg.connect(dsn, autocommit=True) as conn:
        start = time.monotonic() + 0.2
        for i in range(int(seconds / interval)):
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                behind = max(behind, -delay)
            lo = first_id + written
            began = time.perf_counter()
            conn.execute("INSERT INTO orders SELECT g, g %% 997, 'new', 12.34, 'steady state row', now()"
                         " FROM generate_series(%s::bigint, %s::bigint) g", (lo, lo + per_tx - 1))
            took.append((time.perf_counter() - began) * 1000)
            last = time.time()
            first = first or last
            written += per_tx
    print(json.dumps({"rows": written, "first": first, "last": last, "behind": behind, "took": took}))


def run_writers(dsn: str, rate: int, seconds: float, first_id: int, per_tx: int, per_writer: int) -> dict:
    count = max(1, math.ceil(rate / per_writer))
    span = 10 * int(rate * seconds) + 1_000_000  # id range of each writer
    procs = [subprocess.Popen([sys.executable, __file__, "--writer", dsn, str(rate / count), str(seconds),
                               str(first_id + k * span), str(per_tx)], stdout=subprocess.PIPE)
             for k in range(count)]
    reports = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"a writer failed (exit {proc.returncode})")
        reports.append(json.loads(out))
    rows = sum(r["rows"] for r in reports)
    took = sorted(t for r in reports for t in r["took"])
    first, last = min(r["first"] for r in reports), max(r["last"] for r in reports)
    return {"writers": count, "rows": rows, "first": first, "last": last,
            "achieved": rows / max(last - first, 1e-9), "behind_s": max(r["behind"] for r in reports),
            "insert_p99_ms": percentile(took, 99) if took else 0.0, "insert_max_ms": took[-1] if took else 0.0,
            "next_id": first_id + count * span}


def percentile(ordered: list[float], p: float) -> float:
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_acked(runner: SourceRunner, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while runner.tracker.acked_events < count:
        if runner.error or time.monotonic() > deadline:
            raise SystemExit(f"cdc stopped at {runner.tracker.acked_events}/{count}: {runner.error}")
        time.sleep(0.01)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="1000,5000,20000", help="rows/s, in the order run")
    parser.add_argument("--seconds", type=float, default=20, help="duration of each rate (default 20)")
    parser.add_argument("--warmup", type=float, default=2, help="seconds left out at the start of each rate")
    parser.add_argument("--rows-per-tx", type=int, default=20, help="rows per transaction (default 20)")
    parser.add_argument("--rows-per-writer", type=int, default=10_000,
                        help="rows/s of one writer process (default 10,000)")
    parser.add_argument("--max-p99-ms", type=float, default=20, help="p99 target at the highest rate")
    parser.add_argument("--sink-config", default="{}", help="JSON: extra options of the kafka sink")
    parser.add_argument("--data-on", default="tmpfs,disk",
                        help="where the servers keep their data, in the order run: tmpfs (/dev/shm) and/or disk"
                             " (the system's temporary directory); the target is checked on the first")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    places = [p.strip() for p in args.data_on.split(",") if p.strip()]
    if not places or any(p not in DATA_ON for p in places):
        parser.error(f"--data-on: a list of {' and '.join(DATA_ON)}")
    if "tmpfs" in places and not os.path.isdir(DATA_ON["tmpfs"] or ""):
        parser.error(f"--data-on tmpfs: no {DATA_ON['tmpfs']} on this machine (try --data-on disk)")
    tune_process()  # as `cdc run` does
    results: dict[str, list[dict]] = {}
    for place in places:
        print(f"servers' data on {place} ({DATA_ON[place] or tempfile.gettempdir()}):", flush=True)
        with tempfile.TemporaryDirectory(prefix="cdc-latency-", dir=DATA_ON[place]) as base:
            os.chmod(base, 0o755)  # run as root, PostgreSQL runs as postgres and needs to enter it
            results[place] = measure(args, rates, Path(base))
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "latency_bench.json").write_text(json.dumps(results, indent=2) + "\n")
    for place in places[1:]:
        top = results[place][-1]
        print(f"for comparison, data on {place}: p99 {top['p99']} ms at {top['rate']:,} rows/s; the writers' own"
              f" INSERT (autocommit) p99 {top['insert_p99_ms']} ms, max {top['insert_max_ms']} ms")
    top = results[places[0]][-1]
    if top["achieved"] < 0.95 * top["rate"]:
        print(f"INVALID: the writers reached {top['achieved']:,} of {top['rate']:,} rows/s")
        return 2
    ok = top["p99"] <= args.max_p99_ms
    print(("PASS" if ok else "FAIL") + f": p99 {top['p99']} ms at {top['rate']:,} rows/s, data on {places[0]}"
          f" (maximum {args.max_p99_ms} ms)")
    return 0 if ok else 1


def measure(args: argparse.Namespace, rates: list[int], base: Path) -> list[dict]:
    """Start PostgreSQL and Kafka with their data under ``base``, run cdc and the writers at
    each rate; one result per rate."""
    with PostgresServer(data_dir=base / "postgres") as pg, KafkaServer(data_dir=base / "kafka") as kafka:
        dsn = pg.create_database("bench")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, status varchar(20),"
                         " amount numeric(12,2), note varchar(200), created_at timestamp)")
            conn.execute("CREATE PUBLICATION cdc_bench FOR TABLE orders")
            conn.execute("SELECT pg_create_logical_replication_slot('cdc_bench', 'pgoutput')")
        admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
        admin.create_topics([NewTopic(TOPIC, 1, 1)])[TOPIC].result(60)
        sink = {"type": "kafka", "bootstrap_servers": kafka.bootstrap, "topic": TOPIC, **json.loads(args.sink_config)}
        raw = {"sources": {"bench": {"type": "postgres", "dsn": dsn, "tables": ["orders"], "slot": "cdc_bench",
                                     "publication": "cdc_bench", "create": False, "checkpoint": {"type": "memory"},
                                     "snapshot": "never"}},
               "pipelines": {"p": {"source": "bench", "sinks": [sink]}}}
        config = parse_config(raw, pg.data_dir / "bench.yaml", {})
        config.pipelines["p"].sinks[0].factory = AckTimedKafkaSink
        runner = SourceRunner(config, "bench", grace_period=60)
        note_send_times(runner.source)
        engine = threading.Thread(target=runner.run, daemon=True)
        engine.start()
        timed = runner.workers[0].sink
        # warm the path up: the first messages wait for metadata and the producer id
        warm = run_writers(dsn, 500, 2, 1, args.rows_per_tx, args.rows_per_writer)
        total, next_id = warm["rows"], warm["next_id"]
        wait_acked(runner, total)
        results = []
        for rate in rates:
            timed.samples = []
            cpu_cdc, cpu_broker, wall = proc_cpu(os.getpid()), proc_cpu(kafka.pid), time.monotonic()
            w = run_writers(dsn, rate, args.seconds, next_id, args.rows_per_tx, args.rows_per_writer)
            total, next_id = total + w["rows"], w["next_id"]
            wait_acked(runner, total)
            wall = time.monotonic() - wall
            cpu_cdc, cpu_broker = proc_cpu(os.getpid()) - cpu_cdc, proc_cpu(kafka.pid) - cpu_broker
            start_ms = (w["first"] + args.warmup) * 1000
            kept = [s for s in timed.samples if s[0] >= start_ms]
            lat = sorted(ack - commit for commit, _, _, _, ack in kept)
            cdc_part = sorted(ack - pg_sent for _, pg_sent, _, _, ack in kept)
            stages = {name: [sorted(s[j] - s[i] for s in kept)[int(len(kept) * q)] for q in (0.5, 0.99)]
                      for name, i, j in (("sent", 0, 1), ("read", 1, 2), ("queued", 2, 3), ("acked", 3, 4))}
            r = {"rate": rate, "rows_per_tx": args.rows_per_tx, "achieved": round(w["achieved"]),
                 "writers": w["writers"], "rows": w["rows"],
                 "writer_behind_ms": round(w["behind_s"] * 1000, 1), "samples": len(lat),
                 "insert_p99_ms": round(w["insert_p99_ms"], 1), "insert_max_ms": round(w["insert_max_ms"], 1),
                 "p50": round(percentile(lat, 50), 1), "p99": round(percentile(lat, 99), 1),
                 "p999": round(percentile(lat, 99.9), 1), "max": round(lat[-1], 1),
                 "after_sent_p50": round(percentile(cdc_part, 50), 1),
                 "after_sent_p99": round(percentile(cdc_part, 99), 1),
                 "after_sent_p999": round(percentile(cdc_part, 99.9), 1),
                 "cpu_cdc": round(cpu_cdc / wall, 2), "cpu_broker": round(cpu_broker / wall, 2),
                 "stages_p50_p99_ms": {k: [round(v, 1) for v in vs] for k, vs in stages.items()}}
            results.append(r)
            print(f"{rate:>6,} rows/s ({r['rows_per_tx']}-row tx,"
                  f" {r['writers']} writer(s)): achieved {r['achieved']:,} rows/s (worst writer lag"
                  f" {r['writer_behind_ms']} ms, INSERT p99 {r['insert_p99_ms']} ms);"
                  f" commit -> acknowledged p50 {r['p50']} ms, p99 {r['p99']} ms,"
                  f" p999 {r['p999']} ms, max {r['max']} ms ({r['samples']:,} changes); CPU cores:"
                  f" cdc {r['cpu_cdc']}, broker {r['cpu_broker']}; stages p50/p99 ms: commit -> sent by"
                  f" PostgreSQL's walsender {r['stages_p50_p99_ms']['sent']}, -> read by the source"
                  f" {r['stages_p50_p99_ms']['read']}, -> produced {r['stages_p50_p99_ms']['queued']},"
                  f" -> acknowledged {r['stages_p50_p99_ms']['acked']}; sent by PostgreSQL -> acknowledged"
                  f" (cdc and the broker) p50 {r['after_sent_p50']}, p99 {r['after_sent_p99']},"
                  f" p999 {r['after_sent_p999']} ms", flush=True)
        runner.request_stop()
        engine.join(60)
    return results


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if len(sys.argv) > 1 and sys.argv[1] == "--writer":
        dsn, rate, seconds, first_id, per_tx = sys.argv[2:7]
        writer(dsn, float(rate), float(seconds), int(first_id), int(per_tx))
        sys.exit(0)
    sys.exit(main())
