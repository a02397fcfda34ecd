"""``kafka``: one message per event, acknowledged by the broker's delivery reports.

The producer is idempotent with ``acks=all``, so librdkafka's own retries neither
reorder nor duplicate messages within a partition.  The sink is ``Pipelined``:
``send`` produces a batch without waiting, so the reader and the broker overlap.
Only failures call Python code (``delivery.report.only.error``), although
confluent-kafka still takes the GIL once per message to free its per-message state
(its ``dr_msg_cb`` checks that setting after taking the GIL).  Batches complete
when the producer's queue is empty: ``len(producer)`` counts every message without
an outcome, including failure reports not yet served, so once it reaches 0 every
batch produced before then has been accepted by the broker, unless a failure was
reported, which fails every batch not yet complete.  So ``wait`` lets the queue
drain (at least ``DRAIN_WAIT``) rather than return to have more produced, which
would only push the oldest batch's completion back under a steady stream of
changes.  ``write`` (send, then wait) returns only when
the broker has accepted every message.  A failure is ``TransientSinkError`` (broker
down, timeout, leader moving) or ``PermanentSinkError`` (message too large, not
authorised).  A batch sent again may be delivered twice; consumers deduplicate on
the ``id`` header.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Sequence
from typing import Any

import orjson

from ..config.model import Context
from ..errors import PermanentSinkError, TransientSinkError
from ..event import ChangeEvent
from ..templates import Template, UnsafeValue
from ._extras import require
from ._logs import BrokerState, LibraryLog
from ._message import Content, message_key, payload_of, split_key_change

__all__ = ["KafkaSink", "DEFAULT_TOPIC"]

log = logging.getLogger("cdc.sink.kafka")

DEFAULT_TOPIC = "{source}.{schema}.{table}"

# Settings cdc relies on for "nothing lost, nothing reordered"; `config` cannot weaken them.
_REQUIRED = {"enable.idempotence": True, "acks": "all"}

# Broker refusals that no retry can fix (librdkafka error names).
_PERMANENT = frozenset({
    "MSG_SIZE_TOO_LARGE", "INVALID_RECORD", "RECORD_LIST_TOO_LARGE", "INVALID_TOPIC_EXCEPTION",
    "TOPIC_AUTHORIZATION_FAILED", "CLUSTER_AUTHORIZATION_FAILED",
    "TRANSACTIONAL_ID_AUTHORIZATION_FAILED", "SASL_AUTHENTICATION_FAILED",
    "_AUTHENTICATION", "_MSG_SIZE_TOO_LARGE", "_INVALID_ARG", "_UNKNOWN_TOPIC",
    "UNSUPPORTED_FOR_MESSAGE_FORMAT", "POLICY_VIOLATION", "_SSL",
})


# Seconds ``wait`` waits for the producer's queue to empty, at least (see ``wait``).
DRAIN_WAIT = 0.2

_LEGAL_TOPIC = re.compile(r"[a-zA-Z0-9._-]{1,249}")


def check_topic(topic: str) -> None:
    """Kafka's own rule: 1-249 of ``a-z A-Z 0-9 . _ -``, and not ``.`` or ``..``."""
    if not _LEGAL_TOPIC.fullmatch(topic) or topic in (".", ".."):
        raise UnsafeValue(f"{topic!r} is not a legal Kafka topic name"
                          " (1-249 characters of a-z A-Z 0-9 . _ -)")


class _Batch:
    """One batch in flight: the producer's message count after it, and its deadline."""

    __slots__ = ("end", "deadline", "epoch")

    def __init__(self, end: int, deadline: float, epoch: int) -> None:
        self.end = end
        self.deadline = deadline
        self.epoch = epoch


def _import_kafka() -> Any:
    return require("confluent_kafka", "kafka", "kafka", "confluent-kafka")


class KafkaSink:
    """Options:

    - ``bootstrap_servers``: ``host:port[,host:port...]``.
    - ``topic``: template (default ``{source}.{schema}.{table}``).  When ``topic`` is
      not set and the ``route`` transform gave the event a destination, that wins.
      The topic must be a legal Kafka name (1-249 of ``a-z A-Z 0-9 . _ -``); an event
      whose values make an illegal one is a permanent error (the error policy decides),
      and is never sent to another topic.
    - ``tombstones``: after a delete, also send a null-valued message with the same
      key, so log compaction can drop the row.  An update that changes the key is
      sent as a delete under the old key (id ``<id>:delete``, plus its tombstone) and
      a create under the new key, as Debezium does, so compaction forgets the old key.
    - ``content``: ``auto`` (default), ``envelope`` or ``payload``.  A message (an
      outbox event under ``auto``) is sent as its payload, with headers ``id`` =
      ``message_id`` and ``message_type``, keyed by the outbox's aggregate id (the
      transform's ``key`` column) or else its ``message_id``.
    - ``delivery_timeout``: seconds librdkafka keeps trying one message before the
      batch fails as transient (``message.timeout.ms``).
    - ``config``: any other librdkafka producer setting (``compression.type``,
      ``security.protocol``, ``sasl.password``...).  Values are never logged.
    """

    default_batch_size = 5000

    def __init__(self, bootstrap_servers: str, topic: str | None = None, tombstones: bool = False,
                 delivery_timeout: float = 60.0, config: dict[str, Any] | None = None,
                 content: Content = "auto", context: Context | None = None) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.template = Template(topic or DEFAULT_TOPIC, "topic", check=check_topic)
        self.content = content
        self._routed_ok: set[str] = set()
        self.routed = topic is None
        self.tombstones = tombstones
        self.delivery_timeout = delivery_timeout
        self.extra = dict(config or {})
        self.name = context.name if context else "kafka"
        problems = self.template.problems("topic")
        if problems:
            raise PermanentSinkError(str(problems[0]), sink=self.name)
        self._producer: Any = None
        self._produced = 0                      # messages produced by this producer
        self._drained = 0                       # ... of which all had an outcome when the queue was empty
        self._epoch = 0                         # one per producer instance
        self._failures: list[Any] = []          # failure reports not yet raised
        self.state = BrokerState(log, self.name)
        self._lock = threading.Lock()       # held by write: the idle poller stays out
        self._stop_polling = threading.Event()
        self._poller: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------

    def producer_config(self) -> dict[str, Any]:
        conf: dict[str, Any] = {"linger.ms": 5, "compression.type": "lz4",
                                "queue.buffering.max.messages": 1_000_000}
        conf.update(self.extra)
        for name, value in _REQUIRED.items():
            if str(conf.get(name, value)).lower() not in (str(value).lower(), "-1"):
                log.warning("sink %s: ignoring config %s: cdc needs %s=%s", self.name, name, name, value)
        conf.update(_REQUIRED)
        conf["bootstrap.servers"] = self.bootstrap_servers
        conf["message.timeout.ms"] = int(self.delivery_timeout * 1000)
        conf["error_cb"] = self._on_error
        # Only failures call back into Python (see the module docstring).
        conf["delivery.report.only.error"] = True
        conf["on_delivery"] = self._on_delivery
        conf["logger"] = LibraryLog("cdc.sink.kafka.librdkafka")
        # Broker states, read only while the broker is down, to notice it is back.
        conf["statistics.interval.ms"] = 1000
        conf["stats_cb"] = self._on_stats
        return conf

    def open(self) -> None:
        kafka = _import_kafka()
        try:
            self._producer = kafka.Producer(self.producer_config())
            self._epoch += 1
            self._produced = self._drained = 0
            self._failures = []
        except kafka.KafkaException as exc:  # a bad setting: says which, never the value
            raise PermanentSinkError(f"invalid producer config: {exc.args[0].str()}", sink=self.name) from None
        log.info("sink %s: producing to %s (settings: %s)", self.name, self.bootstrap_servers,
                 ", ".join(sorted(self.extra)) or "defaults")
        if self._poller is None:
            self._stop_polling.clear()
            self._poller = threading.Thread(target=self._poll_while_idle, name=f"kafka poll {self.name}",
                                            daemon=True)
            self._poller.start()

    def close(self) -> None:
        self._stop_polling.set()
        if self._poller is not None:
            self._poller.join(5)
            self._poller = None
        if self._producer is not None:
            self._producer.flush(min(self.delivery_timeout, 10.0))
            self._producer = None

    def not_ready(self) -> str | None:
        """Why the sink is not ready (the producer has no broker connection), or None.
        Read by ``/readyz``; follows librdkafka's connection state, not the last write."""
        return self.state.not_ready()

    def _poll_while_idle(self) -> None:
        """Serve librdkafka's error and statistics callbacks between batches (``write``
        serves them itself while it waits for delivery reports)."""
        while not self._stop_polling.wait(0.5):
            if self._lock.acquire(blocking=False):
                try:
                    if self._producer is not None:
                        self._producer.poll(0)
                finally:
                    self._lock.release()

    def _on_error(self, err: Any) -> None:
        # Connection trouble is reported here and retried by librdkafka itself.
        name = err.name()
        if name == "_ALL_BROKERS_DOWN" or err.fatal() or name in ("_AUTHENTICATION", "SASL_AUTHENTICATION_FAILED"):
            self.state.down(err.str())
        else:
            log.debug("sink %s: %s", self.name, err.str())

    def _on_stats(self, stats: str) -> None:
        if self.state.down_since is None:  # only parsed while down
            return
        brokers = orjson.loads(stats).get("brokers", {})
        if any(b.get("state") == "UP" for b in brokers.values()):
            self.state.up()

    # ---- writing ---------------------------------------------------------------

    def topic_of(self, event: ChangeEvent) -> str:
        """The event's topic; ``UnsafeValue`` when its values make an illegal one."""
        if self.routed and event.destination:
            topic = event.destination
            if topic not in self._routed_ok:
                check_topic(topic)
                if len(self._routed_ok) < 10_000:
                    self._routed_ok.add(topic)
            return topic
        return self.template.render(event)

    def _topics(self, events: Sequence[ChangeEvent]) -> list[str]:
        topic_of = self.topic_of
        try:
            return [topic_of(e) for e in events]
        except UnsafeValue as exc:
            bad = next(e for e in events if not self._legal(e))
            raise PermanentSinkError(f"event {bad.id}: topic: {exc}", sink=self.name, events=[bad]) from None

    def _legal(self, event: ChangeEvent) -> bool:
        try:
            self.topic_of(event)
            return True
        except UnsafeValue:
            return False

    def write(self, events: Sequence[ChangeEvent]) -> None:
        handle = self.send(events)
        while not self.wait(handle, 1.0):
            pass

    def send(self, events: Sequence[ChangeEvent]) -> _Batch:
        """Produce ``events`` without waiting for the broker (``Pipelined``)."""
        with self._lock:
            return self._send(events)

    def wait(self, handle: object, timeout: float) -> bool:
        """True once the producer's queue was empty after the batch ``handle`` (every one
        of its messages accepted); raises for a failure reported meanwhile, or after
        ``delivery_timeout`` + 30 s without an outcome.  Waits up to ``DRAIN_WAIT`` even
        when ``timeout`` is shorter (see the module docstring)."""
        assert isinstance(handle, _Batch)
        with self._lock:
            if handle.epoch != self._epoch or self._producer is None:
                raise TransientSinkError("the producer was recreated with messages in flight", sink=self.name)
            producer = self._producer
            if handle.end > self._drained and not self._failures:
                # flush: sends at once (linger.ms aside), serves failure reports and returns
                # as soon as the queue is empty
                if producer.flush(max(timeout, DRAIN_WAIT)) == 0:
                    self._drained = self._produced
            if self._failures:
                failures, self._failures = self._failures, []
                self._raise(failures)
            if handle.end > self._drained:
                if time.monotonic() > handle.deadline:
                    producer.purge()
                    producer.flush(5.0)
                    raise TransientSinkError(f"{len(producer)} messages without a delivery report",
                                             sink=self.name)
                return False
        self.state.up()  # delivered: a broker is there, whatever the statistics said last
        return True

    def _send(self, events: Sequence[ChangeEvent]) -> _Batch:
        topics = self._topics(events)  # all checked before anything is produced
        if self._producer is None:
            self.open()
        if self._failures:  # reported while nothing waited: fail now, before producing more
            failures, self._failures = self._failures, []
            self._raise(failures)
        content = self.content
        tombstones, produce, dumps, sort_keys = self.tombstones, self._produce, orjson.dumps, orjson.OPT_SORT_KEYS
        for topic, event in zip(topics, events):
            message = event.message
            if content == "payload" or (message is not None and content == "auto" and "outbox_id" in message):
                headers = [("id", event.id.encode()),
                           ("message_type", str((message or {}).get("type", "")).encode())]
                produce(topic, dumps(payload_of(event)), message_key(event), headers)
                continue
            if event.op == "u" and event.before is not None:
                split = split_key_change(event)
                if split is not None:  # the key changed: delete the old key, create the new
                    self._change(topic, split[0])
                    event = split[1]
            key = dumps(event.key, option=sort_keys) if event.key is not None else None
            produce(topic, event.to_json(), key, [("id", event.id.encode()), ("op", event.op.encode())])
            if tombstones and event.op == "d" and key is not None:
                produce(topic, None, key, [("id", f"{event.id}:tombstone".encode()), ("op", b"d")])
        return _Batch(self._produced, time.monotonic() + self.delivery_timeout + 30.0, self._epoch)

    def _change(self, topic: str, event: ChangeEvent) -> None:
        key = orjson.dumps(event.key, option=orjson.OPT_SORT_KEYS) if event.key is not None else None
        headers = [("id", event.id.encode()), ("op", event.op.encode())]
        self._produce(topic, event.to_json(), key, headers)
        if self.tombstones and event.op == "d" and key is not None:
            tombstone = [("id", f"{event.id}:tombstone".encode()), ("op", b"d")]
            self._produce(topic, None, key, tombstone)

    def _produce(self, topic: str, value: bytes | None, key: bytes | None, headers: list) -> None:
        producer = self._producer
        while True:
            try:
                producer.produce(topic, value, key, headers=headers)
                self._produced += 1
                return
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.1)
            except _import_kafka().KafkaException as exc:
                self._raise([exc.args[0]])

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._failures.append(err)

    def _raise(self, failures: list[Any]) -> None:
        fatal = [e for e in failures if e.fatal()]
        if fatal:  # the producer instance is unusable; the next write builds a new one
            log.warning("sink %s: producer failed fatally (%s); recreating it", self.name, fatal[0].str())
            self._producer = None
        permanent = [e for e in failures if e.name() in _PERMANENT]
        first = failures[0]
        message = f"{len(failures)} message(s) not delivered: {first.name()}: {first.str()}"
        if len(permanent) == len(failures):
            raise PermanentSinkError(message, sink=self.name)
        raise TransientSinkError(message, sink=self.name)
