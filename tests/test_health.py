"""/healthz and /readyz of ``cdc run``: readiness follows a sink's real server going
away and coming back.  The sink is a tiny one written here, talking to a real
redis-server (stopping it is how a destination goes down)."""

from __future__ import annotations

import json

import redis

from _ops_helpers import CdcProcess, basic_config, http_get, insert, make_orders, wait_for
from servers import RedisServer, free_port

SINK = '''
import redis
from cdc.errors import TransientSinkError

class RedisListSink:
    """RPUSH each event's JSON onto a list."""
    def __init__(self, url: str, key: str):
        self.client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self.key = key

    def open(self):
        self._call(self.client.ping)

    def write(self, events):
        self._call(lambda: self.client.rpush(self.key, *[e.to_json() for e in events]))

    def _call(self, fn):
        try:
            fn()
        except redis.RedisError as exc:
            raise TransientSinkError(f"redis: {exc}") from exc

    def close(self):
        self.client.close()
'''


def test_readyz_follows_a_sink_server(tmp_path, pg_database):
    make_orders(pg_database)
    (tmp_path / "redis_sink.py").write_text(SINK)
    server = RedisServer().start()
    port = free_port()
    sink = ("{type: 'redis_sink:RedisListSink', url: '%s', key: orders, "
            "retry: {initial_backoff: 0.2, max_backoff: 0.5}}" % server.url)
    config = basic_config(tmp_path, pg_database, f'metrics: {{listen: "127.0.0.1:{port}"}}', sink=sink)
    cdc = CdcProcess(config)
    ready = f"http://127.0.0.1:{port}/readyz"
    try:
        wait_for(lambda: http_get(ready)[0] == 200, 60, "ready")
        assert http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        insert(pg_database, 1, 5)
        client = redis.Redis.from_url(server.url)
        wait_for(lambda: client.llen("orders") == 5, 30, "5 events in redis")

        server.stop()
        insert(pg_database, 6, 5)   # the sink now fails to deliver these
        wait_for(lambda: http_get(ready)[0] == 503, 30, "503 while redis is down")
        status, body = http_get(ready)
        reasons = json.loads(body)["reasons"]
        assert any("copy.sinks[0]" in r and "redis" in r for r in reasons), reasons
        assert http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200  # alive, just not ready

        server.start()
        wait_for(lambda: http_get(ready)[0] == 200, 30, "200 after redis is back")
        client = redis.Redis.from_url(server.url)
        # redis kept nothing across the restart: the 5 events held during the outage arrive
        wait_for(lambda: client.llen("orders") == 5, 30, "the held events after the outage")
        assert sorted(json.loads(x)["after"]["id"] for x in client.lrange("orders", 0, -1)) == [6, 7, 8, 9, 10]
    finally:
        cdc.signal()
        code = cdc.wait(60)
        server.close()
    assert code == 0, cdc.text()
