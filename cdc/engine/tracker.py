"""Which positions every sink has acknowledged.

The reader's stream is cut into numbered batches.  A batch is done when each sink
that got part of it has acknowledged that part.  The acknowledged ``position`` is
the last ``Commit`` of the longest run of done batches from the start, so it never
passes an event that some sink still holds.
"""

from __future__ import annotations

import threading
import time

__all__ = ["AckTracker"]


class AckTracker:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: dict[int, list] = {}   # seq -> [sinks remaining, position, events, bytes, ts_ms]
        self._next = 0
        self._low = 0                          # the oldest batch not yet done
        self.position: dict | None = None      # safe to checkpoint
        self.events_in_flight = 0
        self.bytes_in_flight = 0
        self.acked_events = 0

    def add(self, deliveries: int, position: dict | None, events: int, nbytes: int, ts_ms: int = 0) -> int:
        """Register a batch that was handed to ``deliveries`` sinks; returns its number.
        ``ts_ms`` is the commit time of its first transaction (0: unknown, the time now)."""
        with self._cond:
            seq = self._next
            self._next += 1
            self._pending[seq] = [deliveries, position, events, nbytes, ts_ms or int(time.time() * 1000)]
            self.events_in_flight += events
            self.bytes_in_flight += nbytes
            if deliveries == 0 and seq == self._low:
                self._advance()
            return seq

    def ack(self, seq: int) -> None:
        """One sink has durably delivered its part of batch ``seq``."""
        with self._cond:
            batch = self._pending[seq]
            batch[0] -= 1
            if batch[0] == 0 and seq == self._low:
                self._advance()

    def _advance(self) -> None:
        pending = self._pending
        while self._low in pending and pending[self._low][0] == 0:
            _, position, events, nbytes, _ = pending.pop(self._low)
            self._low += 1
            if position is not None:
                self.position = position
            self.events_in_flight -= events
            self.bytes_in_flight -= nbytes
            self.acked_events += events
        self._cond.notify_all()

    @property
    def oldest_ts_ms(self) -> int | None:
        """The commit time of the oldest batch not yet acknowledged by every sink."""
        with self._cond:
            batch = self._pending.get(self._low)
            return batch[4] if batch is not None else None

    @property
    def oldest_seq(self) -> int | None:
        """The number of the oldest batch not yet acknowledged by every sink."""
        return None if self.drained else self._low

    @property
    def drained(self) -> bool:
        return self._low == self._next

    def wait(self, timeout: float) -> None:
        """Sleep until some batch is done or ``timeout`` passes."""
        with self._cond:
            if not self.drained:
                self._cond.wait(timeout)
