"""``rabbitmq``: persistent messages with publisher confirms.

Each message is published with ``delivery_mode=2`` and ``mandatory``; ``write``
returns once the broker confirmed every one (for a durable queue: written to disk).
A lost connection or a nack is transient (the batch is sent again, same
``message_id``); an unroutable message or a missing exchange is permanent.
"""

from __future__ import annotations

import logging
import re
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
        self.state = BrokerState(log, self.name)
        self._connected_once = False

    # ---- lifecycle -------------------------------------------------------------

    def open(self) -> None:
        pika = _import_pika()
        try:
            self._connection = pika.BlockingConnection(pika.URLParameters(self.url))
            self._channel = self._connection.channel()
            self._channel.confirm_delivery()
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

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except Exception:  # already broken: nothing left to flush
                pass

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
        pika = _import_pika()
        targets = self._targets(events)  # all checked before anything is published
        if self._channel is None or not self._channel.is_open:
            self.close()
            self.open()
        exchange = routing_key = ""
        try:
            for (exchange, routing_key), event in zip(targets, events):
                if event.op == "u" and event.before is not None and not is_message(event, self.content):
                    split = split_key_change(event)
                    if split is not None:  # the key changed: delete the old key, create the new
                        self._publish(pika, split[0], exchange, routing_key)
                        event = split[1]
                self._publish(pika, event, exchange, routing_key)
        except pika.exceptions.UnroutableError:
            raise PermanentSinkError(f"a message could not be routed to any queue (mandatory): exchange "
                                     f"{exchange or '(default)'!r}, routing key {routing_key!r} matches no"
                                     f" binding{' (no queue of that name)' if not exchange else ''}",
                                     sink=self.name) from None
        except pika.exceptions.NackError:
            raise TransientSinkError("the broker refused a message (nack)", sink=self.name) from None
        except pika.exceptions.ChannelClosedByBroker as exc:
            self.close()
            cls = PermanentSinkError if exc.reply_code in _PERMANENT_CODES else TransientSinkError
            raise cls(f"channel closed by the broker: {exc.reply_code} {exc.reply_text}",
                      sink=self.name) from None
        except (pika.exceptions.AMQPError, OSError) as exc:  # lost connection: reconnect next time
            self.close()
            message = f"connection lost: {redact(repr(exc))}"
            self.state.down(message)
            raise TransientSinkError(message, sink=self.name) from None

    def _publish(self, pika: Any, event: ChangeEvent, exchange: str, routing_key: str) -> None:
        if self.exchange_type and exchange and exchange not in self._declared:
            self._channel.exchange_declare(exchange, self.exchange_type, durable=True)
            self._declared.add(exchange)
        if is_message(event, self.content):
            message_type = str((event.message or {}).get("type", ""))
            properties = pika.BasicProperties(
                delivery_mode=2, message_id=event.id, content_type=self.content_type, type=message_type,
                timestamp=event.ts_ms // 1000, headers={"message_type": message_type})
            body = orjson.dumps(payload_of(event))
        else:
            properties = pika.BasicProperties(
                delivery_mode=2, message_id=event.id, content_type=self.content_type,
                timestamp=event.ts_ms // 1000, headers={"op": event.op, "table": event.table})
            body = event.to_json()
        # With confirms on, this blocks until the broker confirmed the message.
        self._channel.basic_publish(exchange, routing_key, body, properties, mandatory=self.mandatory)
