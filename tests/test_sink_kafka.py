"""The Kafka sink against a real single-node Kafka (KRaft), including a broker kill -9."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path

import orjson
import psycopg
import pytest
from confluent_kafka import Consumer

from cdc.config import Context, parse_config
from cdc.engine import SourceRunner
from cdc.errors import ConfigError, PermanentSinkError, TransientSinkError
from cdc.event import ChangeEvent
from cdc.sinks.kafka import KafkaSink

from _ops_helpers import wait_for
from servers import free_port


def event(op: str, row_id: int, status: str = "new", table: str = "orders", seq: int = 0,
          destination: str | None = None) -> ChangeEvent:
    row = {"id": row_id, "status": status}
    before, after = (row, None) if op == "d" else (None, row)
    return ChangeEvent(f"0/{row_id:X}:{seq}", op, before, after, {"id": row_id},
                       {"name": "shop", "db": "shop", "schema": "public", "table": table,
                        "ts_ms": 1764091000000}, 1764091000123, f"public.{table}", destination=destination)


def consume(bootstrap: str, topic: str, until: int, timeout: float = 60.0) -> list:
    """Messages of ``topic`` from the start, until ``until`` distinct ids arrived."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    messages, ids = [], set()
    deadline = time.monotonic() + timeout
    try:
        while len(ids) < until and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            messages.append(msg)
            ids.add(dict(msg.headers())["id"])
    finally:
        consumer.close()
    return messages


def test_delivers_key_headers_and_tombstone(kafka_server):
    sink = KafkaSink(kafka_server.bootstrap, tombstones=True,
                     context=Context(Path("."), name="k"))
    table = f"t_{uuid.uuid4().hex[:8]}"
    sink.open()
    try:
        sink.write([event("c", 1, table=table), event("u", 1, "paid", table=table, seq=1),
                    event("d", 1, table=table, seq=2)])
    finally:
        sink.close()
    messages = consume(kafka_server.bootstrap, f"shop.public.{table}", until=4)
    assert len(messages) == 4
    assert {m.key() for m in messages} == {b'{"id":1}'}
    assert [dict(m.headers())["op"] for m in messages] == [b"c", b"u", b"d", b"d"]
    assert [dict(m.headers())["id"] for m in messages] == [b"0/1:0", b"0/1:1", b"0/1:2", b"0/1:2:tombstone"]
    assert orjson.loads(messages[1].value())["after"] == {"id": 1, "status": "paid"}
    assert messages[3].value() is None


def test_topic_template_and_route_destination(kafka_server):
    routed = f"routed-{uuid.uuid4().hex[:8]}"
    sink = KafkaSink(kafka_server.bootstrap)
    assert sink.topic_of(event("c", 1, destination=routed)) == routed
    assert sink.topic_of(event("c", 1)) == "shop.public.orders"
    explicit = KafkaSink(kafka_server.bootstrap, topic="cdc-{table}-{op}")
    assert explicit.topic_of(event("c", 1, destination=routed)) == "cdc-orders-c"
    sink.open()
    try:
        sink.write([event("c", 7, destination=routed)])
    finally:
        sink.close()
    [msg] = consume(kafka_server.bootstrap, routed, until=1)
    assert dict(msg.headers())["id"] == b"0/7:0"


def test_wait_lets_the_queue_drain(kafka_server):
    """A batch completes only once the producer's queue is empty, so ``wait`` waits for
    the drain even when asked for a short wait: returning at once would let the worker
    produce more and, under a steady stream, push the oldest batch's completion back."""
    sink = KafkaSink(kafka_server.bootstrap, topic=f"drain-{uuid.uuid4().hex[:8]}")
    sink.open()
    try:
        sink.write([event("c", 1)])  # metadata and the producer id are there
        oldest = sink.send([event("c", i) for i in range(2, 500)])
        sink.send([event("c", i) for i in range(500, 1000)])
        confirmed = [sink.wait(oldest, 0.0) for _ in range(5)]  # the worker's short waits
    finally:
        sink.close()
    assert True in confirmed


def test_oversized_message_is_permanent(kafka_server):
    sink = KafkaSink(kafka_server.bootstrap, config={"message.max.bytes": 1000})
    sink.open()
    try:
        with pytest.raises(PermanentSinkError, match="MSG_SIZE_TOO_LARGE"):
            sink.write([event("c", 1, status="x" * 5000)])
    finally:
        sink.close()


def test_unreachable_broker_is_transient():
    sink = KafkaSink(f"127.0.0.1:{free_port()}", delivery_timeout=2.0)
    sink.open()
    try:
        with pytest.raises(TransientSinkError, match="not delivered"):
            sink.write([event("c", 1)])
    finally:
        sink.close()


def test_config_is_validated_and_secrets_not_logged(kafka_server, caplog, tmp_path):
    raw = {"sources": {"s": {"type": "postgres", "dsn": "postgresql://x/y", "tables": ["t"],
                             "checkpoint": {"type": "memory"}}},
           "pipelines": {"p": {"source": "s", "sinks": [{"type": "kafka", "bootstrap_server": "x"}]}}}
    with pytest.raises(ConfigError) as info:
        parse_config(raw, tmp_path / "c.yaml", {})
    assert "pipelines.p.sinks[0].bootstrap_server: unknown key (did you mean 'bootstrap_servers'?)" in str(info.value)
    caplog.set_level(logging.DEBUG)
    sink = KafkaSink(kafka_server.bootstrap, config={"sasl.username": "u", "sasl.password": "hunter2"})
    sink.open()
    sink.close()
    assert "sasl.password" in caplog.text and "hunter2" not in caplog.text


# ---- through the engine: PostgreSQL -> Kafka while the broker is killed -------------

def _write_orders(dsn: str, transactions: int, rows: int, pause: float, progress: list) -> None:
    with psycopg.connect(dsn) as conn:
        for t in range(transactions):
            with conn.transaction():
                conn.execute("INSERT INTO orders SELECT g, 'new' FROM generate_series(%s::int, %s::int) g",
                             (t * rows + 1, (t + 1) * rows))
            progress.append(t)
            time.sleep(pause)


def test_broker_killed_mid_stream_loses_nothing(kafka_server, pg_database, tmp_path):
    transactions, rows = 40, 50
    topic = f"orders-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, status text)")
    raw = {"sources": {"shop": {"type": "postgres", "dsn": pg_database, "tables": ["orders"],
                                "checkpoint": {"type": "memory"}}},
           "pipelines": {"p": {"source": "shop", "sinks": [{
               "type": "kafka", "bootstrap_servers": kafka_server.bootstrap, "topic": topic,
               "delivery_timeout": 3, "batch_size": 200,
               "retry": {"initial_backoff": 0.2, "max_backoff": 2}}]}}}
    runner = SourceRunner(parse_config(raw, tmp_path / "c.yaml", {}), "shop", grace_period=60)
    engine = threading.Thread(target=runner.run, daemon=True)
    engine.start()
    # the slot exists: every write from now on is captured
    wait_for(lambda: runner.source.stream is not None or not engine.is_alive(), 30, "streaming")
    assert engine.is_alive(), runner.error
    progress: list = []
    writer = threading.Thread(target=_write_orders, args=(pg_database, transactions, rows, 0.1, progress))
    try:
        writer.start()
        wait_for(lambda: len(progress) >= transactions // 3, 60, "a third of the writes")
        kafka_server.kill()          # kill -9, mid-stream
        time.sleep(5)                # longer than delivery_timeout: the batch fails, the worker retries
        kafka_server.start()
        writer.join(120)
        total = transactions * rows
        messages = consume(kafka_server.bootstrap, topic, until=total, timeout=180)
        deadline = time.monotonic() + 60
        while runner.tracker.acked_events < total and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        runner.request_stop()
        engine.join(90)
    assert runner.error is None
    assert runner.workers[0].counts["failed"] >= 1  # the retry path was taken
    by_id: dict[bytes, set[bytes]] = {}
    for m in messages:
        by_id.setdefault(dict(m.headers())["id"], set()).add(m.value())
    assert all(len(values) == 1 for values in by_id.values()), "a duplicate id carried a different event"
    row_ids = sorted(orjson.loads(next(iter(v)))["after"]["id"] for v in by_id.values())
    assert row_ids == list(range(1, total + 1))  # every row, no gap
    assert runner.tracker.acked_events == total
    assert runner.saved_position is not None
