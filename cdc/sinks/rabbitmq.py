"""``rabbitmq``: persistent messages with publisher confirms.

Each message is published with ``delivery_mode=2`` and ``mandatory``.  The sink is
``Pipelined``: ``send`` publishes a batch without waiting, and the broker's
confirms (``basic.ack`` / ``basic.nack``, one delivery tag or ``multiple`` up to
one) are matched by delivery tag to the batches in flight; a batch is complete when
each of its messages is confirmed (for a durable queue: written to disk).  ``write``
is send, then wait.  A lost connection or a nack is transient (the worker publishes
again from the first batch not confirmed, in order, with the same ``message_id``);
an unroutable message or a missing exchange is permanent.

pika's ``BlockingConnection`` waits for each confirm when its channel is in confirm
mode, so the sink turns confirm mode on through the channel's underlying
asynchronous ``Channel`` (``confirm_delivery`` with an ack/nack callback) and
publishes through it, flushing once per batch.
"""

from __future__ import annotations

import logging
import re
import struct
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import orjson

from ..config.model import Context
from ..errors import PermanentSinkError, TransientSinkError
from ..event import ChangeEvent
from ..observe.secrets import redact
from ..templates import Template, UnsafeValue
from ._extras import require
from ._logs import BrokerState, route_library_logs
from ._message import Content, is_message, payload_of, split_key_change

__all__ = ["RabbitMQSink"]

log = logging.getLogger("cdc.sink.rabbitmq")
route_library_logs("pika", "cdc.sink.rabbitmq.pika")

# AMQP reply codes that retrying cannot fix: access refused, not found, precondition failed...
_PERMANENT_CODES = frozenset({403, 404, 406, 530, 540})


_LEGAL_EXCHANGE = re.compile(r"[a-zA-Z0-9_.:-]{0,255}")


def check_exchange(name: str) -> None:
    """AMQP 0-9-1: up to 255 of ``a-z A-Z 0-9 - _ . :``."""
    if not _LEGAL_EXCHANGE.fullmatch(name):
        raise UnsafeValue(f"exchange {name!r} is not a legal name (up to 255 of a-z A-Z 0-9 - _ . :)")


def check_routing_key(key: str) -> None:
    """AMQP 0-9-1: a short string, at most 255 bytes of UTF-8."""
    if len(key.encode()) > 255:
        raise UnsafeValue(f"routing key {key[:40]!r}... is longer than 255 bytes")


_PUBLISH = struct.pack(">HHH", 60, 40, 0)   # Basic.Publish, reserved ticket 0
# content_type, headers, delivery_mode, message_id, timestamp (AMQP 0-9-1 property flags)
_ENVELOPE_FLAGS = (1 << 15) | (1 << 13) | (1 << 12) | (1 << 7) | (1 << 6)


def _short(text: str) -> bytes:
    data = text.encode()
    if len(data) > 255:
        raise ValueError("longer than 255 bytes")
    return bytes((len(data),)) + data


def envelope_frames(channel: int, exchange: str, routing_key: str, mandatory: bool, content_type: str,
                    message_id: str, timestamp: int, op: str, table: str, body: bytes, max_body: int) -> bytes:
    """An event's Basic.Publish as AMQP 0-9-1 frames (method, header, body): what pika's
    ``basic_publish`` sends, encoded in a few ``struct`` calls instead of pika's generic
    per-field encoders (the sink's main cost)."""
    method = _PUBLISH + _short(exchange) + _short(routing_key) + (b"\x01" if mandatory else b"\x00")
    op_b, table_b = op.encode(), table.encode()
    table_field = (b"\x02opS" + struct.pack(">I", len(op_b)) + op_b
                   + b"\x05tableS" + struct.pack(">I", len(table_b)) + table_b)
    header = (struct.pack(">HHQH", 60, 0, len(body), _ENVELOPE_FLAGS) + _short(content_type)
              + struct.pack(">I", len(table_field)) + table_field + b"\x02" + _short(message_id)
              + struct.pack(">Q", timestamp))
    parts = [struct.pack(">BHI", 1, channel, len(method)), method, b"\xce",
             struct.pack(">BHI", 2, channel, len(header)), header, b"\xce"]
    for start in range(0, len(body), max_body):
        chunk = body[start:start + max_body]
        parts += [struct.pack(">BHI", 3, channel, len(chunk)), chunk, b"\xce"]
    return b"".join(parts)


class _Batch:
    """One batch in flight on one connection: messages not yet confirmed."""

    __slots__ = ("remaining", "failure", "generation", "deadline")

    def __init__(self, generation: int, deadline: float) -> None:
        self.remaining = 0
        self.failure: Exception | None = None
        self.generation = generation
        self.deadline = deadline


def _import_pika() -> Any:
    return require("pika", "rabbitmq", "rabbitmq", "pika")


class RabbitMQSink:
    """Options:

    - ``url``: ``amqp://user:password@host:port/vhost`` (the password is never logged).
    - ``exchange``: template; ``""`` (default) is the default exchange, which routes
      by queue name.
    - ``routing_key``: template (default ``{source}.{schema}.{table}``).
    - ``exchange_type``: when set (``topic``, ``direct``, ``fanout``, ``headers``), the
      exchange is declared durable before the first publish.
    - ``mandatory``: an unroutable message is an error (default) rather than dropped.
    - ``content``: ``auto`` (default: outbox messages as their payload, with
      ``message_id`` = the message id and ``type`` and a ``message_type`` header =
      its type; other events as envelopes), ``envelope`` or ``payload``.

    Exchange names and routing keys made from event values are checked against what
    the broker accepts (exchange: 255 of ``a-z A-Z 0-9 - _ . :``; routing key: 255
    bytes); an event that makes an illegal one is a permanent error for the error
    policy, never published elsewhere.  Field values are not escaped: a ``.`` in a
    value adds a word to a topic exchange's routing key.  An update that changes the
    key is published as a delete (id ``<id>:delete``) then a create, as Debezium does.
    """

    default_batch_size = 1000
    confirm_timeout = 60.0  # seconds a batch may wait for its confirms

    def __init__(self, url: str, exchange: str = "", routing_key: str = "{source}.{schema}.{table}",
                 exchange_type: str | None = None, mandatory: bool = True,
                 content_type: str = "application/json", content: Content = "auto",
                 context: Context | None = None) -> None:
        self.url = url
        self.exchange = Template(exchange, "exchange", check=check_exchange)
        self.routing_key = Template(routing_key, "routing_key", check=check_routing_key)
        self.content = content
        self.exchange_type = exchange_type
        self.mandatory = mandatory
        self.content_type = content_type
        self.name = context.name if context else "rabbitmq"
        problems = self.exchange.problems("exchange") + self.routing_key.problems("routing_key")
        if problems:
            raise PermanentSinkError(str(problems[0]), sink=self.name)
        self._connection: Any = None
        self._channel: Any = None
        self._declared: set[str] = set()
        self._generation = 0                 # one per channel: delivery tags restart at 1
        self._tag = 0                        # the last delivery tag published on the channel
        self._unconfirmed: OrderedDict[int, _Batch] = OrderedDict()
        self._returned: str | None = None    # a Basic.Return precedes its message's ack
        self._closed_by_broker: Exception | None = None
        self.state = BrokerState(log, self.name)
        self._connected_once = False

    # ---- lifecycle -------------------------------------------------------------

    def open(self) -> None:
        pika = _import_pika()
        try:
            self._connection = pika.BlockingConnection(pika.URLParameters(self.url))
            self._channel = self._connection.channel()
            self._confirm_mode(self._channel._impl)
        except pika.exceptions.ProbableAuthenticationError as exc:
            raise PermanentSinkError(f"login refused: {redact(str(exc))}", sink=self.name) from None
        except (pika.exceptions.AMQPError, OSError) as exc:
            self.close()
            message = f"cannot connect: {redact(repr(exc))}"
            self.state.down(message)
            raise TransientSinkError(message, sink=self.name) from None
        self._declared.clear()
        if not self._connected_once:
            log.info("sink %s: connected to %s", self.name, redact(self.url))
            self._connected_once = True
        self.state.up()

    def _confirm_mode(self, impl: Any) -> None:
        """Confirm mode with our own ack/nack callback (no wait per publish)."""
        self._generation += 1
        self._tag = 0
        self._fail_unconfirmed(None)
        self._returned = self._closed_by_broker = None
        selected: list[object] = []
        impl.add_on_return_callback(self._on_return)
        impl.add_on_close_callback(self._on_channel_closed)
        impl.confirm_delivery(ack_nack_callback=self._on_confirm, callback=selected.append)
        deadline = time.monotonic() + 30
        while not selected:
            if time.monotonic() > deadline:
                raise TimeoutError("no Confirm.SelectOk within 30 s")
            self._connection.process_data_events(0.1)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        tag, nack = method.delivery_tag, method.NAME == "Basic.Nack"
        unconfirmed = self._unconfirmed
        if method.multiple:
            tags = []
            for t in unconfirmed:
                if t > tag:
                    break
                tags.append(t)
        else:
            tags = [tag]
        for t in tags:
            batch = unconfirmed.pop(t, None)
            if batch is None:
                continue
            batch.remaining -= 1
            if nack and batch.failure is None:
                batch.failure = TransientSinkError("the broker refused a message (nack)", sink=self.name)
            elif self._returned is not None and batch.failure is None:
                batch.failure = PermanentSinkError(self._returned, sink=self.name)
        self._returned = None

    def _on_return(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        exchange, routing_key = method.exchange, method.routing_key
        self._returned = (f"a message could not be routed to any queue (mandatory): exchange "
                          f"{exchange or '(default)'!r}, routing key {routing_key!r} matches no"
                          f" binding{' (no queue of that name)' if not exchange else ''}")

    def _on_channel_closed(self, channel: Any, reason: Exception) -> None:
        self._closed_by_broker = reason

    def _fail_unconfirmed(self, failure: Exception | None) -> None:
        for batch in self._unconfirmed.values():
            if batch.failure is None and failure is not None:
                batch.failure = failure
        self._unconfirmed.clear()

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except Exception:  # already broken: nothing left to flush
                pass

    def keepalive(self) -> None:
        """Idle: serve the heartbeats, or the broker drops the connection after two missed ones.
        A connection lost meanwhile is reported (``not_ready``, one 'broker down' WARNING) and
        opened again here, so that readiness follows the broker without waiting for a write."""
        pika = _import_pika()
        if self._connection is None or not self._connection.is_open:
            self.close()
            self.open()  # TransientSinkError while the broker is down (the state says so)
            return
        try:
            self._connection.process_data_events(0)
        except (pika.exceptions.AMQPError, OSError) as exc:
            self.close()
            self.state.down(f"connection lost: {redact(repr(exc))}")

    def not_ready(self) -> str | None:
        """Why the sink is not ready (its broker connection was lost), or None; read by ``/readyz``."""
        return self.state.not_ready()

    def check(self) -> None:
        """``cdc check``: connect, and make sure a fixed exchange (or, on the default
        exchange, a fixed queue) exists, since publishing to a missing one fails."""
        pika = _import_pika()
        self.open()
        try:
            exchange, key = self.exchange.text, self.routing_key.text
            if self.exchange.is_constant and exchange and not self.exchange_type:
                what, probe = f"exchange {exchange!r}", lambda: self._channel.exchange_declare(exchange, passive=True)
            elif self.exchange.is_constant and not exchange and self.routing_key.is_constant:
                what, probe = f"queue {key!r} (the default exchange routes by queue name)", \
                    lambda: self._channel.queue_declare(key, passive=True)
            else:
                return
            try:
                probe()
            except pika.exceptions.ChannelClosedByBroker as exc:
                raise PermanentSinkError(f"{what} does not exist on the broker ({exc.reply_code} {exc.reply_text})",
                                         sink=self.name) from None
        finally:
            self.close()

    # ---- writing ---------------------------------------------------------------

    def _targets(self, events: Sequence[ChangeEvent]) -> list[tuple[str, str]]:
        out = []
        for event in events:
            try:
                out.append((self.exchange.render(event), self.routing_key.render(event)))
            except UnsafeValue as exc:
                raise PermanentSinkError(f"event {event.id}: {exc}", sink=self.name, events=[event]) from None
        return out

    def write(self, events: Sequence[ChangeEvent]) -> None:
        handle = self.send(events)
        while not self.wait(handle, 1.0):
            pass

    def send(self, events: Sequence[ChangeEvent]) -> _Batch:
        """Publish ``events`` without waiting for their confirms (``Pipelined``)."""
        pika = _import_pika()
        targets = self._targets(events)  # all checked before anything is published
        if self._channel is None or not self._channel.is_open:
            self.close()
            self.open()
        batch = _Batch(self._generation, time.monotonic() + self.confirm_timeout)
        # pika hands each frame (3 per message) to the socket with its own send(); the
        # batch's frames are collected and handed over as one buffer instead
        connection = self._connection._impl
        frames: list[bytes] = []
        try:
            if self.exchange_type:  # before the frames are held back: a declare waits for its reply
                for exchange in dict.fromkeys(e for e, _ in targets):
                    if exchange and exchange not in self._declared:
                        self._channel.exchange_declare(exchange, self.exchange_type, durable=True)
                        self._declared.add(exchange)
            connection._adapter_emit_data = frames.append
            try:
                for (exchange, routing_key), event in zip(targets, events):
                    if event.op == "u" and event.before is not None and not is_message(event, self.content):
                        split = split_key_change(event)
                        if split is not None:  # the key changed: delete the old key, create the new
                            self._publish(pika, split[0], exchange, routing_key, batch)
                            event = split[1]
                    self._publish(pika, event, exchange, routing_key, batch)
            finally:
                del connection._adapter_emit_data  # the class's method again
                if frames:  # whole messages only: pika marshals a message before emitting it
                    connection._adapter_emit_data(b"".join(frames))
            self._connection.process_data_events(0)  # send the batch, read confirms so far
        except Exception as exc:
            self._failed(pika, exc)
        return batch

    def wait(self, handle: object, timeout: float) -> bool:
        """True once every message of the batch ``handle`` is confirmed (``basic.ack``);
        raises for a nack, an unroutable message, a lost connection or ``confirm_timeout``."""
        assert isinstance(handle, _Batch)
        pika = _import_pika()
        end = time.monotonic() + timeout
        try:
            while handle.remaining and handle.failure is None:
                if handle.generation != self._generation or self._connection is None:
                    raise TransientSinkError("the connection was lost with the batch unconfirmed", sink=self.name)
                if self._closed_by_broker is not None:
                    raise self._closed_by_broker
                now = time.monotonic()
                if now > handle.deadline:
                    self.close()
                    raise TransientSinkError(f"{handle.remaining} messages without a confirm after "
                                             f"{self.confirm_timeout:.0f} s", sink=self.name)
                if now >= end:
                    return False
                self._connection.process_data_events(min(end - now, 0.1))
        except (TransientSinkError, PermanentSinkError):
            raise
        except Exception as exc:
            self._failed(pika, exc)
        if handle.failure is not None:
            raise handle.failure
        self.state.up()
        return True

    def _failed(self, pika: Any, exc: Exception) -> None:
        """Raise the sink error for a failure while publishing or waiting for confirms."""
        if isinstance(exc, pika.exceptions.ChannelClosedByBroker):
            self.close()
            cls = PermanentSinkError if exc.reply_code in _PERMANENT_CODES else TransientSinkError
            raise cls(f"channel closed by the broker: {exc.reply_code} {exc.reply_text}",
                      sink=self.name) from None
        if isinstance(exc, (pika.exceptions.AMQPError, OSError)):  # lost connection: reconnect next time
            self.close()
            message = f"connection lost: {redact(repr(exc))}"
            self.state.down(message)
            raise TransientSinkError(message, sink=self.name) from None
        raise exc

    def _publish(self, pika: Any, event: ChangeEvent, exchange: str, routing_key: str, batch: _Batch) -> None:
        if is_message(event, self.content):
            message_type = str((event.message or {}).get("type", ""))
            properties = pika.BasicProperties(
                delivery_mode=2, message_id=event.id, content_type=self.content_type, type=message_type,
                timestamp=event.ts_ms // 1000, headers={"message_type": message_type})
            body = orjson.dumps(payload_of(event))
        else:
            if self._closed_by_broker is not None:
                raise self._closed_by_broker
            impl = self._channel._impl
            if not impl.is_open:
                raise pika.exceptions.ChannelWrongStateError("channel is closed")
            body = event.to_json()
            try:
                frames = envelope_frames(impl.channel_number, exchange, routing_key, self.mandatory,
                                         self.content_type, event.id, event.ts_ms // 1000, event.op,
                                         event.table, body, impl.connection._body_max_length)
            except ValueError:  # a field too long for a short string: pika's encoder says which
                frames = None
            if frames is not None:
                impl.connection._adapter_emit_data(frames)  # held back by ``send`` as one buffer
                self._tag += 1
                self._unconfirmed[self._tag] = batch
                batch.remaining += 1
                return
            properties = pika.BasicProperties(
                delivery_mode=2, message_id=event.id, content_type=self.content_type,
                timestamp=event.ts_ms // 1000, headers={"op": event.op, "table": event.table})
        if self._closed_by_broker is not None:
            raise self._closed_by_broker
        # The underlying channel: no flush and no wait per message (``send`` flushes).
        self._channel._impl.basic_publish(exchange, routing_key, body, properties, mandatory=self.mandatory)
        self._tag += 1
        self._unconfirmed[self._tag] = batch
        batch.remaining += 1
