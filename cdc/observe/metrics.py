"""Prometheus metrics for one process (one source), read from the runner's counters.

Counters and gauges are computed when Prometheus scrapes (a custom collector reads
``SourceRunner.counts``, each pipeline's and ``SinkWorker.counts``), so the event
path pays nothing; only the two histograms are observed, once per sink batch.
"""

from __future__ import annotations

import logging
import threading
import time

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..abc import Describable
from ..lsn import is_lsn, parse_lsn

__all__ = ["RunnerMetrics", "position_numbers"]

log = logging.getLogger("cdc.metrics")
LAG_REFRESH = 10.0  # seconds between queries of the source's replication lag (e.g. the slot)

BATCH_BUCKETS = (1, 10, 50, 100, 500, 1000, 5000, 10000, 50000)
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def position_numbers(position: dict | None) -> dict[str, int]:
    """The numeric parts of a position: ints, digit strings and ``X/Y`` LSNs."""
    out = {}
    for key, value in (position or {}).items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            out[key] = value
        elif isinstance(value, str) and value.isdigit():
            out[key] = int(value)
        elif is_lsn(value):
            out[key] = parse_lsn(value)
    return out


class RunnerMetrics:
    """The registry of one ``SourceRunner``; ``render()`` is the /metrics body."""

    def __init__(self, runner) -> None:
        self.runner = runner
        self.registry = CollectorRegistry()
        self.batch_size = Histogram("cdc_sink_batch_size_events", "Events per sink batch",
                                    ["source", "pipeline", "sink"], buckets=BATCH_BUCKETS,
                                    registry=self.registry)
        self.latency = Histogram("cdc_sink_latency_seconds", "Time to deliver one batch, retries included",
                                 ["source", "pipeline", "sink"], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        for p in runner.pipelines:
            for w in p.workers:
                labels = (runner.name, p.spec.name, w.name)
                w.on_batch = self._observer(self.batch_size.labels(*labels), self.latency.labels(*labels))
        self.registry.register(_Collector(self))
        self._lag: dict = {}
        self._lag_at = 0.0
        self._lag_lock = threading.Lock()

    @staticmethod
    def _observer(sizes, latencies):
        def on_batch(events: int, seconds: float) -> None:
            sizes.observe(events)
            latencies.observe(seconds)
        return on_batch

    def source_lag(self) -> dict:
        """What the source's ``describe()`` says (slot lag bytes, retained WAL), cached."""
        source = self.runner.source
        if not isinstance(source, Describable):
            return {}
        with self._lag_lock:
            if time.monotonic() - self._lag_at >= LAG_REFRESH:
                self._lag_at = time.monotonic()
                try:
                    self._lag = source.describe()
                except Exception as exc:
                    log.debug("source %s: lag query failed: %s", self.runner.name, exc)
                    self._lag = {}
            return self._lag

    def render(self) -> bytes:
        from prometheus_client import generate_latest
        return generate_latest(self.registry)


class _Collector:
    def __init__(self, metrics: RunnerMetrics) -> None:
        self.metrics = metrics

    def collect(self):
        r = self.metrics.runner
        src = [r.name]
        yield _counter("cdc_source_events_received", "Row changes read from the source",
                       ["source"], [(src, r.counts["received"])])
        yield _counter("cdc_source_transactions", "Transactions read from the source",
                       ["source"], [(src, r.counts["transactions"])])
        yield _counter("cdc_source_events_acknowledged", "Row changes acknowledged by every sink",
                       ["source"], [(src, r.tracker.acked_events)])
        yield _gauge("cdc_source_connected", "1 while the source is connected", ["source"],
                     [(src, int(r.source_connected))])
        yield _gauge("cdc_events_in_flight", "Events read but not yet acknowledged", ["source"],
                     [(src, r.tracker.events_in_flight)])
        yield _gauge("cdc_bytes_in_flight", "Bytes read but not yet acknowledged", ["source"],
                     [(src, r.tracker.bytes_in_flight)])
        pipes = [(p, [r.name, p.spec.name]) for p in r.pipelines]
        for key, helptext in (("received", "Events a pipeline took in"),
                              ("emitted", "Events a pipeline handed to its sinks"),
                              ("dropped", "Events dropped by a pipeline's transforms")):
            yield _counter(f"cdc_pipeline_events_{key}", helptext, ["source", "pipeline"],
                           [(labels, p.counts[key]) for p, labels in pipes])
        sinks = [(w, [r.name, p.spec.name, w.name]) for p in r.pipelines for w in p.workers]
        for key, name, helptext in (("written", "acknowledged", "Events a sink durably accepted"),
                                    ("failed", "failed", "Failed delivery attempts"),
                                    ("dead_lettered", "dead_lettered", "Events parked in the dead-letter sink"),
                                    ("skipped", "skipped", "Events skipped by on_error: skip")):
            yield _counter(f"cdc_sink_events_{name}", helptext, ["source", "pipeline", "sink"],
                           [(labels, w.counts[key]) for w, labels in sinks])
        yield _gauge("cdc_sink_ready", "1 when the sink is connected and its last attempt succeeded",
                     ["source", "pipeline", "sink"],
                     [(labels, int(w.connected and w.last_error is None)) for w, labels in sinks])
        yield from self._positions(r, src)
        if r.snapshots is not None:
            s = r.snapshots
            yield _counter("cdc_snapshot_rows", "Snapshot rows emitted (op r) by this process",
                           ["source"], [(src, s.rows_total)])
            yield _gauge("cdc_snapshot_tables_remaining", "Tables with a snapshot queued or running",
                         ["source"], [(src, len(s.pending))])
            yield _gauge("cdc_snapshot_table_rows", "Rows copied so far, per table copy",
                         ["source", "snapshot", "table"],
                         [([r.name, p["id"], p["table"]], p["rows"]) for p in s.progress.values()])

    def _positions(self, r, src):
        numbers = position_numbers(r.saved_position)
        yield _gauge("cdc_checkpoint_position", "The checkpoint's numeric position fields",
                     ["source", "field"], [([r.name, k], v) for k, v in numbers.items()])
        if r.saved_at:
            yield _gauge("cdc_checkpoint_age_seconds", "Seconds since the checkpoint was saved",
                         ["source"], [(src, time.time() - r.saved_at)])
        lag_s = r.lag_seconds
        if lag_s is not None:
            yield _gauge("cdc_source_lag_seconds", "Seconds since the oldest change not yet acknowledged by "
                         "every sink was committed (0 when caught up)", ["source"], [(src, lag_s)])
        blocked = r.blocked_by
        yield _gauge("cdc_source_blocked", "1 while reading waits for this sink (max_in_flight_* reached)",
                     ["source", "sink"], [([r.name, w.name], int(w.name in blocked)) for w in r.workers])
        lag = self.metrics.source_lag()
        if lag.get("lag_bytes") is not None:
            yield _gauge("cdc_source_lag_bytes", "Bytes of log the source is behind (PostgreSQL: the slot)",
                         ["source"], [(src, lag["lag_bytes"])])
        if lag.get("slot_retained_bytes") is not None:
            yield _gauge("cdc_replication_slot_size_bytes", "WAL the replication slot holds back",
                         ["source"], [(src, lag["slot_retained_bytes"])])


def _counter(name, helptext, labels, samples):
    family = CounterMetricFamily(name, helptext, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family


def _gauge(name, helptext, labels, samples):
    family = GaugeMetricFamily(name, helptext, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family
