"""Runs one sink on its own thread: batches in order, the error policy, acknowledgements.

What happens when events cannot be delivered (``on_error``):

- transient errors (``TransientError``, ``OSError``) are retried with exponential
  backoff and jitter, ``retry.max_attempts`` times (0: for ever), honouring a
  server's ``retry_after``;
- then, or at once for a permanent error, the batch is retried one event at a time
  to find the events that fail, and for each of those: ``retry`` and ``stop`` halt
  the source (the checkpoint stays before the event), ``skip`` logs and counts it,
  ``dead_letter`` parks it in the dead-letter sink with everything needed to replay.

A ``Pipelined`` sink (``cdc.abc``) gets up to ``max_batches_in_flight`` batches sent
before the oldest is confirmed; acknowledgements still go to the tracker in the order
the batches were sent.  When one fails, nothing new is sent: that batch and every
later one in flight are delivered again in order with ``write`` under the policy
above, so per-key order holds across the retry (at the price of duplicates).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..abc import KeepsAlive, Pipelined
from ..config.model import SinkSpec
from ..errors import PermanentError, SinkError, TransientError
from ..event import ChangeEvent
from ..faults import crash_point
from .retry import Backoff
from .tracker import AckTracker

if TYPE_CHECKING:
    from ..abc import Sink
    from .deadletters import DeadLetterWriter

__all__ = ["SinkWorker", "SinkHalted", "SinkAborted"]

log = logging.getLogger("cdc.sink")
KEEPALIVE_EVERY = 2.0  # seconds: an idle KeepsAlive sink is kept alive this often
SLOW_BATCH = 10.0  # seconds: a batch slower than this is logged, with a hint


class SinkHalted(Exception):
    """The worker stopped because its error policy said so."""

    # set by SinkWorker._attempt before raising
    attempts: int
    first_failure: float | None


class SinkAborted(Exception):
    """Shutdown gave up on the batch: nothing is acknowledged, skipped or parked, so
    the events are read again after the restart."""


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, PermanentError):
        return False
    return isinstance(exc, (TransientError, OSError, TimeoutError, ConnectionError))


class SinkWorker:
    def __init__(self, spec: SinkSpec, sink: Sink, tracker: AckTracker,
                 on_fatal: Callable[[str, BaseException], None],
                 dead_letters: DeadLetterWriter | None = None) -> None:
        self.spec = spec
        self.name = spec.context.name
        self.sink: Sink = sink
        self.tracker = tracker
        self.on_fatal = on_fatal
        self.dead_letters: DeadLetterWriter | None = dead_letters
        self.connected = False
        self.last_error: str | None = None
        self.counts = {"written": 0, "batches": 0, "failed": 0, "skipped": 0, "dead_lettered": 0}
        self.on_batch: Callable[[int, float], None] | None = None  # (events, seconds): metrics
        self.holding: int | None = None  # the oldest batch number taken and not yet acknowledged
        self.last_attempt_started = 0.0  # monotonic: when the latest write attempt began
        self._queue: deque[tuple[int, list[ChangeEvent]]] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._abort = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sink {self.name}", daemon=True)

    # ---- called by the runner ---------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, seq: int, events: list[ChangeEvent]) -> None:
        with self._cond:
            self._queue.append((seq, events))
            self._cond.notify()

    def stop(self, timeout: float, abort: bool = False) -> None:
        """Finish what is queued (or, with ``abort``, give up now) and close the sink."""
        with self._cond:
            self._closing = True
            if abort:
                self._abort.set()
            self._cond.notify()
        self._thread.join(timeout)

    def oldest_seq(self) -> int | None:
        """The oldest batch this sink holds without having acknowledged it (being
        delivered or queued), or None."""
        held = self.holding
        if held is not None:
            return held
        try:
            return self._queue[0][0]
        except IndexError:
            return None

    # ---- the sink's thread ------------------------------------------------------

    def _run(self) -> None:
        try:
            self._attempt(self.sink.open, "connect")
            self.connected = True
            if isinstance(self.sink, Pipelined) and self.spec.max_batches_in_flight > 1:
                self._run_pipelined(self.sink)
            else:
                self._run_serial()
        except SinkAborted:
            log.warning("sink %s: stopped with a batch undelivered; it will be read again", self.name)
        except SinkHalted as exc:
            self.on_fatal(self.name, exc.__cause__ or exc)
        except Exception as exc:  # a bug in a sink must stop the source, not vanish
            self.on_fatal(self.name, exc)
        finally:
            self.connected = False
            closers = [self.sink.close] + ([self.dead_letters.close] if self.dead_letters else [])
            for close in closers:
                try:
                    close()
                except Exception as exc:
                    log.warning("sink %s: error while closing: %s", self.name, exc)

    def _run_serial(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            seqs, events = taken
            size = self.spec.batch_size
            for start in range(0, len(events), size):
                self._deliver(events[start:start + size])
            if crash_point is not None: crash_point("after_sink_write")  # noqa: E701 - crash point (cdc/faults.py)
            for seq in seqs:
                self.tracker.ack(seq)
            self.holding = None

    def _run_pipelined(self, sink: Pipelined) -> None:
        """Several batches in flight; the oldest is waited for, acknowledged first."""
        # (handle, the tracker batches done with this one, events, sent at), in send order
        window: deque[tuple[object, list[int], list[ChangeEvent], float]] = deque()
        limit, size = self.spec.max_batches_in_flight, self.spec.batch_size
        while True:
            taken = self._take(block=not window) if len(window) < limit else None
            if taken is not None:
                seqs, events = taken
                chunks = [events[i:i + size] for i in range(0, len(events), size)]
                for k, chunk in enumerate(chunks):
                    done = seqs if k == len(chunks) - 1 else []
                    try:
                        handle = sink.send(chunk)
                    except Exception as exc:
                        # the batches taken are acknowledged with the last chunk
                        rest = [(seqs if j == len(chunks) - 1 else [], c)
                                for j, c in enumerate(chunks[k:], start=k)]
                        self._redeliver(window, rest, exc)
                        window.clear()
                        break
                    window.append((handle, done, chunk, time.monotonic()))
                continue
            if not window:
                if self._abort.is_set() or self._closing:
                    return
                continue
            if self._abort.is_set():
                raise SinkAborted(f"{len(window)} batches in flight")
            handle, seqs, events, sent = window[0]
            try:
                # short waits while there is room, so that new batches are sent at once
                confirmed = sink.wait(handle, 0.2 if len(window) >= limit else 0.002)
            except Exception as exc:
                self._redeliver(window, [], exc)
                window.clear()
                continue
            if confirmed:
                window.popleft()
                self._delivered(len(events), 0, sent)
                if seqs and crash_point is not None: crash_point("after_sink_write")  # noqa: E701 - (cdc/faults.py)
                for seq in seqs:
                    self.tracker.ack(seq)
                self.holding = next((s[0] for _, s, _, _ in window if s), None)

    def _redeliver(self, window: deque[tuple[object, list[int], list[ChangeEvent], float]],
                   unsent: list[tuple[list[int], list[ChangeEvent]]], exc: Exception) -> None:
        """A batch failed: deliver it and everything after it again, in order, one at a time."""
        self.counts["failed"] += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        log.warning("sink %s: a batch failed; delivering it and the batches sent after it again, in order"
                    " (%d batch(es)): %s", self.name, len(window) + len(unsent), self.last_error)
        for seqs, events in [(seqs, events) for _, seqs, events, _ in window] + unsent:
            self._deliver(events)
            for seq in seqs:
                self.tracker.ack(seq)
        self.holding = None

    def _take(self, block: bool = True) -> tuple[list[int], list[ChangeEvent]] | None:
        with self._cond:
            while not self._queue:
                if self._closing or not block:
                    return None
                if not self._cond.wait(KEEPALIVE_EVERY) and isinstance(self.sink, KeepsAlive):
                    self._cond.release()  # the runner may queue a batch meanwhile
                    try:
                        self.sink.keepalive()
                    except Exception as exc:  # the next write retries and reports it
                        log.debug("sink %s: keepalive failed: %s", self.name, exc)
                    finally:
                        self._cond.acquire()
            if self._abort.is_set():
                return None
            seqs: list[int] = []
            events: list[ChangeEvent] = []
            while self._queue and (not events or len(events) < self.spec.batch_size):
                seq, batch = self._queue.popleft()
                seqs.append(seq)
                events.extend(batch)
            if self.holding is None:  # the oldest taken and not yet acknowledged
                self.holding = seqs[0]
            return seqs, events

    def _deliver(self, events: list[ChangeEvent]) -> None:
        started = time.monotonic()
        try:
            self._attempt(lambda: self.sink.write(events), f"write {len(events)} events")
        except SinkHalted as halted:
            if self.spec.on_error not in ("skip", "dead_letter"):
                raise
            parked = self._park(events[0], halted) if len(events) == 1 else self._one_by_one(events)
        else:
            parked = 0
        self._delivered(len(events), parked, started)

    def _delivered(self, events: int, parked: int, started: float) -> None:
        self.counts["written"] += events - parked
        self.counts["batches"] += 1
        self.latency = time.monotonic() - started
        # slow: the attempt that succeeded, not the retries of an outage (logged already)
        if time.monotonic() - max(started, self.last_attempt_started) >= SLOW_BATCH:
            log.warning("sink %s: a batch of %d events took %.0fs to deliver; while a sink is this slow, "
                        "reading waits once max_in_flight_events is reached, for every pipeline of the "
                        "source (see docs/operations.md)", self.name, events, self.latency)
        if self.on_batch is not None:
            self.on_batch(events, self.latency)

    def _one_by_one(self, events: list[ChangeEvent]) -> int:
        """Find the events the destination refuses; the policy decides for each.
        Returns how many were skipped or parked."""
        parked = 0
        for event in events:
            def write_one(e: ChangeEvent = event) -> None:
                self.sink.write([e])
            try:
                self._attempt(write_one, f"write event {event.id}")
            except SinkHalted as halted:
                parked += self._park(event, halted)
        return parked

    def _park(self, event: ChangeEvent, halted: SinkHalted) -> int:
        """Apply ``skip`` or ``dead_letter`` to one event (returns 1), or re-raise to halt."""
        error = halted.__cause__ or halted
        if self.spec.on_error == "skip":
            self.counts["skipped"] += 1
            log.error("sink %s: skipped event %s (table %s, position %s): %s", self.name,
                      event.id, event.table, event.position_text(), error,
                      extra={"event_id": event.id, "table": event.table, "position": event.position_text()})
            return 1
        if self.spec.on_error == "dead_letter" and self.dead_letters is not None:
            self.dead_letters.park(event, self.name, error, halted.attempts, halted.first_failure)
            self.counts["dead_lettered"] += 1
            return 1
        raise halted

    def _attempt(self, action: Callable[[], object], what: str) -> None:
        """Run ``action``, retrying transient errors as ``retry`` allows."""
        retry = self.spec.retry
        backoff = Backoff(retry.initial_backoff, max(retry.initial_backoff, retry.max_backoff))
        attempts = 0
        first_failure = None
        while True:
            try:
                self.last_attempt_started = time.monotonic()
                action()
                if attempts:
                    log.info("sink %s: recovered after %d attempts", self.name, attempts + 1)
                self.last_error = None
                return
            except Exception as exc:
                attempts += 1
                first_failure = first_failure or time.time()
                self.counts["failed"] += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                if self._abort.is_set():
                    raise SinkAborted(what) from exc
                give_up = not is_transient(exc) or (retry.max_attempts and attempts >= retry.max_attempts)
                if give_up:
                    halted = SinkHalted(f"{what} failed after {attempts} attempt(s): {exc}")
                    halted.attempts, halted.first_failure = attempts, first_failure
                    raise halted from exc
                delay = backoff.next()
                if isinstance(exc, SinkError) and exc.retry_after:
                    delay = max(delay, exc.retry_after)
                log.warning("sink %s: %s failed (attempt %d), retrying in %.1fs: %s",
                            self.name, what, attempts, delay, self.last_error)
                if crash_point is not None: crash_point("sink_backoff")  # noqa: E701 - crash point (cdc/faults.py)
                if self._abort.wait(delay):
                    raise SinkAborted(what) from exc
