"""``rabbitmq``: persistent messages with publisher confirms.

Each message is published with ``delivery_mode=2`` and ``mandatory``; ``write``
returns once the broker confirmed every one (for a durable queue: written to disk).
A lost connection or a nack is transient (the batch is sent again, same
``message_id``); an unroutable message or a missing exchange is permanent.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from ..config.model import Context
from ..errors import PermanentSinkError, TransientSinkError
from ..event import ChangeEvent
from ..observe.secrets import redact
from ..templates import Template
from ._extras import require

__all__ = ["RabbitMQSink"]

log = logging.getLogger("cdc.sink.rabbitmq")

# AMQP reply codes that retrying cannot fix: access refused, not found, precondition failed...
_PERMANENT_CODES = frozenset({403, 404, 406, 530, 540})


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
    """

    default_batch_size = 1000

    def __init__(self, url: str, exchange: str = "", routing_key: str = "{source}.{schema}.{table}",
                 exchange_type: str | None = None, mandatory: bool = True,
                 content_type: str = "application/json", context: Context | None = None) -> None:
        self.url = url
        self.exchange = Template(exchange, "exchange")
        self.routing_key = Template(routing_key, "routing_key")
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

    # ---- lifecycle -------------------------------------------------------------

    def open(self) -> None:
        pika = _import_pika()
        try:
            self._connection = pika.BlockingConnection(pika.URLParameters(self.url))
            self._channel = self._connection.channel()
            self._channel.confirm_delivery()
        except pika.exceptions.ProbableAuthenticationError as exc:
            raise PermanentSinkError(f"login refused: {redact(str(exc))}", sink=self.name) from None
        except pika.exceptions.AMQPError as exc:
            self.close()
            raise TransientSinkError(f"cannot connect: {redact(repr(exc))}", sink=self.name) from None
        self._declared.clear()
        log.info("sink %s: connected to %s", self.name, redact(self.url))

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except Exception:  # already broken: nothing left to flush
                pass

    # ---- writing ---------------------------------------------------------------

    def write(self, events: Sequence[ChangeEvent]) -> None:
        pika = _import_pika()
        if self._channel is None or not self._channel.is_open:
            self.close()
            self.open()
        try:
            for event in events:
                self._publish(pika, event)
        except pika.exceptions.UnroutableError:
            raise PermanentSinkError("a message could not be routed to any queue (mandatory)",
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
            raise TransientSinkError(f"connection lost: {redact(repr(exc))}", sink=self.name) from None

    def _publish(self, pika: Any, event: ChangeEvent) -> None:
        exchange = self.exchange.render(event)
        if self.exchange_type and exchange and exchange not in self._declared:
            self._channel.exchange_declare(exchange, self.exchange_type, durable=True)
            self._declared.add(exchange)
        properties = pika.BasicProperties(
            delivery_mode=2, message_id=event.id, content_type=self.content_type,
            timestamp=event.ts_ms // 1000, headers={"op": event.op, "table": event.table})
        # With confirms on, this blocks until the broker confirmed the message.
        self._channel.basic_publish(exchange, self.routing_key.render(event), event.to_json(),
                                    properties, mandatory=self.mandatory)
