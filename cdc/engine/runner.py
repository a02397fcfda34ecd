"""``SourceRunner``: one source database, every pipeline declared on it.

The main thread owns the source connection: it polls changes, runs the transforms,
hands each sink its part of the batch, and saves the checkpoint when the tracker
says all sinks acknowledged up to a commit.  Only then is the position confirmed to
the database.  A lost source connection is resumed from that checkpoint.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import Config, PipelineSpec
from ..abc import Snapshottable
from ..deadletter import TRANSFORMS_SINK, DeadLetterWriter
from ..errors import CdcError, CheckpointError, SourceConnectionError, TransformError
from ..event import ChangeEvent, Commit
from ..snapshot import SnapshotController
from ..transforms.chain import TransformChain
from .tracker import AckTracker
from .worker import SinkWorker

__all__ = ["SourceRunner"]

log = logging.getLogger("cdc.runner")
SWITCH_INTERVAL = 0.05  # seconds
CHECKPOINT_FAILURE_TIMEOUT = 300.0  # seconds of failing checkpoint saves before the source stops


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
        self.store = self.spec.checkpoint.build()
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
        # read by cdc.observe (metrics, /readyz, the status file); updated per batch
        self.source_connected = False
        self.source_error: str | None = None
        self.lag_seconds: float | None = None   # now - commit time of the newest transaction read
        self.caught_up = False                  # the last poll returned nothing
        self.on_tick: list[Callable[[SourceRunner], None]] = []
        self._in_tx = False                     # the last item read was not a Commit
        self._finish_by: float | None = None
        self._sink_halted = False
        self._checkpoint_failing_since: float | None = None
        # copying existing rows (docs/snapshots.md); None for a source that cannot
        self.snapshots = (SnapshotController(source, self.source, self.source.snapshot, self.spec.tables,
                                             self.source.snapshot_chunk_size, config.state_dir,
                                             self.source.snapshot_parallelism)
                          if isinstance(self.source, Snapshottable) else None)

    # ---- control --------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    def _sink_failed(self, sink: str, exc: BaseException) -> None:
        log.error("sink %s halted: %s", sink, exc)
        self._sink_halted = True
        if self.error is None:
            self.error = exc if isinstance(exc, CdcError) else CdcError(f"sink {sink}: {exc}")
        self._stop.set()

    # ---- the loop ---------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; 0 after a clean stop, 1 after an error."""
        # Events hold no reference cycles; collecting every 700 allocations costs ~15% of
        # the reader's time, so the young generation is allowed to grow (one runner per process).
        gc.freeze()
        gc.set_threshold(max(gc.get_threshold()[0], 10_000), 10, 10)
        # The reader and the sink threads all want the GIL; handing it over every 5 ms
        # (the default) costs the reader a few percent of its throughput.
        sys.setswitchinterval(max(sys.getswitchinterval(), SWITCH_INTERVAL))
        position = self.store.load()
        self.saved_position = position
        if self.snapshots is not None:
            self.snapshots.plan(position)
        log.info("source %s: starting from %s", self.name, position or "the current position")
        for w in self.workers:
            w.start()
        try:
            # The first connection must succeed: a wrong host or password should fail
            # fast (the supervisor or systemd restarts with backoff).  Once running, a
            # lost connection is retried for as long as it takes.
            self.source.open(position)
            self.source_connected = True
            self._loop()
        except TransformError as exc:
            self.error = exc
            log.error("%s", exc)
        finally:
            self._shutdown()
        return 1 if self.error else 0

    def _loop(self) -> None:
        spec, tracker, source = self.spec, self.tracker, self.source
        backoff = 1.0
        while not self._stop.is_set() or self._finishing_tx():
            if (tracker.events_in_flight >= spec.max_in_flight_events
                    or tracker.bytes_in_flight >= spec.max_in_flight_bytes):
                source.keepalive()
                # a snapshot reads its next chunk while the sinks work; otherwise wait
                if not (self.snapshots is not None and self.snapshots.ready and self._snapshot_tick()):
                    tracker.wait(0.2)
                self._checkpoint()
                continue
            try:
                items = source.poll(0.0 if self.snapshots is not None and self.snapshots.ready
                                    else self.poll_timeout)
            except SourceConnectionError as exc:
                log.warning("source %s: %s; resuming from the checkpoint in %.0fs", self.name, exc, backoff)
                self.source_connected, self.source_error = False, str(exc)
                self._reconnect(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 1.0
            self.caught_up = not items
            if items:
                self._dispatch(items)
            self._checkpoint()
            if self.snapshots is not None:
                self._snapshot_tick()
            for tick in self.on_tick:
                tick(self)

    def _snapshot_tick(self) -> bool:
        """Read the next snapshot chunk when the sinks have room (docs/snapshots.md);
        True when a chunk was read or placed."""
        snapshots = self.snapshots
        read = snapshots.chunks_read
        # the next chunk is read while the sinks still work on the last one
        room = (self.tracker.events_in_flight < self.spec.max_in_flight_events + snapshots.chunk_size
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
        deliveries = []
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
        seen = getattr(self.source, "bytes_read", 0)
        nbytes, self._bytes_seen = seen - self._bytes_seen, seen
        seq = self.tracker.add(len(deliveries), position, len(events), nbytes)
        for worker, mine in deliveries:
            worker.submit(seq, mine)
        self.counts["received"] += len(events)
        self.counts["emitted"] += emitted
        if commit_ts:
            self.lag_seconds = max(time.time() - commit_ts / 1000.0, 0.0)

    def _transform(self, p: _Pipeline, events: list[ChangeEvent]) -> list[ChangeEvent]:
        """Run the chain; on an error, the pipeline's ``on_error`` decides per event
        (``stop`` re-raises; ``skip`` and ``dead_letter`` go on without the event)."""
        try:
            return p.chain.apply(events)
        except TransformError:
            if p.spec.on_error == "stop":
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
        self._last_save = now  # retry after checkpoint_interval, not on every turn
        if self._checkpoint_failing_since is None:
            self._checkpoint_failing_since = now
            log.warning("source %s: %s; retrying", self.name, exc)
        elif now - self._checkpoint_failing_since > CHECKPOINT_FAILURE_TIMEOUT:
            log.error("source %s: checkpoints failing for %.0fs: %s", self.name,
                      now - self._checkpoint_failing_since, exc)
            if self.error is None:
                self.error = exc
            self._stop.set()

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
        if not self._stop.wait(delay):
            self._open(self.tracker.position or self.saved_position, delay)

    def _open(self, position: dict | None, delay: float) -> bool:
        """Reopen the source, retrying while the database is unreachable; False if a
        stop was requested first.  A setup problem (``SourceSetupError``) is raised."""
        while True:
            try:
                self.source.open(position)
                self.source_connected, self.source_error = True, None
                return True
            except SourceConnectionError as exc:
                self.source_connected, self.source_error = False, str(exc)
                log.warning("source %s: unavailable, retrying in %.0fs: %s", self.name, delay, exc)
                if self._stop.wait(delay):
                    return False
                delay = min(delay * 2, 30.0)

    def _shutdown(self) -> None:
        drained = self._drain(self.grace_period)
        if not drained:
            log.warning("source %s: stopping with %d events unacknowledged; they will be read again",
                        self.name, self.tracker.events_in_flight)
        for w in self.workers:
            w.stop(timeout=5.0, abort=not drained)
        self._checkpoint(force=True)
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
        log.info("source %s: stopped at %s", self.name, self.saved_position)
