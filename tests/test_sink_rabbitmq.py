"""The RabbitMQ sink against a real rabbitmq-server, including a broker restart mid-stream."""

from __future__ import annotations

import logging
import threading
import time
import uuid

import orjson
import pika
import pytest

from cdc.config import parse_config
from cdc.engine import AckTracker, SinkWorker
from cdc.errors import PermanentSinkError
from cdc.event import ChangeEvent
from cdc.sinks.rabbitmq import RabbitMQSink

from _ops_helpers import idle_broker_lost_and_back, wait_for


def event(op: str, row_id: int, status: str = "new", seq: int = 0) -> ChangeEvent:
    row = {"id": row_id, "status": status}
    before, after = (row, None) if op == "d" else (None, row)
    return ChangeEvent(f"0/{row_id:X}:{seq}", op, before, after, {"id": row_id},
                       {"name": "shop", "db": "shop", "schema": "public", "table": "orders",
                        "ts_ms": 1764091000000}, 1764091000123, "public.orders")


def declare_queue(url: str, exchange: str = "", pattern: str = "") -> str:
    name = f"q-{uuid.uuid4().hex[:8]}"
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        channel = conn.channel()
        channel.queue_declare(name, durable=True)
        if exchange:
            channel.exchange_declare(exchange, "topic", durable=True)
            channel.queue_bind(name, exchange, pattern)
    return name


def drain(url: str, queue: str) -> list[tuple]:
    out = []
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        channel = conn.channel()
        while True:
            method, props, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append((method, props, body))


def test_publishes_persistent_messages_with_ids(rabbitmq_server):
    queue = declare_queue(rabbitmq_server.url)
    sink = RabbitMQSink(rabbitmq_server.url, routing_key=queue)
    sink.open()
    try:
        sink.write([event("c", 1), event("u", 1, "paid", seq=1), event("d", 1, seq=2)])
    finally:
        sink.close()
    got = drain(rabbitmq_server.url, queue)
    assert [p.message_id for _, p, _ in got] == ["0/1:0", "0/1:1", "0/1:2"]
    assert [p.headers["op"] for _, p, _ in got] == ["c", "u", "d"]
    assert all(p.delivery_mode == 2 and p.content_type == "application/json" for _, p, _ in got)
    assert orjson.loads(got[1][2])["after"] == {"id": 1, "status": "paid"}


def test_exchange_and_routing_key_templates(rabbitmq_server):
    exchange = f"cdc-{uuid.uuid4().hex[:6]}"
    sink = RabbitMQSink(rabbitmq_server.url, exchange=exchange, exchange_type="topic",
                        routing_key="{source}.{table}.{op}")
    sink.open()
    with pytest.raises(PermanentSinkError, match="routed"):  # declared now, but nothing bound
        sink.write([event("c", 1)])
    queue = declare_queue(rabbitmq_server.url, exchange, "shop.orders.*")
    try:
        sink.write([event("c", 2), event("d", 2, seq=1)])
    finally:
        sink.close()
    got = drain(rabbitmq_server.url, queue)
    assert [m.routing_key for m, _, _ in got] == ["shop.orders.c", "shop.orders.d"]
    assert [m.exchange for m, _, _ in got] == [exchange, exchange]


def test_refusals_are_permanent(rabbitmq_server):
    unroutable = RabbitMQSink(rabbitmq_server.url, routing_key=f"no-such-queue-{uuid.uuid4().hex}")
    missing = RabbitMQSink(rabbitmq_server.url, exchange="no-such-exchange")
    for sink, match in ((unroutable, "routed"), (missing, "404")):
        sink.open()
        try:
            with pytest.raises(PermanentSinkError, match=match):
                sink.write([event("c", 1)])
        finally:
            sink.close()


def test_broker_restart_mid_stream_loses_nothing(rabbitmq_server, tmp_path):
    queue = declare_queue(rabbitmq_server.url)
    raw = {"sources": {"s": {"type": "postgres", "dsn": "postgresql://unused/x", "tables": ["orders"],
                             "checkpoint": {"type": "memory"}}},
           "pipelines": {"p": {"source": "s", "sinks": [{
               "type": "rabbitmq", "url": rabbitmq_server.url, "routing_key": queue, "batch_size": 50,
               "retry": {"initial_backoff": 0.2, "max_backoff": 2}}]}}}
    spec = parse_config(raw, tmp_path / "c.yaml", {}).pipelines["p"].sinks[0]
    tracker, fatal = AckTracker(), []
    worker = SinkWorker(spec, spec.build(), tracker, lambda name, exc: fatal.append(exc))
    worker.start()
    batches, size = 60, 20

    def feed():
        for b in range(batches):
            batch = [event("c", b * size + i + 1) for i in range(size)]
            worker.submit(tracker.add(1, {"batch": b}, len(batch), 0), batch)
            time.sleep(0.05)

    feeder = threading.Thread(target=feed)
    feeder.start()
    wait_for(lambda: tracker.acked_events >= batches * size // 4, 60, "a quarter acknowledged")
    rabbitmq_server.restart()  # mid-stream
    feeder.join()
    deadline = time.monotonic() + 120
    while tracker.acked_events < batches * size and time.monotonic() < deadline and not fatal:
        time.sleep(0.1)
    worker.stop(timeout=10)
    assert not fatal and tracker.acked_events == batches * size
    assert worker.counts["failed"] >= 1  # the restart was noticed and retried
    by_id: dict[str, set[bytes]] = {}
    for _, props, body in drain(rabbitmq_server.url, queue):
        by_id.setdefault(props.message_id, set()).add(body)
    assert all(len(bodies) == 1 for bodies in by_id.values())
    assert sorted(orjson.loads(next(iter(b)))["after"]["id"] for b in by_id.values()) == \
        list(range(1, batches * size + 1))


def test_broker_restart_with_a_full_window_keeps_per_key_order(rabbitmq_server, tmp_path):
    """No pacing: 8 batches in flight when the broker restarts.  The worker publishes again
    from the first unconfirmed batch, in order: for each key, the versions seen for the first
    time arrive in increasing order, and the last message of each key is its last version."""
    queue = declare_queue(rabbitmq_server.url)
    raw = {"sources": {"s": {"type": "postgres", "dsn": "postgresql://unused/x", "tables": ["orders"],
                             "checkpoint": {"type": "memory"}}},
           "pipelines": {"p": {"source": "s", "sinks": [{
               "type": "rabbitmq", "url": rabbitmq_server.url, "routing_key": queue, "batch_size": 100,
               "max_batches_in_flight": 8, "retry": {"initial_backoff": 0.2, "max_backoff": 2}}]}}}
    spec = parse_config(raw, tmp_path / "c.yaml", {}).pipelines["p"].sinks[0]
    tracker, fatal = AckTracker(), []
    worker = SinkWorker(spec, spec.build(), tracker, lambda name, exc: fatal.append(exc))
    worker.start()
    keys, batches, size = 37, 400, 100
    total = batches * size
    for b in range(batches):  # event n updates key n % keys to version n // keys
        batch = [event("u", n % keys, status=f"v{n // keys}", seq=n) for n in range(b * size, (b + 1) * size)]
        worker.submit(tracker.add(1, {"batch": b}, len(batch), 0), batch)
    wait_for(lambda: tracker.acked_events >= total // 10, 60, "a tenth acknowledged")
    assert tracker.acked_events < total // 2, "the restart must come while batches are in flight"
    rabbitmq_server.restart()  # mid-window
    deadline = time.monotonic() + 180
    while tracker.acked_events < total and time.monotonic() < deadline and not fatal:
        time.sleep(0.1)
    worker.stop(timeout=10)
    assert not fatal and tracker.acked_events == total
    assert worker.counts["failed"] >= 1  # the restart was noticed and retried
    seen: set[str] = set()
    first_versions: dict[int, list[int]] = {}
    last_version: dict[int, int] = {}
    for _, props, body in drain(rabbitmq_server.url, queue):
        after = orjson.loads(body)["after"]
        key, version = after["id"], int(after["status"][1:])
        last_version[key] = version
        if props.message_id not in seen:
            seen.add(props.message_id)
            first_versions.setdefault(key, []).append(version)
    assert len(seen) == total  # nothing lost
    for key in range(keys):
        versions = [n // keys for n in range(total) if n % keys == key]
        assert first_versions[key] == versions, f"key {key}: out of order"
        assert last_version[key] == versions[-1]


def test_an_idle_connection_is_kept_alive(rabbitmq_server, tmp_path, caplog):
    """Nothing to write for several heartbeat timeouts (3 s asked here; the broker's
    default is 60 s): the broker must not drop the connection for missed heartbeats, so
    the next write goes through at once, with no 'broker down' warning and no retry."""
    queue = declare_queue(rabbitmq_server.url)
    raw = {"sources": {"s": {"type": "postgres", "dsn": "postgresql://unused/x", "tables": ["orders"],
                             "checkpoint": {"type": "memory"}}},
           "pipelines": {"p": {"source": "s", "sinks": [{
               "type": "rabbitmq", "url": rabbitmq_server.url + "?heartbeat=3", "routing_key": queue}]}}}
    spec = parse_config(raw, tmp_path / "c.yaml", {}).pipelines["p"].sinks[0]
    tracker, fatal = AckTracker(), []
    worker = SinkWorker(spec, spec.build(), tracker, lambda name, exc: fatal.append(exc))
    worker.start()
    try:
        worker.submit(tracker.add(1, {"batch": 0}, 1, 0), [event("c", 1)])
        wait_for(lambda: tracker.acked_events == 1, 30, "the first event delivered")
        time.sleep(12)  # idle: two heartbeat timeouts and more
        worker.submit(tracker.add(1, {"batch": 1}, 1, 0), [event("c", 2)])
        wait_for(lambda: tracker.acked_events == 2, 30, "the second event delivered")
    finally:
        worker.stop(timeout=10)
    assert not fatal
    assert worker.counts["failed"] == 0, caplog.text[-2000:]
    assert "broker down" not in caplog.text, caplog.text[-2000:]
    assert len(drain(rabbitmq_server.url, queue)) == 2


def test_a_broker_lost_while_idle_is_reported_and_reconnected_without_a_write(rabbitmq_server, tmp_path, caplog):
    """With nothing to write, the broker stops: the idle sink notices it (``not_ready``:
    what /readyz reports, and one 'broker down' WARNING) instead of staying 'ready' until
    the next change comes; once the broker is back it reconnects by itself ('broker back')."""
    caplog.set_level(logging.INFO, logger="cdc")
    queue = declare_queue(rabbitmq_server.url)
    idle_broker_lost_and_back({"type": "rabbitmq", "url": rabbitmq_server.url, "routing_key": queue}, tmp_path,
                              caplog, event, rabbitmq_server.stop, rabbitmq_server.start, back_within=90)
    assert len(drain(rabbitmq_server.url, queue)) == 2
