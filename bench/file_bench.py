"""PostgreSQL -> ``file`` sink against the same run into ``discard``.

    .venv/bin/python bench/file_bench.py [--rounds 2] [--min-ratio 0.8] [--dir /dev/shm]

The 400k workload (/work/shared/perf-anchors.md) is written once while one pgoutput
slot per run waits, so every run reads the same WAL.  Each run is the whole engine
in process (``SourceRunner``: pgoutput decode, ChangeEvents, sink thread,
acknowledgements) from start to the 400,000th acknowledged change; the ``file`` run
writes JSON Lines (fsync on, the default) to a file under ``--dir`` (tmpfs by
default, as in issue 13).  The order alternates over the rounds; the best of each
counts.  Exits 1 when file / discard is below ``--min-ratio``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from kafka_bench import TOTAL, wait_acked, write_workload  # noqa: E402

from cdc.config import parse_config  # noqa: E402
from cdc.engine import SourceRunner, tune_process  # noqa: E402

from servers import PostgresServer  # noqa: E402


def run(dsn: str, slot: str, sink: dict, workdir: Path) -> float:
    raw = {"sources": {"bench": {"type": "postgres", "dsn": dsn, "tables": ["orders"],
                                 "slot": slot, "publication": "cdc_bench", "create": False,
                                 "checkpoint": {"type": "memory"}, "snapshot": "never"}},
           "pipelines": {"p": {"source": "bench", "sinks": [sink]}}}
    runner = SourceRunner(parse_config(raw, workdir / "bench.yaml", {}), "bench", grace_period=60)
    engine = threading.Thread(target=runner.run, daemon=True)
    started = time.perf_counter()
    engine.start()
    wait_acked(runner, TOTAL)
    elapsed = time.perf_counter() - started
    runner.request_stop()
    engine.join(60)
    return TOTAL / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--min-ratio", type=float, default=0.8)
    parser.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)  # retries and errors show
    tune_process()  # as `cdc run` does
    rates: dict[str, list[float]] = {"file": [], "discard": []}
    with PostgresServer() as pg, tempfile.TemporaryDirectory(dir=args.dir, prefix="cdc-file-bench-") as out:
        dsn = pg.create_database("bench")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, status varchar(20),"
                         " amount numeric(12,2), note varchar(200), created_at timestamp)")
            conn.execute("CREATE PUBLICATION cdc_bench FOR TABLE orders")
            for i in range(2 * args.rounds):
                conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (f"s{i}",))
        print("writing the 400k workload...", flush=True)
        write_workload(dsn)
        slot = 0
        for r in range(args.rounds):
            for kind in (["file", "discard"] if r % 2 == 0 else ["discard", "file"]):
                path = Path(out) / f"run{slot}.jsonl"
                sink = {"type": "file", "path": str(path)} if kind == "file" else {"type": "discard"}
                rates[kind].append(run(dsn, f"s{slot}", sink, pg.data_dir))
                slot += 1
                if path.exists():
                    path.unlink()
                print(f"round {r + 1} {kind}: {rates[kind][-1]:,.0f} rows/s", flush=True)
    best_file, best_discard = max(rates["file"]), max(rates["discard"])
    ratio = best_file / best_discard
    ok = ratio >= args.min_ratio
    print(f"file {best_file:,.0f} rows/s; discard {best_discard:,.0f} rows/s (best of {args.rounds});"
          f" ratio {ratio:.2f}")
    print(("PASS" if ok else "FAIL") + f": file/discard {ratio:.2f} (minimum {args.min_ratio})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
