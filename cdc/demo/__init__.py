"""``cdc demo``: a throwaway PostgreSQL, a stream of orders, and the change events.

Everything it starts (the server, its data directory) is removed on exit or Ctrl-C.
"""

from __future__ import annotations

import logging
import random
import shutil
import signal
import tempfile
import threading
from pathlib import Path

import psycopg

from ..config import parse_config

__all__ = ["run_demo", "DEMO_CONFIG"]

log = logging.getLogger("cdc.demo")

DEMO_CONFIG = """
sources:
  shop:
    type: postgres
    dsn: ${SHOP_DSN}
    tables: [public.orders, public.customers]
    checkpoint: {type: file, path: "${DEMO_DIR}/state/shop.json"}
pipelines:
  order-status:                      # a notification feed: only the id and new status
    source: shop
    tables: [public.orders]
    transforms:
      - {type: filter, where: {op: [c, u]}}
      - {type: select, fields: [id, status]}
    sinks:
      - {type: stdout}
  everything:                        # a 1:1 copy of every change, as JSON Lines
    source: shop
    sinks:
      - {type: file, path: "${DEMO_DIR}/out/changes.jsonl"}
"""

SCHEMA = """
CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL, email text);
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint REFERENCES customers,
                     status varchar(20) NOT NULL, amount numeric(12,2), note varchar(200),
                     created_at timestamp NOT NULL DEFAULT now());
INSERT INTO customers SELECT g, 'customer ' || g, 'c' || g || '@example.com' FROM generate_series(1, 20) g;
"""


def _writer(dsn: str, rate: float, stop: threading.Event) -> None:
    statuses = ["paid", "shipped", "delivered"]
    next_id = 1
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not stop.wait(1.0 / rate):
            conn.execute("INSERT INTO orders (id, customer_id, status, amount, note) VALUES (%s, %s, 'new', %s, %s)",
                         (next_id, random.randint(1, 20), round(random.uniform(5, 500), 2), f"demo order {next_id}"))
            if next_id > 1:
                target = random.randint(max(1, next_id - 5), next_id - 1)
                conn.execute("UPDATE orders SET status = %s WHERE id = %s", (random.choice(statuses), target))
            next_id += 1


def run_demo(duration: float | None = None, rate: float = 2.0) -> int:
    from ..engine import SourceRunner
    from .postgres import PostgresServer

    workdir = Path(tempfile.mkdtemp(prefix="cdc-demo-"))
    server = PostgresServer()  # its own private data directory, removed by close()
    stop = threading.Event()
    runner = None
    try:
        server.start()
        log.info("started a throwaway PostgreSQL on 127.0.0.1:%d (data in %s)", server.port, server.data_dir)
        dsn = server.create_database("shop")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SCHEMA)
        import yaml
        env = {"SHOP_DSN": dsn, "DEMO_DIR": str(workdir)}
        config = parse_config(yaml.safe_load(DEMO_CONFIG), workdir / "demo.yaml", env)
        runner = SourceRunner(config, "shop", grace_period=5.0)
        writer = threading.Thread(target=_writer, args=(dsn, rate, stop), daemon=True)

        def on_signal(signum: int, frame: object) -> None:
            stop.set()
            runner.request_stop()

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        if duration:
            threading.Timer(duration, on_signal, args=(signal.SIGTERM, None)).start()
        log.info("pipelines: order-status -> stdout (id and status of new and changed orders); "
                 "everything -> %s. Ctrl-C stops.", workdir / "out" / "changes.jsonl")
        writer.start()
        code = runner.run()
        stop.set()
        writer.join(5)
        changes = workdir / "out" / "changes.jsonl"
        count = sum(1 for _ in changes.open()) if changes.exists() else 0
        log.info("demo finished: %d change events captured", count)
        return code
    finally:
        stop.set()
        server.close()
        shutil.rmtree(workdir, ignore_errors=True)
