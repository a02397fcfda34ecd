"""RabbitMQ sink throughput against a bare pika publisher that pipelines confirms.

    .venv/bin/python bench/rabbitmq_bench.py [--events 100000] [--rounds 2] [--min-ratio 0.8] [--min-rate 20000]

One private rabbitmq-server (tests/servers), a durable queue per run, persistent
messages (``delivery_mode=2``), publisher confirms on, the same envelopes both ways.

- anchor: a bare pika publisher (BlockingConnection, confirm mode through the
  underlying channel with an ack callback), at most 8,000 unconfirmed messages,
  flushing every 1,000; the bodies are serialized before the clock starts;
- cdc: the ``rabbitmq`` sink run by a ``SinkWorker`` (batches of 1,000, up to 8 in
  flight), from ``submit`` to the last acknowledgement in the tracker.

The order alternates over the rounds; the best round of each counts.  Exits 1 when
cdc is below ``--min-ratio`` x the anchor or below ``--min-rate`` messages/s.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import uuid
from pathlib import Path

import pika

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from through_worker import through_worker  # noqa: E402

from cdc.config import parse_config  # noqa: E402
from cdc.event import ChangeEvent  # noqa: E402

from servers import RabbitMQServer  # noqa: E402

SRC = {"name": "shop", "db": "shop", "schema": "public", "table": "orders", "ts_ms": 1764091000000}


def make_events(n: int) -> list[ChangeEvent]:
    return [ChangeEvent(f"0/{i:08X}:0", "c", None,
                        {"id": i, "customer_id": i % 997, "status": "new", "amount": f"{i % 1000}.25",
                         "note": "n" * (30 + i % 81), "created_at": "2026-11-25T10:00:00"},
                        {"id": i}, SRC, 1764091000123, "public.orders") for i in range(n)]


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and every live descendant (the broker's beam.smp)."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
        todo.extend(children.get(p, []))
    return total


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


QUEUE_ARGUMENTS: dict = {}


def new_queue(url: str) -> str:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        conn.channel().queue_declare(name, durable=True, arguments=QUEUE_ARGUMENTS)
    return name


def delete_queue(url: str, name: str) -> None:
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        conn.channel().queue_delete(name)


def bare_publisher(url: str, events: list[ChangeEvent]) -> float:
    queue = new_queue(url)
    bodies = [e.to_json() for e in events]
    conn = pika.BlockingConnection(pika.URLParameters(url))
    channel = conn.channel()
    confirmed = [0]
    selected: list[object] = []

    def on_confirm(frame) -> None:
        m = frame.method
        assert m.NAME == "Basic.Ack"
        confirmed[0] = m.delivery_tag if m.multiple else confirmed[0] + 1

    channel._impl.confirm_delivery(ack_nack_callback=on_confirm, callback=selected.append)
    deadline = time.monotonic() + 30
    while not selected and time.monotonic() < deadline:
        conn.process_data_events(0.1)
    impl = channel._impl
    started = time.perf_counter()
    for i, (event, body) in enumerate(zip(events, bodies), start=1):
        props = pika.BasicProperties(delivery_mode=2, message_id=event.id, content_type="application/json",
                                     timestamp=event.ts_ms // 1000, headers={"op": event.op, "table": event.table})
        impl.basic_publish("", queue, body, props, mandatory=True)
        if i % 1000 == 0:
            conn.process_data_events(0)
            while i - confirmed[0] > 8000:
                conn.process_data_events(0.01)
    deadline = time.monotonic() + 120
    while confirmed[0] < len(events):
        if time.monotonic() > deadline:
            raise SystemExit(f"anchor: {confirmed[0]}/{len(events)} confirmed")
        conn.process_data_events(0.01)
    elapsed = time.perf_counter() - started
    conn.close()
    delete_queue(url, queue)
    return len(events) / elapsed


def cdc_sink(url: str, events: list[ChangeEvent], workdir: Path) -> float:
    queue = new_queue(url)
    raw = {"sources": {"s": {"type": "postgres", "dsn": "postgresql://unused/x", "tables": ["orders"],
                             "checkpoint": {"type": "memory"}}},
           "pipelines": {"p": {"source": "s", "sinks": [{"type": "rabbitmq", "url": url, "routing_key": queue}]}}}
    spec = parse_config(raw, workdir / "c.yaml", {}).pipelines["p"].sinks[0]
    rate = through_worker(spec, events)
    delete_queue(url, queue)
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--min-ratio", type=float, default=0.8)
    parser.add_argument("--min-rate", type=float, default=20_000)
    parser.add_argument("--queue-version", type=int, choices=[1, 2], default=None,
                        help="declare classic queues with x-queue-version (the broker's default when absent)")
    args = parser.parse_args()
    if args.queue_version:
        QUEUE_ARGUMENTS["x-queue-version"] = args.queue_version
    events = make_events(args.events)
    anchors: list[float] = []
    rates: list[float] = []
    broker_us: list[float] = []
    with RabbitMQServer() as server:
        assert server.pid is not None
        for r in range(args.rounds):
            order = ["anchor", "cdc"] if r % 2 == 0 else ["cdc", "anchor"]
            for which in order:
                broker0, own0 = tree_cpu_seconds(server.pid), own_cpu_seconds()
                if which == "anchor":
                    anchors.append(bare_publisher(server.url, events))
                else:
                    rates.append(cdc_sink(server.url, events, server.data_dir))
                broker = (tree_cpu_seconds(server.pid) - broker0) / len(events) * 1e6
                own = (own_cpu_seconds() - own0) / len(events) * 1e6
                broker_us.append(broker)
                print(f"round {r + 1} {which}: {(anchors if which == 'anchor' else rates)[-1]:,.0f} msg/s;"
                      f" CPU per message: broker {broker:.1f} us, publisher process {own:.1f} us", flush=True)
    anchor, rate = max(anchors), max(rates)
    ratio = rate / anchor
    ok = ratio >= args.min_ratio and rate >= args.min_rate
    print(f"rabbitmq sink {rate:,.0f} msg/s; bare pipelined publisher {anchor:,.0f} msg/s; ratio {ratio:.2f}")
    cores = os.cpu_count() or 1
    print(f"the broker needs {min(broker_us):.1f} CPU-us per message: on {cores} cores, with nothing else"
          f" running, the broker alone could confirm at most {cores * 1e6 / min(broker_us):,.0f} msg/s")
    print(("PASS" if ok else "FAIL") + f": ratio {ratio:.2f} (minimum {args.min_ratio}),"
          f" {rate:,.0f} msg/s (minimum {args.min_rate:,.0f})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
