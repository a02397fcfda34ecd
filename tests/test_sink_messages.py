"""The outbox is a message on every sink, and a key-changing update is a delete of the old
key then a create of the new one, on real Kafka, RabbitMQ, Redis, a file and a local
HTTP server."""

from __future__ import annotations

import uuid

import orjson
import redis
from test_sink_kafka import consume
from test_sink_rabbitmq import declare_queue, drain

from cdc.config import Context
from cdc.event import ChangeEvent
from cdc.sinks.file import FileSink
from cdc.sinks.http import HttpSink
from cdc.sinks.kafka import KafkaSink
from cdc.sinks.rabbitmq import RabbitMQSink
from cdc.sinks.redis import RedisSink
from cdc.transforms.outbox import Outbox

from webhook_server import WebhookServer

PAYLOADS = [{"order": 1, "total": "9.90"}, [1, 2, 3], "just text", 42]


def outbox_events(destination: str, key: str | None = "aggregate_id") -> list[ChangeEvent]:
    """The outbox rows of one order aggregate (``payload`` a jsonb column) as the
    ``outbox`` transform turns them into messages."""
    transform = Outbox(destination=destination, key=key) if key else Outbox(destination=destination)
    out = []
    for n, payload in enumerate(PAYLOADS):
        row = {"id": n, "message_id": f"msg-{n}", "message_type": "OrderPlaced", "aggregate_id": "order-17",
               "payload": payload, "status": "new", "occurred_at": "2026-11-25T10:00:00Z"}
        raw = ChangeEvent(f"0/B{n}:0", "c", None, row, {"id": n},
                          {"name": "shop", "schema": "public", "table": "outbox"}, 1, "public.outbox")
        out.append(transform(raw))
    return out


def test_kafka_sends_the_outbox_message(kafka_server):
    topic = f"msgs-{uuid.uuid4().hex[:8]}"
    sink = KafkaSink(kafka_server.bootstrap)
    sink.open()
    try:
        sink.write(outbox_events(topic))
    finally:
        sink.close()
    messages = consume(kafka_server.bootstrap, topic, until=len(PAYLOADS))
    assert [orjson.loads(m.value()) for m in messages] == PAYLOADS
    assert [dict(m.headers())["id"] for m in messages] == [f"msg-{n}".encode() for n in range(len(PAYLOADS))]
    assert {dict(m.headers())["message_type"] for m in messages} == {b"OrderPlaced"}
    assert {m.key() for m in messages} == {b"order-17"}  # one aggregate, one partition, in order


def test_kafka_key_without_aggregate_column_is_the_message_id(kafka_server):
    topic = f"msgs-{uuid.uuid4().hex[:8]}"
    sink = KafkaSink(kafka_server.bootstrap)
    sink.open()
    try:
        sink.write(outbox_events(topic, key=None)[:1])
    finally:
        sink.close()
    [message] = consume(kafka_server.bootstrap, topic, until=1)
    assert message.key() == b"msg-0"


def test_rabbitmq_sends_the_outbox_message(rabbitmq_server):
    queue = declare_queue(rabbitmq_server.url)
    sink = RabbitMQSink(rabbitmq_server.url, routing_key="{destination}")
    sink.open()
    try:
        sink.write(outbox_events(queue))
    finally:
        sink.close()
    got = drain(rabbitmq_server.url, queue)
    assert [orjson.loads(body) for _, _, body in got] == PAYLOADS
    assert [p.message_id for _, p, _ in got] == [f"msg-{n}" for n in range(len(PAYLOADS))]
    assert {p.type for _, p, _ in got} == {"OrderPlaced"}
    assert {p.headers["message_type"] for _, p, _ in got} == {"OrderPlaced"}


def test_redis_sends_the_outbox_message(redis_server):
    stream = f"msgs-{uuid.uuid4().hex[:8]}"
    sink = RedisSink(redis_server.url, stream="{destination}")
    sink.open()
    try:
        sink.write(outbox_events(stream))
    finally:
        sink.close()
    entries = redis.Redis.from_url(redis_server.url).xrange(stream)
    assert [orjson.loads(f[b"payload"]) for _, f in entries] == PAYLOADS
    assert [f[b"id"] for _, f in entries] == [f"msg-{n}".encode() for n in range(len(PAYLOADS))]
    assert {f[b"message_type"] for _, f in entries} == {b"OrderPlaced"}


def test_file_writes_the_outbox_message(tmp_path):
    sink = FileSink("out/{destination}.jsonl", context=Context(tmp_path, name="f"))
    sink.open()
    sink.write(outbox_events("orders"))
    sink.close()
    lines = (tmp_path / "out/orders.jsonl").read_bytes().splitlines()
    assert [orjson.loads(line) for line in lines] == PAYLOADS


def test_http_sends_scalar_payloads_as_they_are():
    with WebhookServer() as server:
        sink = HttpSink(server.url + "/{destination}")  # content defaults to the message
        sink.open()
        sink.write(outbox_events("orders")[2:3])
        sink.write(outbox_events("orders"))
        sink.close()
    assert server.requests[0].json == "just text"
    assert [e["payload"] for e in server.requests[1].json] == PAYLOADS


def test_http_payload_of_a_delete_is_the_old_row():
    deleted = ChangeEvent("0/C:0", "d", {"id": 5, "status": "paid"}, None, {"id": 5},
                          {"name": "shop", "schema": "public", "table": "orders"}, 1, "public.orders")
    key_only = deleted.replace(id="0/C:1", before=None)
    with WebhookServer() as server:
        sink = HttpSink(server.url, content="payload")
        sink.open()
        sink.write([deleted])
        sink.write([key_only])
        sink.close()
    assert [r.json for r in server.requests] == [{"id": 5, "status": "paid"}, {"id": 5}]


# ---- a key-changing update ------------------------------------------------------------

def key_change(table: str) -> list[ChangeEvent]:
    src = {"name": "shop", "schema": "public", "table": table}
    return [ChangeEvent("0/D:0", "c", None, {"id": 1, "s": "new"}, {"id": 1}, src, 1, f"public.{table}"),
            ChangeEvent("0/E:0", "u", {"id": 1, "s": "new"}, {"id": 2, "s": "new"}, {"id": 2}, src, 1,
                        f"public.{table}")]


def test_kafka_key_change_deletes_the_old_key(kafka_server):
    table = f"t{uuid.uuid4().hex[:8]}"
    sink = KafkaSink(kafka_server.bootstrap, tombstones=True)
    sink.open()
    try:
        sink.write(key_change(table))
    finally:
        sink.close()
    messages = consume(kafka_server.bootstrap, f"shop.public.{table}", until=4)
    got = [(m.key(), dict(m.headers())["op"], dict(m.headers())["id"], m.value() is None) for m in messages]
    assert got == [(b'{"id":1}', b"c", b"0/D:0", False),
                   (b'{"id":1}', b"d", b"0/E:0:delete", False),
                   (b'{"id":1}', b"d", b"0/E:0:delete:tombstone", True),
                   (b'{"id":2}', b"c", b"0/E:0", False)]
    delete, create = (orjson.loads(m.value()) for m in (messages[1], messages[3]))
    assert (delete["before"], delete["after"]) == ({"id": 1, "s": "new"}, None)
    assert (create["before"], create["after"]) == (None, {"id": 2, "s": "new"})


def test_redis_and_rabbitmq_key_change_delete_then_create(redis_server, rabbitmq_server):
    table = f"t{uuid.uuid4().hex[:8]}"
    sink = RedisSink(redis_server.url)
    sink.open()
    sink.write(key_change(table))
    sink.close()
    entries = redis.Redis.from_url(redis_server.url).xrange(f"shop.public.{table}")
    assert [(f[b"op"], orjson.loads(f[b"event"])["key"]) for _, f in entries] == \
        [(b"c", {"id": 1}), (b"d", {"id": 1}), (b"c", {"id": 2})]
    queue = declare_queue(rabbitmq_server.url)
    sink = RabbitMQSink(rabbitmq_server.url, routing_key=queue)
    sink.open()
    sink.write(key_change(table))
    sink.close()
    got = drain(rabbitmq_server.url, queue)
    assert [(p.headers["op"], p.message_id) for _, p, _ in got] == \
        [("c", "0/D:0"), ("d", "0/E:0:delete"), ("c", "0/E:0")]


def test_kafka_payload_of_an_ordinary_row_keeps_the_row_key(kafka_server):
    table = f"t{uuid.uuid4().hex[:8]}"
    sink = KafkaSink(kafka_server.bootstrap, content="payload")
    sink.open()
    try:
        sink.write(key_change(table)[:1])
    finally:
        sink.close()
    [message] = consume(kafka_server.bootstrap, f"shop.public.{table}", until=1)
    assert (message.key(), orjson.loads(message.value())) == (b'{"id":1}', {"id": 1, "s": "new"})
