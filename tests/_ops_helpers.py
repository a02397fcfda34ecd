"""Helpers for the operations tests: a table to change, a config, a ``cdc run`` child, a call
that must end in time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent


def make_orders(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, note text)")


def insert(dsn: str, first: int, count: int, per_tx: int = 1, pause: float = 0.0) -> None:
    """Rows first .. first+count-1, ``per_tx`` rows per transaction."""
    with psycopg.connect(dsn) as conn:
        for start in range(first, first + count, per_tx):
            time.sleep(pause)
            with conn.transaction():
                for i in range(start, min(start + per_tx, first + count)):
                    conn.execute("INSERT INTO orders VALUES (%s, %s)", (i, f"order {i}"))


def slot_name(dsn: str) -> str:
    """Slots are per cluster: tests on the shared server name theirs after their database."""
    return "cdc_" + dsn.rsplit("/", 1)[1].lower()


def slot_lsn(dsn: str, slot: str | None = None) -> str | None:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                           (slot or slot_name(dsn),)).fetchone()
    return row[0] if row else None


def write_config(tmp: Path, dsn: str, body: str, name: str = "pipelines.yaml") -> Path:
    path = tmp / name
    path.write_text(body.replace("{dsn}", dsn).replace("{slot}", slot_name(dsn)))
    return path


def basic_config(tmp: Path, dsn: str, extra: str = "", sink: str = "{type: file, path: out/orders.jsonl}") -> Path:
    return write_config(tmp, dsn, f"""
sources:
  shop:
    type: postgres
    dsn: "{{dsn}}"
    tables: [orders]
    slot: {slot_name(dsn)}
    checkpoint: {{type: file, path: state/shop.json}}
    checkpoint_interval: 0.2
    snapshot: never  # these tests are about streaming: no copy of the rows they write as it starts
pipelines:
  copy:
    source: shop
    sinks:
      - {sink}
{extra}
""")


class CdcProcess:
    """``cdc run CONFIG`` as a child, logging to ``<config dir>/cdc.log``."""

    def __init__(self, config: Path, *args: str, env: dict | None = None) -> None:
        self.log_path = config.parent / "cdc.log"
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "cdc", "run", str(config), *args],
                                     stdout=self.log, stderr=subprocess.STDOUT, cwd=config.parent,
                                     env={**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)})

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self.log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_for(condition, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def cdc_command(config: Path, *args: str, timeout: float = 60, stdin: str | None = None
                ) -> subprocess.CompletedProcess:
    """A `cdc` command other than `run` in the foreground, as an operator types it."""
    words = next((i for i, a in enumerate(args) if a.startswith("-")), len(args))  # the command, then CONFIG
    return subprocess.run([sys.executable, "-m", "cdc", *args[:words], str(config), *args[words:]],
                          capture_output=True, text=True, timeout=timeout, cwd=config.parent, input=stdin,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def streaming(config: Path, dsn: str) -> CdcProcess:
    """`cdc run CONFIG`, once its slot exists (rows written before it would not be seen)."""
    run = CdcProcess(config)
    wait_for(lambda: slot_lsn(dsn) or run.proc.poll() is not None, 60, "the slot")
    return run


def ids(path: Path) -> list[int]:
    """The ``after.id`` of every event in a JSON Lines file, in order."""
    return [e["after"]["id"] for e in read_jsonl(path)]


def idle_broker_lost_and_back(sink_options: dict, tmp_path: Path, caplog, event, stop, start,
                              back_within: float = 30.0) -> None:
    """A sink delivers a change, then sits idle while its broker is stopped: ``not_ready``
    (what /readyz reports) and one 'broker down' WARNING say so without a write; once
    ``start`` brings it back, 'broker back', and the next change is delivered at the first try."""
    from cdc.config import parse_config
    from cdc.engine import AckTracker, SinkWorker

    raw = {"sources": {"s": {"type": "postgres", "dsn": "postgresql://unused/x", "tables": ["orders"],
                             "checkpoint": {"type": "memory"}}},
           "pipelines": {"p": {"source": "s", "sinks": [sink_options]}}}
    spec = parse_config(raw, tmp_path / "c.yaml", {}).pipelines["p"].sinks[0]
    sink = spec.build()
    tracker, fatal = AckTracker(), []
    worker = SinkWorker(spec, sink, tracker, lambda name, exc: fatal.append(exc))
    worker.start()
    try:
        worker.submit(tracker.add(1, {"batch": 0}, 1, 0), [event("c", 1)])
        wait_for(lambda: tracker.acked_events == 1, 30, "the first event delivered")
        assert sink.not_ready() is None
        stop()
        wait_for(lambda: sink.not_ready() is not None, 30, "the idle sink to notice the broker is gone")
        assert "broker down" in caplog.text
        start()
        wait_for(lambda: sink.not_ready() is None, back_within, "the idle sink to see the broker back")
        assert "broker back" in caplog.text
        worker.submit(tracker.add(1, {"batch": 1}, 1, 0), [event("c", 2)])
        wait_for(lambda: tracker.acked_events == 2, 30, "the second event delivered")
    finally:
        worker.stop(timeout=10)
    assert not fatal and worker.counts["failed"] == 0, caplog.text[-2000:]  # a working connection at once


def within(seconds: float, call, *args):
    """``call(*args)`` in a thread: what it raised or returned, or a failure if it still waits
    after ``seconds`` (before the fix it waited for ever)."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = call(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc
    thread = threading.Thread(target=run, daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still waiting after {seconds} s"
    outcome["seconds"] = time.monotonic() - started
    return outcome
