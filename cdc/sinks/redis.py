"""``redis``: Redis Streams (``XADD``) or pub/sub (``PUBLISH``).

Streams keep messages: each event is one entry with the fields ``id``, ``op`` and
``event`` (the JSON envelope), added in one pipelined round trip per batch.  The
batch is acknowledged once Redis replied to every ``XADD``; how durable that is
follows the server's persistence settings (``appendonly yes`` with
``appendfsync always`` for no loss on a crash).

Pub/sub keeps nothing: a message goes to whoever is subscribed at that moment, so
a subscriber that is away misses it.  ``mode: pubsub`` is at-most-once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import orjson

from ..config.model import Context
from ..errors import PermanentSinkError, TransientSinkError
from ..event import ChangeEvent
from ..observe.secrets import redact
from ..templates import Template, UnsafeValue
from ._extras import require
from ._logs import BrokerState
from ._message import Content, body_of, is_message, payload_of, split_key_change

__all__ = ["RedisSink"]

log = logging.getLogger("cdc.sink.redis")


def check_stream_key(key: str) -> None:
    """Redis takes any binary key, but an empty name is a mistake, not a destination."""
    if not key:
        raise UnsafeValue("the stream key is empty")


def _import_redis() -> Any:
    return require("redis", "redis", "redis", "redis-py")


class RedisSink:
    """Options:

    - ``url``: ``redis://[:password@]host:port/db`` (the password is never logged).
    - ``mode``: ``stream`` (default) or ``pubsub``.
    - ``stream``: the stream key (or channel, in pub/sub mode) template, default
      ``{source}.{schema}.{table}``.
    - ``maxlen``: cap each stream at about this many entries (``XADD MAXLEN ~``);
      ``approximate: false`` trims exactly (slower).
    - ``id_field``: the field that carries the event id (default ``id``).
    - ``content``: ``auto`` (default), ``envelope`` or ``payload``.  A message (an
      outbox event under ``auto``) is an entry ``id`` (message_id), ``message_type``,
      ``payload`` (the payload as the application wrote it); a change is ``id``,
      ``op``, ``event`` (the envelope).  In pub/sub mode the body alone is published.

    An event whose values render an empty stream key is a permanent error.  An update
    that changes the key is added as a delete (id ``<id>:delete``) then a create.
    """

    default_batch_size = 1000

    def __init__(self, url: str, mode: Literal["stream", "pubsub"] = "stream",
                 stream: str = "{source}.{schema}.{table}", maxlen: int | None = None,
                 approximate: bool = True, id_field: str = "id", timeout: float = 10.0,
                 content: Content = "auto", context: Context | None = None) -> None:
        self.content = content
        self.url = url
        self.mode = mode
        self.stream = Template(stream, "stream", check=check_stream_key)
        self.maxlen = maxlen
        self.approximate = approximate
        self.id_field = id_field
        self.timeout = timeout
        self.name = context.name if context else "redis"
        problems = self.stream.problems("stream")
        if problems:
            raise PermanentSinkError(str(problems[0]), sink=self.name)
        self._client: Any = None
        self.state = BrokerState(log, self.name)

    def open(self) -> None:
        redis = _import_redis()
        self._client = redis.Redis.from_url(self.url, socket_timeout=self.timeout,
                                            socket_connect_timeout=self.timeout)
        try:
            self._client.ping()
        except redis.RedisError as exc:
            self._raise(redis, exc)
        log.info("sink %s: connected to %s (%s)", self.name, redact(self.url), self.mode)

    def not_ready(self) -> str | None:
        """Why the sink is not ready (the server stopped answering), or None; read by ``/readyz``."""
        return self.state.not_ready()

    def keepalive(self) -> None:
        """Idle: a PING, so that a server lost while nothing is written shows in ``/readyz``."""
        redis = _import_redis()
        if self._client is None:
            self.open()
            return
        try:
            self._client.ping()
        except redis.RedisError as exc:
            self._raise(redis, exc)
        self.state.up()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def write(self, events: Sequence[ChangeEvent]) -> None:
        redis = _import_redis()
        if self._client is None:
            self.open()
        keys = self._keys(events)  # all checked before anything is sent
        pipe = self._client.pipeline(transaction=False)
        content = self.content
        if self.mode == "stream":
            id_field, maxlen, approximate = self.id_field, self.maxlen, self.approximate
            for key, event in zip(keys, events):
                if is_message(event, content):
                    fields = {id_field: event.id, "message_type": str((event.message or {}).get("type", "")),
                              "payload": orjson.dumps(payload_of(event))}
                else:
                    if event.op == "u" and event.before is not None:
                        split = split_key_change(event)
                        if split is not None:  # the key changed: delete the old key, create the new
                            old = split[0]
                            pipe.xadd(key, {id_field: old.id, "op": "d", "event": old.to_json()},
                                      maxlen=maxlen, approximate=approximate)
                            event = split[1]
                    fields = {id_field: event.id, "op": event.op, "event": event.to_json()}
                pipe.xadd(key, fields, maxlen=maxlen, approximate=approximate)
        else:
            for key, event in zip(keys, events):
                pipe.publish(key, body_of(event, content))
        try:
            pipe.execute(raise_on_error=True)
        except redis.RedisError as exc:
            self._raise(redis, exc)
        self.state.up()

    def _keys(self, events: Sequence[ChangeEvent]) -> list[str]:
        render = self.stream.render
        out = []
        for event in events:
            try:
                out.append(render(event))
            except UnsafeValue as exc:
                raise PermanentSinkError(f"event {event.id}: stream: {exc}", sink=self.name,
                                         events=[event]) from None
        return out

    def _raise(self, redis: Any, exc: Exception) -> None:
        message = redact(f"{type(exc).__name__}: {exc}")
        if isinstance(exc, redis.AuthenticationError):  # a ConnectionError in redis-py
            raise PermanentSinkError(message, sink=self.name) from None
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)):
            self.state.down(message)
            raise TransientSinkError(message, sink=self.name) from None
        if isinstance(exc, redis.ResponseError):
            # WRONGTYPE, NOAUTH, a bad MAXLEN: the same command would fail again.
            if "OOM" in str(exc) or "LOADING" in str(exc) or "READONLY" in str(exc):
                raise TransientSinkError(message, sink=self.name) from None
            raise PermanentSinkError(message, sink=self.name) from None
        raise TransientSinkError(message, sink=self.name) from None
