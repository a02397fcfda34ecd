"""``DeadLetterWriter``: the engine parks events in a dead-letter sink (see ``cdc.deadletter``)."""

from __future__ import annotations

import logging
import time
from typing import Any

from ..deadletter.record import dead_letter_event
from ..errors import PermanentError
from ..event import ChangeEvent
from .retry import Backoff

__all__ = ["DeadLetterWriter"]

log = logging.getLogger("cdc.deadletter")


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
        backoff = Backoff(0.2, 5.0)
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
                time.sleep(backoff.next())
        assert record.message is not None  # dead_letter_event always sets message.dead_letter
        log.error("sink %s: parked event %s (table %s, position %s) as dead letter %s: %s",
                  sink_name, event.id, event.table, event.position_text(),
                  record.message["dead_letter"]["id"], error)

    def close(self) -> None:
        if self._open:
            self._open = False
            self.sink.close()
