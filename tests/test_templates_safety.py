"""Template values are data: an event value can never pick a path, a URL or a name the
broker refuses.  Each sink is run against its real destination (a directory, a local
HTTP server, Kafka, RabbitMQ, Redis)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from cdc.config import Context
from cdc.errors import PermanentSinkError
from cdc.event import ChangeEvent
from cdc.sinks.file import FileSink
from cdc.sinks.http import HttpSink
from cdc.sinks.kafka import KafkaSink
from cdc.sinks.rabbitmq import RabbitMQSink
from cdc.sinks.redis import RedisSink
from cdc.transforms.outbox import Outbox

from webhook_server import WebhookServer


def outbox_message(message_type: str, n: int = 1) -> ChangeEvent:
    """An outbox message whose ``message_type`` the application (or an attacker) chose."""
    row = {"id": n, "message_id": f"m-{n}", "message_type": message_type, "payload": {"n": n}}
    raw = ChangeEvent(f"0/A{n}:0", "c", None, row, {"id": n},
                      {"name": "shop", "schema": "public", "table": "outbox"}, 1, "public.outbox")
    return Outbox(destination="{message_type}")(raw)


def all_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("message_type", ["../../../escaped", "order/created", "..", "a\0b"])
def test_file_path_cannot_leave_its_directory(tmp_path, message_type):
    base = tmp_path / "deep" / "er"
    base.mkdir(parents=True)
    sink = FileSink("out/{destination}.jsonl", context=Context(base, name="f"))
    sink.open()
    with pytest.raises(PermanentSinkError, match="destination"):
        sink.write([outbox_message("OrderPlaced"), outbox_message(message_type, 2)])
    sink.write([outbox_message("OrderPlaced")])
    sink.close()
    assert all_files(tmp_path) == {"deep/er/out/OrderPlaced.jsonl"}  # nothing written elsewhere
    assert len((base / "out/OrderPlaced.jsonl").read_bytes().splitlines()) == 1


def test_file_constant_part_may_have_directories(tmp_path):
    sink = FileSink("out/{table}/{op}.jsonl", context=Context(tmp_path, name="f"))
    sink.open()
    sink.write([outbox_message("x")])
    sink.close()
    assert all_files(tmp_path) == {"out/outbox/c.jsonl"}


def test_http_url_values_are_percent_encoded():
    with WebhookServer() as server:
        sink = HttpSink(server.url + "/events/{destination}?kind={message_type}")
        sink.open()
        sink.write([outbox_message("../../admin/delete-all?confirm=yes#")])
        sink.write([outbox_message("a b&c=d")])
        with pytest.raises(PermanentSinkError, match="destination"):
            sink.write([outbox_message("..")])
        sink.close()
    paths = [r.path for r in server.requests]
    assert paths == ["/events/..%2F..%2Fadmin%2Fdelete-all%3Fconfirm%3Dyes%23"
                     "?kind=..%2F..%2Fadmin%2Fdelete-all%3Fconfirm%3Dyes%23",
                     "/events/a%20b%26c%3Dd?kind=a%20b%26c%3Dd"]


def test_http_host_cannot_come_from_a_value():
    with pytest.raises(PermanentSinkError, match="host"):
        HttpSink("https://{destination}.hooks.example/x")


def test_kafka_topic_is_checked_before_anything_is_sent(kafka_server):
    topic_ok = f"ok-{uuid.uuid4().hex[:8]}"
    sink = KafkaSink(kafka_server.bootstrap, topic=topic_ok + "{message_type}")
    sink.open()
    try:
        for bad in ("has space", "x" * 300, "a/b"):
            with pytest.raises(PermanentSinkError, match="topic"):
                sink.write([outbox_message(bad)])
        sink.write([outbox_message("")])  # a legal topic still goes
    finally:
        sink.close()
    routed = KafkaSink(kafka_server.bootstrap)  # the routed destination is checked as well
    routed.open()
    try:
        with pytest.raises(PermanentSinkError, match="topic"):
            routed.write([outbox_message("../x")])
    finally:
        routed.close()


def test_rabbitmq_names_are_checked(rabbitmq_server):
    sink = RabbitMQSink(rabbitmq_server.url, exchange="ex-{message_type}", routing_key="rk",
                        exchange_type="topic")
    sink.open()
    try:
        with pytest.raises(PermanentSinkError, match="exchange"):
            sink.write([outbox_message("bad name!")])
    finally:
        sink.close()
    sink = RabbitMQSink(rabbitmq_server.url, routing_key="{message_type}", mandatory=False)
    sink.open()
    try:
        with pytest.raises(PermanentSinkError, match="routing key"):
            sink.write([outbox_message("é" * 200)])  # 400 bytes: AMQP allows 255
    finally:
        sink.close()


def test_redis_stream_key_is_checked(redis_server):
    sink = RedisSink(redis_server.url, stream="{message_type}")
    sink.open()
    try:
        with pytest.raises(PermanentSinkError, match="stream"):
            sink.write([outbox_message("")])
    finally:
        sink.close()



def test_relative_file_template_without_context(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sink = FileSink("{destination}.jsonl")
    sink.open()
    sink.write([outbox_message("x")])
    with pytest.raises(PermanentSinkError):
        sink.write([outbox_message("../up")])
    sink.close()
    assert all_files(tmp_path) == {"x.jsonl"}
