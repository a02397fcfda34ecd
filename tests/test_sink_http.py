"""HTTP webhook sink against a real local HTTP server (tests/webhook_server.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import socket
import time

import pytest

from cdc.config import Context, RetryOptions, SinkSpec
from cdc.engine import AckTracker, SinkWorker
from cdc.errors import PermanentSinkError, TransientSinkError
from cdc.event import ChangeEvent
from cdc.sinks.http import HttpSink

from webhook_server import WebhookServer


def event(i: int, **row) -> ChangeEvent:
    return ChangeEvent(f"0/16B3748:{i}", "c", None, {"id": i, **row}, {"id": i},
                       {"name": "shop", "schema": "public", "table": "orders"}, 1, "public.orders")


@pytest.fixture
def server():
    with WebhookServer() as s:
        yield s


def open_sink(url: str, **options) -> HttpSink:
    sink = HttpSink(url, **options)
    sink.open()
    return sink


def test_batch_is_one_json_array_with_ids(server):
    sink = open_sink(server.url + "/hook")
    sink.write([event(1), event(2), event(3)])
    sink.close()
    (req,) = server.requests
    assert req.path == "/hook" and req.headers["content-type"] == "application/json"
    assert [e["id"] for e in req.json] == ["0/16B3748:1", "0/16B3748:2", "0/16B3748:3"]
    assert req.json[0]["after"] == {"id": 1}
    assert req.headers["idempotency-key"]  # stable for the same batch
    sink = open_sink(server.url + "/hook")
    sink.write([event(1), event(2), event(3)])
    assert server.requests[1].headers["idempotency-key"] == req.headers["idempotency-key"]


def test_single_event_has_its_id_as_idempotency_key_and_standard_webhooks_signature(server):
    key = b"0123456789abcdef0123456789abcdef"
    sink = open_sink(server.url, secret="whsec_" + base64.b64encode(key).decode())
    sink.write([event(7, status="paid")])
    (req,) = server.requests
    assert req.json["id"] == "0/16B3748:7" and req.json["after"] == {"id": 7, "status": "paid"}
    assert req.headers["idempotency-key"] == req.headers["webhook-id"] == "0/16B3748:7"
    ts = req.headers["webhook-timestamp"]
    assert abs(int(ts) - time.time()) < 60
    expected = base64.b64encode(hmac.new(key, f"0/16B3748:7.{ts}.".encode() + req.body,
                                         hashlib.sha256).digest()).decode()
    assert req.headers["webhook-signature"] == "v1," + expected


def test_url_template_and_payload_content(server):
    e1 = event(1).replace(destination="orders", after={"total": 5}, message={"type": "OrderPlaced"})
    e2 = event(2).replace(destination="orders", after={"total": 6}, message={"type": "OrderPlaced"})
    e3 = event(3).replace(destination="users", after={"name": "x"}, message={"type": "UserCreated"})
    sink = open_sink(server.url + "/in/{destination}", content="payload")
    sink.write([e1, e2, e3])
    assert [r.path for r in server.requests] == ["/in/orders", "/in/users"]
    assert server.requests[0].json == [{"id": "0/16B3748:1", "type": "OrderPlaced", "payload": {"total": 5}},
                                       {"id": "0/16B3748:2", "type": "OrderPlaced", "payload": {"total": 6}}]
    assert server.requests[1].json == {"name": "x"}


def test_status_codes_are_classified(server):
    sink = open_sink(server.url)
    server.fail_next(503, headers={"Retry-After": "7"})
    with pytest.raises(TransientSinkError) as info:
        sink.write([event(1)])
    assert info.value.retry_after == 7.0
    server.fail_next(429)
    with pytest.raises(TransientSinkError):
        sink.write([event(1)])
    server.fail_next(422)
    with pytest.raises(PermanentSinkError, match="HTTP 422"):
        sink.write([event(1)])
    sink.write([event(1)])
    assert [r.status for r in server.requests] == [503, 429, 422, 200]


def test_connection_refused_is_transient():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = open_sink(f"http://127.0.0.1:{port}", timeout=2)
    with pytest.raises(TransientSinkError):
        sink.write([event(1)])


def _worker(sink, tmp_path, **spec) -> tuple[SinkWorker, AckTracker, list]:
    s = SinkSpec("http", HttpSink, {}, "sinks[0]", Context(tmp_path, name="hook"), **spec)
    tracker, fatal = AckTracker(), []
    return SinkWorker(s, sink, tracker, lambda name, exc: fatal.append(exc)), tracker, fatal


def test_worker_retries_5xx_with_backoff_and_keeps_order(server, tmp_path):
    server.fail_next(500, n=2)
    worker, tracker, fatal = _worker(HttpSink(server.url), tmp_path, batch_size=2,
                                     retry=RetryOptions(0, 0.05, 0.2))
    worker.start()
    seq = tracker.add(1, {"lsn": "0/1"}, 4, 0)
    worker.submit(seq, [event(i) for i in range(4)])
    deadline = time.monotonic() + 30
    while not tracker.drained and time.monotonic() < deadline:
        tracker.wait(0.1)
    worker.stop(5)
    assert tracker.position == {"lsn": "0/1"} and not fatal
    ids = [e["id"] for r in server.accepted for e in r.json]
    assert ids == [f"0/16B3748:{i}" for i in range(4)]
    assert [r.status for r in server.requests][:2] == [500, 500]


def test_worker_stops_on_4xx_with_on_error_stop(server, tmp_path):
    server.reject(b'"id":1', 400)
    worker, tracker, fatal = _worker(HttpSink(server.url), tmp_path, batch_size=1, on_error="stop")
    worker.start()
    seq = tracker.add(1, {"lsn": "0/1"}, 2, 0)
    worker.submit(seq, [event(0), event(1)])
    deadline = time.monotonic() + 30
    while not fatal and time.monotonic() < deadline:
        time.sleep(0.05)
    worker.stop(5)
    assert isinstance(fatal[0], PermanentSinkError) and tracker.position is None
