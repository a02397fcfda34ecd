"""The Prometheus metrics of a running ``cdc run`` after a known number of changes."""

from __future__ import annotations

import psycopg
from prometheus_client.parser import text_string_to_metric_families

from cdc.observe.metrics import position_numbers

from _ops_helpers import CdcProcess, http_get, insert, make_orders, read_jsonl, wait_for, write_config
from servers import free_port

CONFIG = """
metrics: {listen: "127.0.0.1:%d"}
sources:
  shop:
    type: postgres
    dsn: "{dsn}"
    tables: [orders]
    slot: {slot}
    checkpoint: {type: file, path: state/shop.json}
    checkpoint_interval: 0.2
    snapshot: never  # counts of known streamed changes: no copy of the rows written as it starts
pipelines:
  inserts:
    source: shop
    transforms: [{type: filter, where: {op: [c]}}]
    sinks: [{type: file, path: out/inserts.jsonl, name: inserts-file}]
  everything:
    source: shop
    sinks: [{type: file, path: out/all.jsonl, name: all-file}]
"""


def scrape(port: int) -> dict[tuple, float]:
    status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict, name: str, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_metrics_after_known_changes(tmp_path, pg_database):
    make_orders(pg_database)
    port = free_port()
    config = write_config(tmp_path, pg_database, CONFIG % port)
    cdc = CdcProcess(config)
    try:
        wait_for(lambda: http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200, 60, "readiness")
        insert(pg_database, 1, 30, per_tx=10)                      # 30 inserts, 3 transactions
        with psycopg.connect(pg_database, autocommit=True) as conn:
            conn.execute("UPDATE orders SET note = 'x' WHERE id <= 10")  # 10 updates, 1 transaction
        wait_for(lambda: len(read_jsonl(tmp_path / "out/all.jsonl")) == 40, 60, "40 events in all.jsonl")

        def settled():
            s = scrape(port)
            return s if value(s, "cdc_source_events_acknowledged_total", source="shop") == 40 else None
        s = wait_for(settled, 30, "40 acknowledged events")
        assert value(s, "cdc_source_events_received_total", source="shop") == 40
        assert value(s, "cdc_source_transactions_total", source="shop") >= 4
        assert value(s, "cdc_pipeline_events_received_total", source="shop", pipeline="inserts") == 40
        assert value(s, "cdc_pipeline_events_emitted_total", source="shop", pipeline="inserts") == 30
        assert value(s, "cdc_pipeline_events_dropped_total", source="shop", pipeline="inserts") == 10
        assert value(s, "cdc_pipeline_events_dropped_total", source="shop", pipeline="everything") == 0
        for pipeline, sink, n in (("inserts", "inserts-file", 30), ("everything", "all-file", 40)):
            labels = dict(source="shop", pipeline=pipeline, sink=sink)
            assert value(s, "cdc_sink_events_acknowledged_total", **labels) == n
            assert value(s, "cdc_sink_events_failed_total", **labels) == 0
            assert value(s, "cdc_sink_events_dead_lettered_total", **labels) == 0
            assert value(s, "cdc_sink_events_skipped_total", **labels) == 0
            assert value(s, "cdc_sink_batch_size_events_sum", **labels) == n
            assert value(s, "cdc_sink_batch_size_events_count", **labels) >= 1
            assert value(s, "cdc_sink_latency_seconds_count", **labels) >= 1
            assert value(s, "cdc_sink_ready", **labels) == 1
        assert value(s, "cdc_events_in_flight", source="shop") == 0
        assert value(s, "cdc_bytes_in_flight", source="shop") == 0
        assert value(s, "cdc_source_connected", source="shop") == 1
        assert 0 <= value(s, "cdc_source_lag_seconds", source="shop") < 60
        assert value(s, "cdc_source_lag_bytes", source="shop") >= 0
        assert value(s, "cdc_replication_slot_size_bytes", source="shop") > 0
        assert 0 <= value(s, "cdc_checkpoint_age_seconds", source="shop") < 60

        def checkpoint_matches():
            saved = position_numbers(__import__("json").loads((tmp_path / "state/shop.json").read_text())["position"])
            return value(scrape(port), "cdc_checkpoint_position", source="shop", field="lsn") == saved["lsn"]
        wait_for(checkpoint_matches, 20, "the checkpoint gauge to equal the saved lsn")
        status, body = http_get(f"http://127.0.0.1:{port}/healthz")
        assert status == 200, body
    finally:
        cdc.signal()
        assert cdc.wait(60) == 0, cdc.text()


def test_a_bad_metrics_key_is_a_config_error_with_its_path(tmp_path, pg_database):
    import subprocess
    import sys
    config = write_config(tmp_path, pg_database, (CONFIG % 1).replace('listen: "127.0.0.1:1"', "listen: nowhere, port: 1"))
    proc = subprocess.run([sys.executable, "-m", "cdc", "validate", str(config)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "metrics.listen: expected host:port, got 'nowhere'" in proc.stderr
    assert "metrics.port: unknown key" in proc.stderr
