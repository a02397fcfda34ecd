"""Stopping and restarting: SIGTERM drains and checkpoints exactly, a second signal
exits at once, position commands, and the supervisor restarting one crashed child."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import psycopg
import yaml

from cdc.observe.metrics import position_numbers
from cdc.observe.state import SourceLock

from _ops_helpers import (
    ROOT,
    CdcProcess,
    basic_config,
    insert,
    make_orders,
    read_jsonl,
    slot_lsn,
    slot_name,
    wait_for,
    write_config,
)


def ids(path) -> list[int]:
    return [e["after"]["id"] for e in read_jsonl(path)]


def test_sigterm_drains_checkpoints_and_resumes_without_gap_or_duplicate(tmp_path, pg_database):
    make_orders(pg_database)
    config = basic_config(tmp_path, pg_database)
    out = tmp_path / "out/orders.jsonl"
    total = 1500
    cdc = CdcProcess(config)
    wait_for(lambda: slot_lsn(pg_database), 60, "the slot")
    writer = threading.Thread(target=insert, args=(pg_database, 1, total, 10, 0.02))
    writer.start()
    try:
        wait_for(lambda: len(ids(out)) >= 200, 60, "200 events")
        cdc.signal(signal.SIGTERM)                       # mid-stream
        assert cdc.wait(60) == 0, cdc.text()
    finally:
        writer.join()
        cdc.stop()
    first = ids(out)
    assert first == list(range(1, len(first) + 1)), "a prefix of the rows, in order, once each"
    assert len(first) % 10 == 0 and len(first) < total, "whole transactions, stopped mid-stream"
    checkpoint = json.loads((tmp_path / "state/shop.json").read_text())["position"]
    assert checkpoint["lsn"] == slot_lsn(pg_database), "the final checkpoint was confirmed to PostgreSQL"
    status = json.loads((tmp_path / "state/shop.status.json").read_text())
    assert status["running"] is False and status["position"] == checkpoint
    assert status["acknowledged"] == len(first), "the checkpoint covers exactly what was acknowledged"

    again = CdcProcess(config)
    try:
        wait_for(lambda: len(ids(out)) >= total, 90, "every row after the restart")
        again.signal(signal.SIGTERM)
        assert again.wait(60) == 0, again.text()
    finally:
        again.stop()
    assert ids(out) == list(range(1, total + 1)), "no gap and no duplicate across the restart"


SLOW_SINK = '''
import time
class SlowSink:
    def open(self): pass
    def write(self, events): time.sleep(120)
    def close(self): pass
'''


def test_second_signal_exits_at_once_and_keeps_the_checkpoint_safe(tmp_path, pg_database):
    make_orders(pg_database)
    (tmp_path / "slow_sink.py").write_text(SLOW_SINK)
    slow = basic_config(tmp_path, pg_database, sink="{type: 'slow_sink:SlowSink'}")
    cdc = CdcProcess(slow, "--grace-period", "60")
    wait_for(lambda: slot_lsn(pg_database), 60, "the slot")
    with psycopg.connect(pg_database) as conn:
        before = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
    insert(pg_database, 1, 20, per_tx=5)
    status = tmp_path / "state/shop.status.json"
    wait_for(lambda: status.exists() and json.loads(status.read_text())["events_in_flight"] == 20, 30,
             "20 events held by the blocked sink")
    cdc.signal(signal.SIGTERM)
    time.sleep(1.0)
    assert cdc.proc.poll() is None, "the first signal waits for the sink (grace period)"
    started = time.monotonic()
    cdc.signal(signal.SIGTERM)
    code = cdc.wait(10)
    assert time.monotonic() - started < 5 and code == 130
    saved = tmp_path / "state/shop.json"
    if saved.exists():  # an idle position from before the inserts, never one past them
        lsn = json.loads(saved.read_text())["position"]["lsn"]
        assert position_numbers({"lsn": lsn})["lsn"] <= position_numbers({"lsn": before})["lsn"]

    config = basic_config(tmp_path, pg_database)       # same source and state, a working sink
    again = CdcProcess(config)
    try:
        wait_for(lambda: ids(tmp_path / "out/orders.jsonl") == list(range(1, 21)), 60, "all 20 rows")
        again.signal(signal.SIGTERM)
        assert again.wait(60) == 0
    finally:
        again.stop()


def cdc_cli(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cdc", *args], capture_output=True, text=True,
                          input=input, cwd=ROOT, timeout=60, env={**os.environ, "COLUMNS": "200"})


def test_position_commands(tmp_path, pg_database):
    make_orders(pg_database)
    config = basic_config(tmp_path, pg_database)
    out = tmp_path / "out/orders.jsonl"
    cdc = CdcProcess(config)
    try:
        wait_for(lambda: slot_lsn(pg_database), 60, "the slot")
        insert(pg_database, 1, 5)
        wait_for(lambda: len(ids(out)) == 5 and (tmp_path / "state/shop.json").exists(), 60, "5 rows")
        shown = cdc_cli("checkpoint", "show", str(config), "--source", "shop")
        assert shown.returncode == 0 and json.loads(shown.stdout)["running"] is True
        live = json.loads(cdc_cli("status", str(config), "--json").stdout)[0]
        assert live["running"] is True and live["pid"] == cdc.proc.pid and live["position"]["lsn"]
        assert live["lag_bytes"] >= 0 and live["checkpoint_age_s"] >= 0
        refused = cdc_cli("checkpoint", "set", str(config), "--source", "shop", "--position", '{"lsn": "0/0"}')
        assert refused.returncode == 1 and f"is running (pid {cdc.proc.pid})" in refused.stderr
        refused = cdc_cli("checkpoint", "reset", str(config), "--source", "shop", "--yes")
        assert refused.returncode == 1 and "stop it first" in refused.stderr
        cdc.signal()
        assert cdc.wait(60) == 0
    finally:
        cdc.stop()
    shown = json.loads(cdc_cli("checkpoint", "show", str(config), "--source", "shop").stdout)
    assert shown["running"] is False and shown["position"]["lsn"] == slot_lsn(pg_database)
    only = json.loads(cdc_cli("checkpoint", "show", str(config)).stdout)  # the config's only source
    assert only["source"] == "shop" and only["position"] == shown["position"]
    two = yaml.safe_load(config.read_text())
    two["sources"]["other"] = dict(two["sources"]["shop"], slot="other_slot",
                                   checkpoint={"type": "file", "path": str(tmp_path / "other.json")})
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(two))
    ambiguous = cdc_cli("checkpoint", "show", str(tmp_path / "two.yaml"))
    assert ambiguous.returncode == 2 and "has 2 sources: give --source" in ambiguous.stderr
    unknown = cdc_cli("checkpoint", "show", str(config), "--source", "shopp")
    assert unknown.returncode == 2 and "no source named 'shopp'" in unknown.stderr
    stopped = json.loads(cdc_cli("status", str(config), "--json").stdout)[0]
    assert stopped["running"] is False and stopped["position"] == shown["position"]
    assert stopped["pipelines"][0]["sinks"][0]["acknowledged"] == 5 and stopped["last_error"] is None
    table = cdc_cli("status", str(config))
    assert table.returncode == 0 and "stopped" in table.stdout and shown["position"]["lsn"] in table.stdout

    insert(pg_database, 6, 5, per_tx=5)                # the "poison" transaction, to be skipped
    with psycopg.connect(pg_database) as conn:
        after_poison = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
    moved = cdc_cli("checkpoint", "set", str(config), "--source", "shop",
                    "--position", json.dumps({"lsn": after_poison}))
    assert moved.returncode == 0, moved.stderr
    bad = cdc_cli("checkpoint", "set", str(config), "--source", "shop", "--position", '{"file": "x"}')
    assert bad.returncode == 1 and "keys" in bad.stderr
    garbage = cdc_cli("checkpoint", "set", str(config), "--source", "shop", "--position", '{"lsn": "zzz"}')
    assert garbage.returncode == 1 and "not a PostgreSQL LSN" in garbage.stderr, garbage.stderr
    ahead = cdc_cli("checkpoint", "set", str(config), "--source", "shop", "--position", '{"lsn": "FF/0"}')
    assert ahead.returncode == 1 and "ahead of the server's current WAL position" in ahead.stderr, ahead.stderr
    behind = cdc_cli("checkpoint", "set", str(config), "--source", "shop", "--position", '{"lsn": "0/1"}')
    assert behind.returncode == 1 and "before the slot's confirmed position" in behind.stderr, behind.stderr
    for refused in (garbage, ahead, behind):
        assert "Traceback" not in refused.stderr
    kept = json.loads(cdc_cli("checkpoint", "show", str(config), "--source", "shop").stdout)
    # the log position moved; the snapshot progress saved beside it (the tables copied) is kept
    assert kept["position"] == {"lsn": after_poison, "snapshot": shown["position"]["snapshot"]}
    insert(pg_database, 11, 2)
    cdc = CdcProcess(config)
    try:
        wait_for(lambda: len(ids(out)) == 7, 60, "rows 11 and 12")
        cdc.signal()
        assert cdc.wait(60) == 0
    finally:
        cdc.stop()
    assert ids(out) == [1, 2, 3, 4, 5, 11, 12], "the moved position skipped rows 6-10"

    kept = cdc_cli("checkpoint", "reset", str(config), "--source", "shop", input="y\nn\n")
    assert kept.returncode == 0, kept.stderr
    assert not (tmp_path / "state/shop.json").exists() and slot_lsn(pg_database) is not None
    dropped = cdc_cli("checkpoint", "reset", str(config), "--source", "shop", "--yes", "--drop-slot")
    assert dropped.returncode == 0 and f"slot {slot_name(pg_database)} dropped" in dropped.stdout
    assert slot_lsn(pg_database) is None


TWO_SOURCES = """
sources:
  a:
    type: postgres
    dsn: "{dsn}"
    tables: [orders]
    slot: {slot}_a
    checkpoint: {type: file, path: state/a.json}
    snapshot: never  # about the supervisor and streamed rows, not the copy
  b:
    type: postgres
    dsn: "DSN_B"
    tables: [orders]
    slot: {slot}_b
    checkpoint: {type: file, path: state/b.json}
    snapshot: never  # about the supervisor and streamed rows, not the copy
pipelines:
  pa: {source: a, sinks: [{type: file, path: out/a.jsonl}]}
  pb: {source: b, sinks: [{type: file, path: out/b.jsonl}]}
"""


def test_supervisor_restarts_a_crashed_child_and_leaves_the_other(tmp_path, pg_server, pg_database):
    dsn_b = pg_server.create_database(f"b_{os.getpid()}_{int(time.time())}")
    for dsn in (pg_database, dsn_b):
        make_orders(dsn)
    config = write_config(tmp_path, pg_database, TWO_SOURCES.replace("DSN_B", dsn_b))
    state = tmp_path / "state"
    supervisor = CdcProcess(config)
    try:
        def pids():
            return {s: SourceLock(state, s).holder() if SourceLock(state, s).held() else None for s in "ab"}
        first = wait_for(lambda: all((p := pids()).values()) and p, 60, "both children")
        wait_for(lambda: slot_lsn(pg_database, slot_name(pg_database) + "_a")
                 and slot_lsn(dsn_b, slot_name(pg_database) + "_b"), 60, "both slots")
        os.kill(first["b"], signal.SIGKILL)            # child b crashes
        restarted = wait_for(lambda: (p := pids())["b"] not in (None, first["b"]) and p, 60, "b restarted")
        assert restarted["a"] == first["a"], "the other child was left alone"
        insert(pg_database, 1, 3)
        insert(dsn_b, 1, 3)
        wait_for(lambda: ids(tmp_path / "out/a.jsonl") == [1, 2, 3], 60, "a's rows")
        wait_for(lambda: ids(tmp_path / "out/b.jsonl") == [1, 2, 3], 60, "b's rows after its restart")
        assert "source b exited with -9; restarting in 1s" in supervisor.text()
        supervisor.signal()
        assert supervisor.wait(60) == 0, supervisor.text()
    finally:
        supervisor.stop()
