"""Dead letters: events a sink (or a transform) could not process, parked for later.

A dead-letter queue is just another sink (``dead_letter: {type: file, path: ...}``,
``{type: table, dsn: ...}``, ``{type: kafka, ...}``).  A parked event is the
original event whose ``message.dead_letter`` holds what is needed to replay it::

    {"id": "0/1A2B3C8:0", "op": "c", "after": {...}, ...,
     "message": {"dead_letter": {"id": "5f0c1e2d3a4b", "sink": "orders-webhook",
                                 "pipeline": "orders", "destination": null,
                                 "error": {"type": "PermanentSinkError", "message": "...",
                                           "permanent": true},
                                 "attempts": 1, "first_failure": "2026-...Z",
                                 "last_failure": "2026-...Z"}}}

``DeadLetterWriter.park`` writes one such record and returns once the DLQ sink
accepted it (so the checkpoint never passes an event that is neither delivered nor
parked).  ``store_for(component)`` gives the list/remove side used by ``cdc dlq``:
the ``file`` and ``table`` DLQs support it; other sink types (e.g. a Kafka topic)
are write-only from cdc's point of view.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

from .errors import PermanentError
from .event import ChangeEvent

__all__ = ["DeadLetter", "DeadLetterWriter", "DeadLetterStore", "store_for", "UnsupportedStore",
           "dead_letter_event", "TRANSFORMS_SINK"]

log = logging.getLogger("cdc.deadletter")

#: The ``sink`` of a dead letter parked by a pipeline's transforms.
TRANSFORMS_SINK = "transforms"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class DeadLetter:
    """One parked event as read back from a DLQ."""

    id: str
    sink: str
    pipeline: str
    event: ChangeEvent           # the original event, ``destination`` restored
    error: dict
    attempts: int
    first_failure: str
    last_failure: str

    @classmethod
    def from_record(cls, record: dict) -> DeadLetter:
        message = dict(record.get("message") or {})
        info = message.pop("dead_letter")
        event = ChangeEvent.from_dict({**record, "message": message or None})
        event.destination = info.get("destination")
        return cls(info["id"], info["sink"], info.get("pipeline", ""), event, info.get("error", {}),
                   info.get("attempts", 0), info.get("first_failure", ""), info.get("last_failure", ""))


def dead_letter_event(event: ChangeEvent, sink: str, pipeline: str, error: BaseException,
                      attempts: int, first_failure: float | None) -> ChangeEvent:
    """The record written to the DLQ: the event plus ``message.dead_letter``."""
    now = time.time()
    info = {"id": uuid.uuid4().hex[:12], "sink": sink, "pipeline": pipeline,
            "destination": event.destination,
            "error": {"type": type(error).__name__, "message": str(error),
                      "permanent": isinstance(error, PermanentError)},
            "attempts": attempts, "first_failure": _iso(first_failure or now), "last_failure": _iso(now)}
    return event.replace(message={**(event.message or {}), "dead_letter": info}, destination=None)


class DeadLetterWriter:
    """Parks events in a DLQ sink; opened on first use, retried a few times, and
    raising if the DLQ itself keeps failing (the pipeline then halts, losing nothing)."""

    def __init__(self, sink: Any, pipeline: str, attempts: int = 5) -> None:
        self.sink = sink
        self.pipeline = pipeline
        self.attempts = attempts
        self._open = False

    def park(self, event: ChangeEvent, sink_name: str, error: BaseException, attempts: int,
             first_failure: float | None) -> None:
        record = dead_letter_event(event, sink_name, self.pipeline, error, attempts, first_failure)
        for attempt in range(1, self.attempts + 1):
            try:
                if not self._open:
                    self.sink.open()
                    self._open = True
                self.sink.write([record])
                break
            except Exception as exc:
                if attempt == self.attempts or isinstance(exc, PermanentError):
                    raise
                log.warning("dead letter queue: write failed (attempt %d): %s", attempt, exc)
                time.sleep(min(0.2 * 2 ** attempt, 5.0))
        log.error("sink %s: parked event %s (table %s, position %s) as dead letter %s: %s",
                  sink_name, event.id, event.table, event.position_text(),
                  record.message["dead_letter"]["id"], error)

    def close(self) -> None:
        if self._open:
            self._open = False
            self.sink.close()


class DeadLetterStore(Protocol):
    """The read side of a DLQ, for ``cdc dlq list`` and ``replay``."""

    def list(self) -> list[DeadLetter]: ...

    def remove(self, entry_id: str) -> None: ...


class UnsupportedStore(LookupError):
    """The DLQ's sink type cannot be listed by cdc (e.g. a Kafka topic)."""


def store_for(component: Any) -> DeadLetterStore:
    """The store behind a ``dead_letter`` config component."""
    from .sinks.file import FileSink
    from .sinks.table import TableSink
    if component.factory is FileSink:
        from .deadletter_stores import FileDeadLetterStore
        return FileDeadLetterStore(component.build())
    if component.factory is TableSink:
        from .deadletter_stores import TableDeadLetterStore
        return TableDeadLetterStore(component.build())
    raise UnsupportedStore(f"a dead-letter queue of type {component.type!r} cannot be listed by cdc "
                           "(file and table can); read it with the destination's own tools")
