"""Readiness and logs that tell the truth, against real brokers that are killed and
restarted: Kafka readiness follows the producer's connection (not the last delivery),
library logs (librdkafka, pika, httpx) go through cdc's logging at debug level with one
cdc line per state change, and ``cdc check`` finds a missing RabbitMQ exchange."""

from __future__ import annotations

import io
import logging
import time
import uuid

import pika
import pytest

from cdc.config import Context
from cdc.errors import PermanentSinkError, TransientSinkError
from cdc.event import ChangeEvent
from cdc.observe.http import readiness
from cdc.observe.logging import setup_logging
from cdc.sinks.http import HttpSink
from cdc.sinks.rabbitmq import RabbitMQSink

from pgutil import Running, sql, stream_config
from webhook_server import WebhookServer


def event(n: int = 1) -> ChangeEvent:
    return ChangeEvent(f"0/{n:X}:0", "c", None, {"id": n}, {"id": n},
                       {"name": "shop", "schema": "public", "table": "orders"}, 1, "public.orders")


@pytest.fixture
def cdc_log():
    """cdc's own log set-up (as ``cdc run --log-level info`` does it), into a buffer."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    setup_logging("info", stream=stream)
    yield stream
    root.handlers[:], root.level = saved[0], saved[1]


def wait_until(predicate, timeout: float) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, "timed out"
        time.sleep(0.2)
    return time.monotonic() - started


def test_kafka_readiness_follows_the_broker_and_logs_once(kafka_server, pg_database, tmp_path, cdc_log):
    """``cdc run``'s runner (PostgreSQL source -> Kafka sink), idle when the broker dies."""
    sql(pg_database, "CREATE TABLE orders (id int PRIMARY KEY)")
    cfg = stream_config(tmp_path, pg_database, ["orders"], {"p": {"source": "db", "sinks": [{
        "type": "kafka", "name": "k", "bootstrap_servers": kafka_server.bootstrap,
        "topic": f"ready-{uuid.uuid4().hex[:8]}", "delivery_timeout": 60}]}})
    with Running(cfg) as running:
        runner = running.runner
        sql(pg_database, "INSERT INTO orders VALUES (1)")
        wait_until(lambda: runner.tracker.acked_events == 1, timeout=30)
        assert readiness(runner) == (True, [])
        kafka_server.kill()
        took = wait_until(lambda: not readiness(runner)[0], timeout=20)  # idle: no write in flight
        assert took < 20, "readiness must not wait for delivery_timeout (60 s)"
        assert "sink k: broker down" in readiness(runner)[1][0]
        time.sleep(5)
        kafka_server.start()
        wait_until(lambda: readiness(runner)[0], timeout=60)
        sql(pg_database, "INSERT INTO orders VALUES (2)")
        wait_until(lambda: runner.tracker.acked_events == 2, timeout=60)
    lines = cdc_log.getvalue().splitlines()
    assert len([line for line in lines if "broker down" in line]) == 1, lines
    assert len([line for line in lines if "broker back after" in line]) == 1, lines
    assert not [line for line in lines if "rdkafka" in line or "FAIL" in line], lines  # librdkafka: debug only


def test_pika_logs_are_routed_and_state_changes_logged_once(rabbitmq_server, cdc_log):
    queue = f"q-{uuid.uuid4().hex[:8]}"
    with pika.BlockingConnection(pika.URLParameters(rabbitmq_server.url)) as conn:
        conn.channel().queue_declare(queue, durable=True)
    sink = RabbitMQSink(rabbitmq_server.url, routing_key=queue, context=Context(None, name="r"))
    sink.open()
    try:
        sink.write([event()])
        rabbitmq_server.stop()
        for _ in range(3):
            with pytest.raises(TransientSinkError):
                sink.write([event(2)])
        assert "broker down" in sink.not_ready()  # what /readyz shows
        rabbitmq_server.start()
        sink.write([event(2)])
        assert sink.not_ready() is None
    finally:
        sink.close()
    lines = cdc_log.getvalue().splitlines()
    assert not [line for line in lines if "pika" in line or "Traceback" in line], lines
    assert len([line for line in lines if "broker down" in line]) == 1, lines
    assert len([line for line in lines if "broker back after" in line]) == 1, lines


def test_rabbitmq_check_finds_a_missing_exchange(rabbitmq_server):
    sink = RabbitMQSink(rabbitmq_server.url, exchange=f"missing-{uuid.uuid4().hex[:6]}", routing_key="x")
    with pytest.raises(PermanentSinkError, match="exchange 'missing-.*' does not exist"):
        sink.check()
    RabbitMQSink(rabbitmq_server.url, exchange="amq.topic", routing_key="x").check()


def test_unroutable_error_names_exchange_and_routing_key(rabbitmq_server):
    sink = RabbitMQSink(rabbitmq_server.url, exchange="amq.topic", routing_key="nobody.{table}")
    sink.open()
    try:
        with pytest.raises(PermanentSinkError, match="exchange 'amq.topic', routing key 'nobody.orders'"):
            sink.write([event()])
    finally:
        sink.close()


def test_httpx_logs_are_debug(cdc_log):
    with WebhookServer() as server:
        sink = HttpSink(server.url)
        sink.open()
        sink.write([event()])
        sink.close()
    assert "HTTP Request" not in cdc_log.getvalue()  # httpx's INFO line per request


def test_cdc_check_reports_a_missing_exchange(rabbitmq_server, tmp_path):
    from cdc.cli.check import check_config
    from cdc.config import parse_config
    raw = {"sources": {"s": {"type": "postgres", "dsn": "postgresql://unused@127.0.0.1:1/x", "tables": ["t"],
                             "checkpoint": {"type": "memory"}}},
           "pipelines": {"p": {"source": "s", "sinks": [
               {"type": "rabbitmq", "name": "missing", "url": rabbitmq_server.url, "exchange": "no-such-exchange"},
               {"type": "rabbitmq", "name": "present", "url": rabbitmq_server.url, "exchange": "amq.topic"}]}}}
    findings = {f.area: f for f in check_config(parse_config(raw, tmp_path / "c.yaml", {}))}
    missing, present = findings["sink missing (rabbitmq)"], findings["sink present (rabbitmq)"]
    assert missing.level == "error" and "exchange 'no-such-exchange' does not exist" in missing.message
    assert (present.level, present.message) == ("ok", "reachable")
