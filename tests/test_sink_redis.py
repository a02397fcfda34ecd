"""The Redis sink against a real redis-server: streams, pub/sub, errors, a restart."""

from __future__ import annotations

import logging
import time
import uuid

import orjson
import pytest
import redis

from cdc.errors import PermanentSinkError, TransientSinkError
from cdc.event import ChangeEvent
from cdc.sinks.redis import RedisSink

from _ops_helpers import idle_broker_lost_and_back
from servers import RedisServer


def event(op: str, row_id: int, status: str = "new", seq: int = 0, table: str = "orders") -> ChangeEvent:
    row = {"id": row_id, "status": status}
    before, after = (row, None) if op == "d" else (None, row)
    return ChangeEvent(f"0/{row_id:X}:{seq}", op, before, after, {"id": row_id},
                       {"name": "shop", "db": "shop", "schema": "public", "table": table,
                        "ts_ms": 1764091000000}, 1764091000123, f"public.{table}")


def opened(sink: RedisSink) -> RedisSink:
    sink.open()
    return sink


def test_stream_entries_carry_id_op_and_event(redis_server):
    table = f"t{uuid.uuid4().hex[:8]}"
    sink = opened(RedisSink(redis_server.url))
    try:
        sink.write([event("c", 1, table=table), event("u", 1, "paid", seq=1, table=table),
                    event("d", 1, seq=2, table=table)])
    finally:
        sink.close()
    entries = redis.Redis.from_url(redis_server.url).xrange(f"shop.public.{table}")
    assert [f[b"id"] for _, f in entries] == [b"0/1:0", b"0/1:1", b"0/1:2"]
    assert [f[b"op"] for _, f in entries] == [b"c", b"u", b"d"]
    assert orjson.loads(entries[1][1][b"event"])["after"] == {"id": 1, "status": "paid"}


def test_maxlen_trims_the_stream(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    exact = f"exact-{uuid.uuid4().hex[:8]}"
    approx = f"approx-{uuid.uuid4().hex[:8]}"
    for name, approximate in ((exact, False), (approx, True)):
        sink = opened(RedisSink(redis_server.url, stream=name, maxlen=10, approximate=approximate,
                                id_field="event_id"))
        try:
            sink.write([event("c", i) for i in range(1, 501)])
        finally:
            sink.close()
    assert client.xlen(exact) == 10
    assert 10 <= client.xlen(approx) < 500   # trimmed in whole stream nodes
    assert client.xrevrange(exact, count=1)[0][1][b"event_id"] == b"0/1F4:0"


def test_pubsub_reaches_current_subscribers_only(redis_server):
    channel = f"ch-{uuid.uuid4().hex[:8]}"
    sink = opened(RedisSink(redis_server.url, mode="pubsub", stream=channel))
    subscriber = redis.Redis.from_url(redis_server.url).pubsub(ignore_subscribe_messages=True)
    try:
        sink.write([event("c", 1)])            # nobody listens: gone (at-most-once)
        subscriber.subscribe(channel)
        subscriber.get_message(timeout=1)        # the subscribe confirmation
        sink.write([event("c", 2), event("c", 3)])
        got = []
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            msg = subscriber.get_message(timeout=0.5)
            if msg:
                got.append(orjson.loads(msg["data"])["id"])
    finally:
        subscriber.close()
        sink.close()
    assert got == ["0/2:0", "0/3:0"]


def test_wrong_type_is_permanent(redis_server):
    key = f"plain-{uuid.uuid4().hex[:8]}"
    redis.Redis.from_url(redis_server.url).set(key, "not a stream")
    sink = opened(RedisSink(redis_server.url, stream=key))
    try:
        with pytest.raises(PermanentSinkError, match="WRONGTYPE"):
            sink.write([event("c", 1)])
    finally:
        sink.close()


def test_server_down_is_transient_and_recovers():
    with RedisServer() as server:
        sink = opened(RedisSink(server.url, stream="s", timeout=2))
        try:
            sink.write([event("c", 1)])
            server.kill()
            with pytest.raises(TransientSinkError, match="ConnectionError"):
                sink.write([event("c", 2)])
            server.start()
            sink.write([event("c", 2)])       # the same client reconnects
        finally:
            sink.close()
        # the server keeps nothing on disk: only what was written after the restart is there
        assert [f[b"id"] for _, f in redis.Redis.from_url(server.url).xrange("s")] == [b"0/2:0"]


def test_a_server_lost_while_idle_is_reported_and_recovered_without_a_write(tmp_path, caplog):
    """Nothing to write while Redis stops: the idle sink worker's keepalive (a PING every
    2 s) reports it (``not_ready``, what /readyz shows; one 'broker down' WARNING), and
    'broker back' once it answers again, before any change comes."""
    caplog.set_level(logging.INFO, logger="cdc")
    with RedisServer() as server:
        idle_broker_lost_and_back({"type": "redis", "url": server.url, "stream": "s", "timeout": 2}, tmp_path, caplog,
                                  event, server.kill, server.start)
