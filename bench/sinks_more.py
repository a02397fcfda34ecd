"""Throughput of the database mirror and HTTP webhook sinks, as ratios against anchors
measured in the same run on the same machine.

- mirror (PostgreSQL target): ``--rows`` inserts then as many updates (default 100,000
  each) of the 400k workload's ``orders`` rows, batches of 1,000, run by a ``SinkWorker``
  as ``cdc run`` runs it (the sink's defaults: several batches in flight), from the
  first ``submit`` to the last acknowledgement, vs. the anchor: the same rows written with
  psycopg ``executemany`` INSERT ... ON CONFLICT in 1,000-row transactions.  Two rounds,
  the order alternating; the best of each counts.
- http: 20,000 events POSTed in batches of 100 to a local http.server, vs. the anchor:
  the same request bodies POSTed with a bare httpx client.

Run: .venv/bin/python bench/sinks_more.py [--rows 100000] [--min-mirror-ratio 1.5]

Exits 1 when the mirror is below ``--min-mirror-ratio`` x the executemany anchor
(issue 13: 1.5).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from through_worker import through_worker  # noqa: E402

from cdc.config import parse_config  # noqa: E402
from cdc.event import ChangeEvent  # noqa: E402
from cdc.sinks.http import HttpSink  # noqa: E402

from servers import PostgresServer  # noqa: E402
from webhook_server import WebhookServer  # noqa: E402

N, BATCH = 100_000, 1000   # rows of the mirror runs (--rows), rows per batch
HTTP_EVENTS = 20_000
SRC = {"name": "shop", "schema": "public", "table": "orders"}
DDL = ("CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, status varchar(20),"
       " amount numeric(12,2), note varchar(200), created_at timestamp)")


def rows(status: str) -> list[dict]:
    return [{"id": i, "customer_id": i % 977, "status": status, "amount": f"{i % 1000}.25",
             "note": "n" * (30 + i % 80), "created_at": "2026-11-25T10:00:00"} for i in range(N)]


def events() -> list[ChangeEvent]:
    out = []
    for n, (op, status) in enumerate([("c", "new"), ("u", "shipped")]):
        for r in rows(status):
            out.append(ChangeEvent(f"{n}/{r['id']:08X}:0", op, None, r, {"id": r["id"]}, SRC, 1, "public.orders"))
    return out


def anchor_executemany(dsn: str) -> float:
    cols = list(rows("x")[0])
    sql = (f"INSERT INTO orders ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))}) ON CONFLICT (id)"
           " DO UPDATE SET " + ", ".join(f"{c} = EXCLUDED.{c}" for c in cols[1:]))
    batches = [[tuple(r.values()) for r in data[i:i + BATCH]]
               for data in (rows("new"), rows("shipped")) for i in range(0, N, BATCH)]
    started = time.perf_counter()
    with psycopg.connect(dsn) as conn:
        for batch in batches:
            with conn.cursor() as cur:
                cur.executemany(sql, batch)
            conn.commit()
    return 2 * N / (time.perf_counter() - started)


def mirror(dsn: str, workdir: Path) -> float:
    evs = events()
    raw = {"sources": {"s": {"type": "postgres", "dsn": "postgresql://unused/x", "tables": ["public.orders"],
                             "checkpoint": {"type": "memory"}}},
           "pipelines": {"p": {"source": "s", "sinks": [{"type": "postgres", "dsn": dsn}]}}}
    spec = parse_config(raw, workdir / "c.yaml", {}).pipelines["p"].sinks[0]
    return through_worker(spec, evs)


def bench_mirror(pg: PostgresServer) -> tuple[float, float]:
    """Best of two rounds each, alternating, every run into a fresh database."""
    rates: dict[str, list[float]] = {"mirror": [], "anchor": []}
    for r in range(2):
        for kind in (("anchor", "mirror") if r % 2 == 0 else ("mirror", "anchor")):
            dsn = pg.create_database(f"{kind}{r}")
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(DDL)
            rate = anchor_executemany(dsn) if kind == "anchor" else mirror(dsn, pg.data_dir)
            rates[kind].append(rate)
            print(f"round {r + 1} {kind}: {rate:,.0f} rows/s", flush=True)
    with psycopg.connect(dsn) as conn:  # the last mirror run holds every row, updated
        shipped = conn.execute("SELECT count(*) FROM orders WHERE status = 'shipped'").fetchone()[0]
    if shipped != N:
        raise SystemExit(f"mirror: {shipped:,} of {N:,} rows updated in the target")
    return max(rates["mirror"]), max(rates["anchor"])


def bench_http() -> tuple[float, float]:
    evs = events()[:HTTP_EVENTS]
    with WebhookServer() as server:
        sink = HttpSink(server.url)
        sink.open()
        started = time.perf_counter()
        for i in range(0, HTTP_EVENTS, 100):
            sink.write(evs[i:i + 100])
        rate = HTTP_EVENTS / (time.perf_counter() - started)
        sink.close()
        import orjson
        bodies = [orjson.dumps([e.to_dict() for e in evs[i:i + 100]]) for i in range(0, HTTP_EVENTS, 100)]
        with httpx.Client() as client:
            started = time.perf_counter()
            for body in bodies:
                client.post(server.url, content=body, headers={"Content-Type": "application/json"})
            anchor = HTTP_EVENTS / (time.perf_counter() - started)
    return rate, anchor


def main() -> int:
    global N
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--min-mirror-ratio", type=float, default=1.5)
    parser.add_argument("--rows", type=int, default=N, help="inserts, then as many updates, per mirror run")
    args = parser.parse_args()
    N = args.rows
    with PostgresServer() as pg:
        rate, anchor = bench_mirror(pg)
    mirror_ratio = rate / anchor
    print(f"mirror -> postgres: {rate:,.0f} rows/s; anchor executemany upsert {anchor:,.0f} rows/s;"
          f" ratio {mirror_ratio:.2f}")
    rate, anchor = bench_http()
    print(f"http (batch 100):   {rate:,.0f} events/s; anchor bare httpx {anchor:,.0f} events/s;"
          f" ratio {rate / anchor:.2f}")
    ok = mirror_ratio >= args.min_mirror_ratio
    print(("PASS" if ok else "FAIL") + f": mirror/executemany {mirror_ratio:.2f} (minimum {args.min_mirror_ratio})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
