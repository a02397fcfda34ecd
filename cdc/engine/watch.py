"""What a ``SourceRunner`` tells its observers while it waits or works: lag, the
sinks that block it, and a guard thread for steps of the main loop that take long.

None of this runs per event: lag and ``blocking_sinks`` are computed when someone
asks (a scrape, the status file), ``batch_ts_ms`` once per batch, and the guard
looks at the runner once a second.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from ..event import Commit

if TYPE_CHECKING:
    from .runner import SourceRunner

__all__ = ["lag_seconds", "blocking_sinks", "batch_ts_ms", "BusyGuard"]

log = logging.getLogger("cdc.runner")
KEEPALIVE_AFTER = 1.0   # seconds without a turn of the main loop before the guard sends keepalives
SLOW_AFTER = 10.0       # seconds without a turn before the guard logs a hint


def batch_ts_ms(items: list) -> int:
    """The commit time of the first transaction in a batch read from the source (0: unknown)."""
    first = items[0]
    if first.__class__ is Commit:
        return first.ts_ms or 0
    source = first.source
    ts = source.get("ts_ms") if isinstance(source, dict) else None
    return ts if isinstance(ts, int) else 0


def lag_seconds(runner: SourceRunner) -> float | None:
    """Seconds between now and the time ``T`` before which every committed change has
    been acknowledged by every sink:

    - with batches unacknowledged, ``T`` is the commit time of the oldest one (a
      stalled pipeline's lag grows, even though the reader read to the end);
    - with nothing in flight, after a poll that found nothing, ``T`` is the time of
      that poll (about 0 while the source is polled; growing while it is not, for
      example while the database is unreachable);
    - with nothing in flight and a reader still behind, the commit time of the
      newest transaction read.
    """
    now = time.time()
    oldest = runner.tracker.oldest_ts_ms
    if oldest is not None:
        return max(now - oldest / 1000.0, 0.0)
    if runner.caught_up_at is not None and (runner.caught_up or not runner.read_ts_ms):
        return max(now - runner.caught_up_at, 0.0)
    if runner.read_ts_ms:
        return max(now - runner.read_ts_ms / 1000.0, 0.0)
    return None


def blocking_sinks(runner: SourceRunner) -> list[str]:
    """The sinks that hold the oldest unacknowledged batch while the source waits for
    room (``max_in_flight_events``/``bytes``): the ones every pipeline waits for."""
    if runner.stalled_since is None:
        return []
    oldest = runner.tracker.oldest_seq
    if oldest is None:
        return []
    return [w.name for w in runner.workers if w.oldest_seq() == oldest]


class BusyGuard:
    """A daemon thread that watches the runner's ``last_tick``.  When one step of the
    main loop (a slow transform, a checkpoint store or a server that does not answer)
    keeps it from turning, the guard calls ``source.keepalive()`` so that the server
    does not drop the replication connection (PostgreSQL's ``wal_sender_timeout``),
    and logs a hint once per episode."""

    def __init__(self, runner: SourceRunner, interval: float = 1.0) -> None:
        self.runner = runner
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"guard {runner.name}", daemon=True)
        self.busy_since: float | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        hinted = 0.0
        while not self._stop.wait(self.interval):
            runner = self.runner
            tick = runner.last_tick
            busy = time.monotonic() - tick
            if busy < KEEPALIVE_AFTER or not runner.source_connected:
                continue
            try:
                runner.source.keepalive()
            except Exception as exc:  # the main thread finds out when it next reads
                log.debug("source %s: keepalive from the guard failed: %s", runner.name, exc)
            if busy >= SLOW_AFTER and hinted != tick:
                hinted = tick
                log.warning("source %s: the main loop has been busy for %.0fs in %s; standby status "
                            "updates are sent meanwhile so that the server keeps the connection. A "
                            "transform or checkpoint store this slow holds back every pipeline of the "
                            "source (see docs/operations.md)", runner.name, busy, runner.doing)
