"""PostgreSQL catch-up benchmark: cdc vs pg_recvlogical on the 400k workload.

    .venv/bin/python bench/pg_bench.py [--runs 5]

The workload (../shared/perf-anchors.md): orders(id, customer_id, status, amount,
note, created_at); 200 transactions of 1,000 INSERTs, then 200 of 1,000 UPDATEs.
One slot per reader run is created before the workload, so every run reads the
same WAL.  Everything goes over TCP 127.0.0.1.  cdc runs the full engine (pgoutput
decode, ChangeEvent, pipeline, sink thread, acknowledgements) into the ``discard``
sink, which serialises every event to JSON.  Reported: rows/s of each reader
(median), cdc / pg_recvlogical, and cdc's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the test servers

ROWS_PER_TX, TXS = 1000, 200
TOTAL = 2 * ROWS_PER_TX * TXS


def workload(dsn: str) -> None:
    import psycopg
    rnd = random.Random(1)
    with psycopg.connect(dsn) as conn:
        for t in range(TXS):
            with conn.cursor() as cur:
                rows = [(t * ROWS_PER_TX + i, rnd.randint(1, 10_000), "new",
                         f"{rnd.randint(100, 99_999_99) / 100:.2f}",
                         "".join(rnd.choices("abcdefghijklmnopqrstuvwxyz ", k=rnd.randint(30, 110))))
                        for i in range(ROWS_PER_TX)]
                cur.executemany("INSERT INTO orders VALUES (%s, %s, %s, %s, %s, now())", rows)
            conn.commit()
        for t in range(TXS):
            conn.execute("UPDATE orders SET status = 'shipped' WHERE id >= %s AND id < %s",
                         (t * ROWS_PER_TX, (t + 1) * ROWS_PER_TX))
            conn.commit()


def run_child(argv: list[str]) -> tuple[float, float, float, int]:
    """Run a reader process: (seconds until it exited, until it had read everything,
    from opening the replication connection until it had read everything, peak RSS KiB)."""
    started_at = time.time()
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    out = proc.stdout.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv[0]} failed: {proc.stderr.read().decode()[-2000:]}")
    if not out.strip():
        return wall, wall, float("nan"), usage.ru_maxrss
    report = json.loads(out.strip().splitlines()[-1])
    return wall, report["done_at"] - started_at, report["seconds"], usage.ru_maxrss


def cdc_child(dsn: str, slot: str, publication: str) -> None:
    """Run the engine until every change of the workload is acknowledged."""
    import threading

    from cdc.config import parse_config
    from cdc.engine import SourceRunner, tune_process
    raw = {"sources": {"db": {"type": "postgres", "dsn": dsn, "tables": ["public.orders"], "slot": slot,
                              "publication": publication, "checkpoint": {"type": "memory"},
                              "snapshot": "never"}},  # the log is what is measured
           "pipelines": {"bench": {"source": "db", "sinks": [{"type": "discard"}]}}}
    tune_process()  # as `cdc run` does
    runner = SourceRunner(parse_config(raw, Path("bench.yaml"), {}), "db")
    start = time.perf_counter()
    done = {}

    def watch() -> None:
        while runner.tracker.acked_events < TOTAL:
            time.sleep(0.005)
        done["seconds"] = time.perf_counter() - start
        done["done_at"] = time.time()
        runner.request_stop()

    threading.Thread(target=watch, daemon=True).start()
    runner.run()
    sink = runner.workers[0].sink
    assert sink.events == TOTAL, sink.events
    print(json.dumps({"seconds": done["seconds"], "done_at": done["done_at"], "json_bytes": sink.bytes}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--min-ratio", type=float, default=0.9,
                        help="exit 1 when the median of the same-run ratios (process start to the last change"
                             " acknowledged / pg_recvlogical) is below this (issue 13: 0.9)")
    args = parser.parse_args()
    # An installed cdc has its modules byte-compiled (pip compiles them): so do the children here,
    # rather than compile every module at each start as PYTHONDONTWRITEBYTECODE=1 makes them.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    import psycopg

    from servers import PostgresServer
    with PostgresServer() as server:
        dsn = server.create_database("bench")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, status varchar(20),"
                         " amount numeric(12,2), note varchar(200), created_at timestamp)")
            conn.execute("CREATE PUBLICATION bench FOR TABLE orders")
            slots = [f"s{i}" for i in range(2 * args.runs)]
            for slot in slots:
                conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
            print(f"writing the 400k workload ({TOTAL} row changes) ...", file=sys.stderr)
            workload(dsn)
            endpos = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
        bindir = server.bindir
        anchor, ours = [], []
        for i in range(args.runs):  # alternate, so machine noise hits both alike
            wall, _, _, rss_a = run_child([f"{bindir}/pg_recvlogical", "-d", dsn, "--slot", slots[2 * i], "--start",
                                        "-o", "proto_version=1", "-o", "publication_names=bench",
                                        "--endpos", endpos, "-f", "/dev/null", "--no-loop"])
            anchor.append(TOTAL / wall)
            wall, read, inner, rss = run_child([sys.executable, __file__, "--child", dsn, slots[2 * i + 1],
                                                "bench"])
            ours.append((TOTAL / wall, TOTAL / read, TOTAL / inner, rss))
            print(f"run {i + 1}: pg_recvlogical {anchor[-1]:,.0f} rows/s; cdc {ours[-1][1]:,.0f} rows/s "
                  f"(exit {ours[-1][0]:,.0f}, streaming {ours[-1][2]:,.0f}), peak RSS {rss / 1024:.0f} MiB",
                  file=sys.stderr)
    a = statistics.median(anchor)
    w, r, p = (statistics.median(run[k] for run in ours) for k in range(3))
    peak = max(run[3] for run in ours) / 1024
    print(f"\nPostgreSQL catch-up, {TOTAL:,} changes, median of {args.runs}:")
    print(f"  pg_recvlogical (pgoutput -> /dev/null, start to exit):   {a:>9,.0f} rows/s")
    print("  cdc engine -> JSON -> discard sink:")
    print(f"    process start to the last change acknowledged:       {r:>9,.0f} rows/s   {r / a:.2f}x")
    print(f"    process start to exit (incl. shutdown):              {w:>9,.0f} rows/s   {w / a:.2f}x")
    print(f"    replication connection open to the last ack:         {p:>9,.0f} rows/s   {p / a:.2f}x")
    print(f"  cdc peak RSS: {peak:.0f} MiB")
    ratios = [run[1] / rate for run, rate in zip(ours, anchor)]  # each run against its own anchor
    ratio = statistics.median(ratios)
    verdict = "PASS" if ratio >= args.min_ratio else "FAIL"
    print(f"{verdict}: cdc / pg_recvlogical, same run, median {ratio:.2f}x"
          f" (runs: {', '.join(f'{x:.2f}' for x in ratios)}; minimum {args.min_ratio}x)")
    if ratio < args.min_ratio:
        raise SystemExit(1)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        cdc_child(*sys.argv[2:5])
    else:
        main()
