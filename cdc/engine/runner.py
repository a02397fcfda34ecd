"""``SourceRunner``: one source database, every pipeline declared on it.

The main thread owns the source connection: it polls changes, runs the transforms,
hands each sink its part of the batch, and saves the checkpoint when the tracker
says all sinks acknowledged up to a commit.  Only then is the position confirmed to
the database.  A lost source connection is resumed from that checkpoint.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..abc import CountsBytes, Interruptible, Snapshottable, StartsOver
from ..checkpoints import build_store
from ..config.model import Config, PipelineSpec
from ..deadletter.record import TRANSFORMS_SINK
from ..errors import CdcError, CheckpointError, PositionLostError, SetUpInterrupted, SourceConnectionError, TransformError
from ..event import ChangeEvent, Commit
from ..faults import crash_point
from ..snapshot import SnapshotController
from ..transforms.chain import TransformChain, TransformMutatedInput
from .deadletters import DeadLetterWriter
from .retry import Backoff
from .tracker import AckTracker
from .watch import BusyGuard, batch_ts_ms, blocking_sinks, lag_seconds
from .worker import SinkWorker

__all__ = ["SourceRunner"]

log = logging.getLogger("cdc.runner")
CHECKPOINT_FAILURE_TIMEOUT = 300.0  # seconds of failing checkpoint saves before the source stops
STALL_LOG_AFTER = 1.0  # seconds of waiting for the sinks before it is logged (brief waits are the flow)


@dataclass
class _Pipeline:
    spec: PipelineSpec
    tables: frozenset[str] | None
    chain: TransformChain
    workers: list[SinkWorker]
    counts: dict = field(default_factory=lambda: {"received": 0, "emitted": 0, "dropped": 0})
    dead_letters: DeadLetterWriter | None = None


class SourceRunner:
    """Run with ``run()``; ``request_stop()`` (e.g. from a signal) drains and stops."""

    def __init__(self, config: Config, source: str, *, grace_period: float = 30.0,
                 poll_timeout: float = 0.2) -> None:
        self.config = config
        self.spec = config.sources[source]
        self.name = source
        self.grace_period = grace_period
        self.poll_timeout = poll_timeout
        self.source = self.spec.build()
        self.store = build_store(self.spec)  # told the database: refuses another database's position
        self.tracker = AckTracker()
        self.pipelines: list[_Pipeline] = []
        self.workers: list[SinkWorker] = []
        for p in config.pipelines_of(source):
            chain = TransformChain(p.name, [(f"transforms[{i}]:{t.type}", t.build())
                                            for i, t in enumerate(p.transforms)])
            workers = [SinkWorker(s, s.build(), self.tracker, self._sink_failed,
                                  DeadLetterWriter(s.dead_letter.build(), p.name) if s.dead_letter else None)
                       for s in p.sinks]
            self.workers.extend(workers)
            dead = DeadLetterWriter(p.dead_letter.build(), p.name) if p.dead_letter else None
            self.pipelines.append(_Pipeline(p, frozenset(p.tables) if p.tables else None, chain, workers, dead_letters=dead))
        self.counts = {"received": 0, "emitted": 0, "dropped": 0, "transactions": 0,
                       "transform_skipped": 0, "transform_dead_lettered": 0}
        self.error: BaseException | None = None
        self.saved_position: dict | None = None
        self.saved_at: float | None = None
        self._stop = threading.Event()
        self._last_save = 0.0
        self._bytes_seen = 0
        self._counts_bytes = isinstance(self.source, CountsBytes)
        self.last_tick = time.monotonic()   # liveness: the main loop turned
        # read by cdc.observe (metrics, /readyz, the status file); updated per batch
        self.source_connected = False
        self.source_error: str | None = None
        self.read_ts_ms = 0                     # commit time of the newest transaction read
        self.caught_up = False                  # the last poll returned nothing
        self.caught_up_at: float | None = None  # when a poll last returned nothing (time.time())
        self.stalled_since: float | None = None  # waiting for room (max_in_flight_*) since
        self._stall_logged = False              # this wait was logged
        self.doing = "starting"                 # what the main loop does now (for the slow-step hint)
        self.on_tick: list[Callable[[SourceRunner], None]] = []
        self._in_tx = False                     # the last item read was not a Commit
        self._chunks_seen = 0                   # snapshot chunks handed on so far (crash point)
        self._finish_by: float | None = None
        self._sink_halted = False
        self._checkpoint_failing_since: float | None = None
        self._checkpoint_error: CheckpointError | None = None
        # copying existing rows (docs/snapshots.md); None for a source that cannot
        self.snapshots = (SnapshotController(source, self.source, self.source.snapshot, self.spec.tables,
                                             self.source.snapshot_chunk_size, config.state_dir,
                                             self.source.snapshot_parallelism, self.spec.max_in_flight_bytes)
                          if isinstance(self.source, Snapshottable) else None)

    @property
    def lag_seconds(self) -> float | None:
        """Seconds behind the source: see ``watch.lag_seconds``."""
        return lag_seconds(self)

    @property
    def blocked_by(self) -> list[str]:
        """The sinks the source waits for while ``max_in_flight_*`` is reached."""
        return blocking_sinks(self)

    # ---- control --------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()
        if not self.source_connected and isinstance(self.source, Interruptible):
            self.source.interrupt()  # a set-up that waits (for other sessions) ends now

    def _sink_failed(self, sink: str, exc: BaseException) -> None:
        log.error("sink %s halted: %s (cdc stops; nothing is lost: the checkpoint stays before the events it has "
                  "not acknowledged, and they are delivered again when cdc starts)", sink, exc)
        self._sink_halted = True
        if self.error is None:
            self.error = exc if isinstance(exc, CdcError) else CdcError(f"sink {sink}: {exc}")
        self._stop.set()

    # ---- the loop ---------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; 0 after a clean stop, 1 after an error."""
        position = self.store.load()
        self.saved_position = position
        if self.snapshots is not None:
            self.snapshots.plan(position)
        log.info("source %s: starting from %s", self.name, position or "the current position")
        for w in self.workers:
            w.start()
        guard = BusyGuard(self)
        guard.start()
        try:
            # The first connection must succeed: a wrong host or password should fail
            # fast (the supervisor or systemd restarts with backoff).  Once running, a
            # lost connection is retried for as long as it takes.
            try:
                self.source.open(position)
            except PositionLostError as exc:
                self._start_over(exc, position)
                self.source.open(None)
            except SetUpInterrupted as exc:
                log.info("%s", exc)
                return 0
            self.source_connected = True
            self._loop()
        except TransformError as exc:
            self.error = exc
            log.error("%s", exc)
        finally:
            self._shutdown()
            guard.stop()
        return 1 if self.error else 0

    def _loop(self) -> None:
        spec, tracker, source = self.spec, self.tracker, self.source
        backoff = Backoff(1.0, 30.0)
        while not self._stop.is_set() or self._finishing_tx():
            try:
                if (tracker.events_in_flight >= spec.max_in_flight_events
                        or tracker.bytes_in_flight >= spec.max_in_flight_bytes):
                    self._wait_for_room()
                    continue
                self.stalled_since = None
                self.doing = "reading from the source"
                items = source.poll(0.0 if self.snapshots is not None and self.snapshots.ready
                                    else self.poll_timeout)
            except SourceConnectionError as exc:
                delay = backoff.next()
                log.warning("source %s: %s; resuming from the checkpoint in %.0fs", self.name, exc, delay)
                self.source_connected, self.source_error = False, str(exc)
                self._reconnect(delay)
                continue
            except PositionLostError as exc:  # e.g. a binlog purged while the source reconnected
                if not self._starts_over:
                    raise
                position = self.tracker.position or self.saved_position
                self.source_connected, self.source_error = False, str(exc)
                self._drain(float("inf"), until_stop=True)  # what was read before the loss is good
                self._checkpoint(force=True)
                try:
                    self.source.close()
                except Exception:
                    pass
                if self._stop.is_set():
                    break
                self._start_over(exc, position)
                if not self._open(None, 1.0):
                    break
                continue
            backoff.reset()
            self.caught_up = not items
            if items:
                self._dispatch(items)
            else:
                self.caught_up_at = time.time()
            self._checkpoint()
            if self.snapshots is not None:
                self._snapshot_tick()
            self._tick()

    def _tick(self) -> None:
        """Liveness and the observers (status file): after every poll and during every wait."""
        self.last_tick = time.monotonic()
        for tick in self.on_tick:
            tick(self)

    def _wait_for_room(self) -> None:
        """Back-pressure: ``max_in_flight_*`` is reached, so wait for the sinks while
        keeping the source connection alive.  A lost connection raises
        ``SourceConnectionError``, resumed from the checkpoint like one lost in a poll."""
        if self.stalled_since is None:
            self.stalled_since, self._stall_logged = time.time(), False
        elif not self._stall_logged and time.time() - self.stalled_since >= STALL_LOG_AFTER:
            self._stall_logged = True
            log.info("source %s: %d events in flight: reading waits for sink(s) %s", self.name,
                     self.tracker.events_in_flight, ", ".join(self.blocked_by) or "?")
        self.doing = "waiting for the sinks"
        self._tick()
        self.source.keepalive()
        # a snapshot reads its next chunk while the sinks work; otherwise wait
        if not (self.snapshots is not None and self.snapshots.ready and self._snapshot_tick()):
            self.tracker.wait(0.2)
        self._checkpoint()

    def _snapshot_tick(self) -> bool:
        """Read the next snapshot chunk when the sinks have room (docs/snapshots.md);
        True when a chunk was read or placed."""
        snapshots = self.snapshots
        read = snapshots.chunks_read
        # the next chunk is read while the sinks still work on the last one
        room = (self.tracker.events_in_flight < self.spec.max_in_flight_events + snapshots.chunk_size
                and self.tracker.bytes_in_flight < self.spec.max_in_flight_bytes
                and not self._stop.is_set())
        items = snapshots.tick(room, self._in_tx)
        if items:
            self._dispatch(items)
        if snapshots.finished and snapshots.mode == "initial_only" and not self._stop.is_set():
            log.info("source %s: the initial snapshot is done (snapshot: initial_only): stopping", self.name)
            self._stop.set()
        return bool(items) or snapshots.chunks_read != read

    def _finishing_tx(self) -> bool:
        """After a stop request, read on to the end of a half-read transaction (for at
        most half the grace period), so that the sinks hold whole transactions, the
        final checkpoint is their last commit, and a restart repeats nothing."""
        if not self._in_tx or self.error is not None or not self.source_connected:
            return False
        if self._finish_by is None:
            self._finish_by = time.monotonic() + self.grace_period / 2
            log.info("source %s: reading to the end of the current transaction", self.name)
        return time.monotonic() < self._finish_by

    def _dispatch(self, items: list) -> None:
        events: list[ChangeEvent] = []
        position = None
        commit_ts = 0
        if self.snapshots is not None:
            items = self.snapshots.process(items)
        self._in_tx = items[-1].__class__ is not Commit
        for item in items:
            if item.__class__ is Commit:
                position = item.position
                commit_ts = item.ts_ms or commit_ts
                self.counts["transactions"] += 1
            else:
                events.append(item)
        if position is not None and self.snapshots is not None:
            position = self.snapshots.annotate(position)
        deliveries: list[tuple[SinkWorker, list[ChangeEvent]]] = []
        emitted = 0
        for p in self.pipelines:
            mine = events if p.tables is None else [e for e in events if e.table in p.tables]
            got = len(mine)
            if mine and p.chain:
                mine = self._transform(p, mine)  # may raise TransformError: nothing is submitted
            p.counts["received"] += got
            p.counts["emitted"] += len(mine)
            p.counts["dropped"] += max(got - len(mine), 0)
            if mine:
                emitted += len(mine)
                deliveries.extend((w, mine) for w in p.workers)
        seen = self.source.bytes_read if self._counts_bytes else 0
        if self.snapshots is not None:
            seen += self.snapshots.bytes_emitted
        nbytes, self._bytes_seen = seen - self._bytes_seen, seen
        seq = self.tracker.add(len(deliveries), position, len(events), nbytes, batch_ts_ms(items))
        for worker, mine in deliveries:
            worker.submit(seq, mine)
        self.counts["received"] += len(events)
        self.counts["emitted"] += emitted
        if commit_ts:
            self.read_ts_ms = commit_ts
        if crash_point is not None and self._in_tx: crash_point("mid_transaction")  # noqa: E701 - crash point (cdc/faults.py)
        if crash_point is not None and self.snapshots is not None and self.snapshots.chunks_emitted != self._chunks_seen:
            self._chunks_seen = self.snapshots.chunks_emitted
            crash_point("snapshot_chunk")  # a chunk's rows were handed on, its progress not yet saved

    def _transform(self, p: _Pipeline, events: list[ChangeEvent]) -> list[ChangeEvent]:
        """Run the chain; on an error, the pipeline's ``on_error`` decides per event
        (``stop`` re-raises; ``skip`` and ``dead_letter`` go on without the event)."""
        self.doing = f"the transforms of pipeline {p.spec.name}"
        try:
            return p.chain.apply(events)
        except TransformError as exc:
            if p.spec.on_error == "stop" or isinstance(exc, TransformMutatedInput):
                raise
        out: list[ChangeEvent] = []
        for event in events:  # again one by one, to find the events that fail
            try:
                out.extend(p.chain.apply([event]))
            except TransformError as exc:
                if p.spec.on_error == "dead_letter" and p.dead_letters is not None:
                    p.dead_letters.park(event, TRANSFORMS_SINK, exc, 1, None)
                    self.counts["transform_dead_lettered"] += 1
                else:
                    log.error("skipped event: %s", exc)
                    self.counts["transform_skipped"] += 1
        return out

    def _checkpoint(self, force: bool = False) -> None:
        position = self.tracker.position
        if position is None or position == self.saved_position:
            return
        now = time.monotonic()
        if not force and now - self._last_save < self.spec.checkpoint_interval:
            return
        if crash_point is not None: crash_point("after_ack")  # noqa: E701 - crash point (cdc/faults.py)
        self.doing = "saving the checkpoint"
        try:
            self.store.save(position)
        except CheckpointError as exc:
            self._checkpoint_failed(exc, now)
            return
        self._checkpoint_failing_since = None
        self.saved_position, self.saved_at, self._last_save = position, time.time(), now
        try:
            self.source.confirm(position)
        except SourceConnectionError as exc:
            log.warning("source %s: could not confirm %s: %s", self.name, position, exc)

    def _checkpoint_failed(self, exc: CheckpointError, now: float) -> None:
        """Keep the old position and try again next time; give up after
        ``CHECKPOINT_FAILURE_TIMEOUT`` seconds of failures."""
        self._last_save, self._checkpoint_error = now, exc  # retry after checkpoint_interval, not on every turn
        if self._checkpoint_failing_since is None:
            self._checkpoint_failing_since = now
            log.warning("source %s: %s; retrying", self.name, exc)
        elif now - self._checkpoint_failing_since > CHECKPOINT_FAILURE_TIMEOUT:
            log.error("source %s: checkpoints failing for %.0fs: %s", self.name,
                      now - self._checkpoint_failing_since, exc)
            if self.error is None:
                self.error = exc
            self._stop.set()

    def _unsaved_at_stop(self) -> None:
        """Stopping while the checkpoint cannot be saved is an error that gives the position to save:
        a start resumes from the old one (with no checkpoint, a MySQL source from the end of the log)."""
        reached = self.tracker.position
        if self._checkpoint_failing_since is None or reached is None or reached == self.saved_position:
            return
        resumes = (f"resumes from {self.saved_position}" if self.saved_position is not None else
                   "has no checkpoint: it starts as a first run (a MySQL source at the end of the binlog, "
                   "skipping every change since)")
        exc = CheckpointError(
            f"source {self.name}: stopped without saving its position ({self._checkpoint_error}). A start now "
            f"{resumes}. Once the checkpoint can be written, save the position reached, then start: "
            f"cdc checkpoint set CONFIG --source {self.name} --position '{json.dumps(reached)}'")
        log.error("%s", exc)
        if self.error is None:
            self.error = exc

    def _drain(self, timeout: float, until_stop: bool = False) -> bool:
        """Wait for the sinks to acknowledge what they hold (not past a halted sink,
        nor, with ``until_stop``, past a stop request)."""
        deadline = time.monotonic() + timeout
        while (not self.tracker.drained and not self._sink_halted and time.monotonic() < deadline
               and not (until_stop and self._stop.is_set())):
            try:
                self.source.keepalive()
            except SourceConnectionError:
                pass
            self._tick()
            self.tracker.wait(0.2)
            self._checkpoint()
        return self.tracker.drained

    def _reconnect(self, delay: float) -> None:
        """Wait for the sinks to finish what they hold, then reopen at the checkpoint,
        so that nothing is read twice or skipped."""
        self._drain(float("inf"), until_stop=True)
        self._checkpoint(force=True)
        if self.snapshots is not None:
            self.snapshots.discard_window()
        try:
            self.source.close()
        except Exception:
            pass
        if not self._sleep(delay):
            self._open(self.tracker.position or self.saved_position, delay)

    def _open(self, position: dict | None, first_delay: float) -> bool:
        """Reopen the source, retrying while the database is unreachable; False if a
        stop was requested first.  A setup problem (``SourceSetupError``) is raised;
        a lost position starts over with ``snapshot: when_needed``."""
        backoff = Backoff(first_delay, max(first_delay, 30.0))
        while True:
            try:
                try:
                    self.source.open(position)
                except PositionLostError as exc:
                    self._start_over(exc, position)
                    position = None  # from now on, retries open as a first run
                    self.source.open(None)
                self.source_connected, self.source_error = True, None
                return True
            except SetUpInterrupted as exc:  # a stop asked for while it waited
                log.info("%s", exc)
                return False
            except SourceConnectionError as exc:
                self.source_connected, self.source_error = False, str(exc)
                delay = backoff.next()
                log.warning("source %s: unavailable, retrying in %.0fs: %s", self.name, delay, exc)
                if self._sleep(delay):
                    return False

    @property
    def _starts_over(self) -> bool:
        """A lost position starts over with a full re-snapshot (``snapshot: when_needed``)."""
        return (self.snapshots is not None and self.snapshots.mode == "when_needed"
                and isinstance(self.source, StartsOver))

    def _start_over(self, lost: PositionLostError, position: dict | None) -> None:
        """``snapshot: when_needed`` and the server no longer holds the log at ``position``:
        say what was lost, forget the copy's progress and plan a copy of every table; the
        caller then opens the source with no position.  Any other mode raises ``lost``."""
        source, snapshots = self.source, self.snapshots
        if not self._starts_over or snapshots is None or not isinstance(source, StartsOver):
            raise lost
        saved = {k: v for k, v in (position or {}).items() if k != "snapshot"} or "the position read last"
        log.warning("source %s: cannot resume from %s: %s. The changes after it that were not delivered are "
                    "lost to cdc. snapshot: when_needed: starting over from the current end of the log, with a "
                    "full re-snapshot of every table in tables: (%s); rows deleted in the gap are not seen "
                    "(docs/snapshots.md)", self.name, saved, lost.reason, ", ".join(snapshots.tables))
        snapshots.close()
        snapshots.plan(None)
        source.start_over()

    def _sleep(self, seconds: float) -> bool:
        """Wait, ticking every second; True if a stop was requested meanwhile."""
        self.doing = "waiting to reconnect to the source"
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self._tick()
            if self._stop.wait(min(left, 1.0)):
                return True
        return self._stop.is_set()

    def _shutdown(self) -> None:
        drained = self._drain(self.grace_period)
        if not drained:
            log.warning("source %s: stopping with %d events unacknowledged; they will be read again",
                        self.name, self.tracker.events_in_flight)
        for w in self.workers:
            w.stop(timeout=5.0, abort=not drained)
        self._checkpoint(force=True)
        self._unsaved_at_stop()
        self.source_connected = False
        closers = [self.source.close, self.store.close]
        if self.snapshots is not None:
            closers.append(self.snapshots.close)
        closers += [p.dead_letters.close for p in self.pipelines if p.dead_letters is not None]
        for closer in closers:
            try:
                closer()
            except Exception as exc:
                log.warning("source %s: error while closing: %s", self.name, exc)
        if self.saved_position is None:
            log.info("source %s: stopped before any position was saved", self.name)
        else:
            log.info("source %s: stopped at %s", self.name, self.saved_position)
