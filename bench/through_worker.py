"""One sink run by a ``SinkWorker``, as ``cdc run`` runs it: rows/s from the first
``submit`` to the last acknowledgement (shared by the sink benchmarks)."""

from __future__ import annotations

import time

from cdc.config import SinkSpec
from cdc.engine import AckTracker, SinkWorker
from cdc.event import ChangeEvent


def through_worker(spec: SinkSpec, events: list[ChangeEvent], batch: int = 1000, timeout: float = 300) -> float:
    tracker, fatal = AckTracker(), []
    worker = SinkWorker(spec, spec.build(), tracker, lambda name, exc: fatal.append(exc))
    worker.start()
    deadline = time.monotonic() + 30
    while not worker.connected and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.perf_counter()
    for i in range(0, len(events), batch):
        chunk = events[i:i + batch]
        worker.submit(tracker.add(1, None, len(chunk), 0), chunk)
    deadline = time.monotonic() + timeout
    while tracker.acked_events < len(events):
        if fatal or time.monotonic() > deadline:
            raise SystemExit(f"sink {spec.name}: {tracker.acked_events}/{len(events)} acknowledged: {fatal}")
        time.sleep(0.002)
    elapsed = time.perf_counter() - started
    worker.stop(10)
    return len(events) / elapsed
