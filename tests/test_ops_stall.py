"""Operations while back-pressure stalls the source (issue 10, "Operations that lie"):
lag, liveness and the status file keep telling the truth, a lost source connection
is resumed, a slow transform does not get the walsender killed, and ``cdc status``
names the sink that blocks the source.  Every fault is real: a real PostgreSQL, its
walsender terminated or stopped, its server stopped; the sink's destination is a
file that appears when the destination "comes back" (the sink is a test plugin)."""

from __future__ import annotations

import io
import logging
import os
import re
import signal
import time

from rich.console import Console

import cdc.observe.http as http
from cdc.observe import SourceLock, attach, read_status
from cdc.observe.metrics import RunnerMetrics
from cdc.observe.status import render_table, source_status

from _ops_helpers import wait_for
from pgutil import Running, config, read_jsonl, sql
from servers import PostgresServer, RedisServer

FLAG_SINK = '''
import os
from cdc.errors import TransientSinkError

class FlagSink:
    """Appends to ``path`` while the file ``flag`` exists; "destination unreachable" otherwise."""
    def __init__(self, path: str, flag: str):
        self.path, self.flag = path, flag
    def open(self): pass
    def write(self, events):
        if not os.path.exists(self.flag):
            raise TransientSinkError("destination unreachable")
        with open(self.path, "ab") as f:
            for e in events:
                f.write(e.to_json() + b"\\n")
    def close(self): pass
'''

FLAKY = "flaky.sinks[0]:flagsink:FlagSink"  # the sink's name: pipeline, index, type
SLOW = '''
import time

def slow(event):
    """Takes 12 s over the row with id 2: a transform stuck on a slow lookup."""
    if event.after and event.after.get("id") == 2:
        time.sleep(12)
    return event
'''


def _pipelines(tmp_path, flag_up: bool = False) -> dict:
    (tmp_path / "flagsink.py").write_text(FLAG_SINK)
    flag = tmp_path / "sink_up"
    if flag_up:
        flag.touch()
    return {
        "ok": {"source": "db", "sinks": [{"type": "file", "path": "out/ok.jsonl"}]},
        "flaky": {"source": "db", "sinks": [{"type": "flagsink:FlagSink", "path": str(tmp_path / "flaky.jsonl"),
                                             "flag": str(flag),
                                             "retry": {"initial_backoff": 0.1, "max_backoff": 0.3}}]},
    }


def _ids(path) -> list[int]:
    return [e["after"]["id"] for e in read_jsonl(path)]


def _insert(dsn: str, first: int, count: int) -> None:
    for i in range(first, first + count):
        sql(dsn, f"INSERT INTO t VALUES ({i})")


def _walsender(dsn: str, slot: str) -> int:
    rows = sql(dsn, "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s AND active", params=(slot,))
    return rows[0][0] if rows else 0


def test_stalled_source_lag_grows_status_ticks_and_names_the_blocking_sink(pg_database, tmp_path):
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY)")
    cfg = config(tmp_path, pg_database, ["public.t"], _pipelines(tmp_path), max_in_flight_events=3)
    running = Running(cfg)
    close = attach(running.runner, None, cfg.state_dir)
    lock = SourceLock(cfg.state_dir, "db").acquire()  # as `cdc run` does: `cdc status` sees it running
    try:
        with running:
            runner = running.runner
            _insert(pg_database, 1, 10)
            wait_for(lambda: runner.tracker.events_in_flight >= 3, 30, "the source stalled")
            time.sleep(1.0)
            lag1, status1 = runner.lag_seconds, read_status(cfg.state_dir, "db")
            time.sleep(3.0)
            lag2, status2 = runner.lag_seconds, read_status(cfg.state_dir, "db")
            # measured against the oldest unacknowledged commit, not the last read
            assert lag1 is not None and lag1 >= 0.9, lag1
            assert lag2 is not None and lag2 >= lag1 + 2.5, (lag1, lag2)
            metrics = RunnerMetrics(runner).render().decode()
            line = next(x for x in metrics.splitlines() if x.startswith("cdc_source_lag_seconds"))
            assert float(line.split()[-1]) >= lag2, line
            # the status file is rewritten during the wait, and liveness ticks
            assert status2["updated_at"] > status1["updated_at"], (status1, status2)
            assert time.monotonic() - runner.last_tick < 2.0
            assert status2["blocked_by"] == [FLAKY], status2
            shown = source_status(cfg, "db")
            assert shown["blocked_by"] == [FLAKY], shown
            out = io.StringIO()
            render_table([shown], Console(file=out, width=250))
            assert f"blocked by sink {FLAKY}" in out.getvalue(), out.getvalue()

            (tmp_path / "sink_up").touch()          # the destination comes back
            wait_for(lambda: _ids(tmp_path / "flaky.jsonl") == list(range(1, 11)), 30, "every row delivered")
            wait_for(lambda: runner.tracker.drained, 10, "drained")
            time.sleep(2.5)
            assert read_status(cfg.state_dir, "db")["blocked_by"] == []
            assert runner.lag_seconds is not None and runner.lag_seconds < 1.0, runner.lag_seconds
    finally:
        close()
        lock.release()
    assert _ids(tmp_path / "out/ok.jsonl") == list(range(1, 11))


def test_source_connection_lost_while_stalled_is_resumed(pg_database, tmp_path):
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY)")
    cfg = config(tmp_path, pg_database, ["public.t"], _pipelines(tmp_path), max_in_flight_events=3)
    with Running(cfg) as running:
        runner = running.runner
        _insert(pg_database, 1, 5)
        wait_for(lambda: runner.tracker.events_in_flight >= 3, 30, "the source stalled")
        pid = _walsender(pg_database, runner.source.slot)
        sql(pg_database, "SELECT pg_terminate_backend(%s)", params=(pid,))
        # the stalled reader notices when it next sends a status update (<= 10 s)
        wait_for(lambda: not runner.source_connected or not running.thread.is_alive(), 40, "the loss seen")
        assert running.thread.is_alive(), f"the runner exited: {runner.error}"
        _insert(pg_database, 6, 5)
        (tmp_path / "sink_up").touch()
        wait_for(lambda: len(_ids(tmp_path / "flaky.jsonl")) >= 10, 60, "every row after the reconnect")
        assert running.thread.is_alive() and runner.error is None, runner.error
    assert _ids(tmp_path / "flaky.jsonl") == list(range(1, 11))
    assert _ids(tmp_path / "out/ok.jsonl") == list(range(1, 11))


def test_liveness_ticks_while_the_database_is_down(tmp_path, monkeypatch):
    """LIVENESS_TIMEOUT is shortened to 2 s (a setting, not a fault) so that the test
    does not wait a minute; the database is really stopped."""
    monkeypatch.setattr(http, "LIVENESS_TIMEOUT", 2.0)
    with PostgresServer() as server:
        dsn = server.create_database("shop")
        sql(dsn, "CREATE TABLE t (id int PRIMARY KEY)")
        cfg = config(tmp_path, dsn, ["public.t"], _pipelines(tmp_path, flag_up=True))
        running = Running(cfg)
        close = attach(running.runner, None, cfg.state_dir)
        try:
            with running:
                runner = running.runner
                _insert(dsn, 1, 2)
                wait_for(lambda: len(_ids(tmp_path / "flaky.jsonl")) == 2, 30, "2 rows")
                server.stop()
                wait_for(lambda: not runner.source_connected, 30, "the loss seen")
                failures = []
                deadline = time.monotonic() + 12  # backoff 1, 2, 4, 8 s between attempts
                while time.monotonic() < deadline:
                    ok, reason = http.health(runner)
                    if not ok:
                        failures.append(reason)
                    time.sleep(0.3)
                assert not failures, failures[:3]
                before = read_status(cfg.state_dir, "db")["updated_at"]
                time.sleep(3.5)  # written every 2 s at a tick of the 1 s backoff sleep: up to 3 s apart
                assert read_status(cfg.state_dir, "db")["updated_at"] > before
                server.start()
                _insert(dsn, 3, 2)
                wait_for(lambda: len(_ids(tmp_path / "flaky.jsonl")) == 4, 60, "rows after the restart")
        finally:
            close()


def test_slow_transform_and_a_stall_do_not_get_the_walsender_killed(tmp_path, caplog):
    (tmp_path / "slowmod.py").write_text(SLOW)
    caplog.set_level(logging.INFO)
    with PostgresServer(settings={"wal_sender_timeout": "2s"}) as server:
        dsn = server.create_database("shop")
        sql(dsn, "CREATE TABLE t (id int PRIMARY KEY)")
        pipelines = _pipelines(tmp_path)
        pipelines["ok"]["transforms"] = [{"type": "python", "function": "slowmod:slow"}]
        cfg = config(tmp_path, dsn, ["public.t"], pipelines, max_in_flight_events=4)
        with Running(cfg) as running:
            runner = running.runner
            _insert(dsn, 1, 3)
            wait_for(lambda: len(_ids(tmp_path / "out/ok.jsonl")) == 3, 60, "3 rows through the slow transform")
            # then a stall of 8 s: the flaky sink is down and 4 events are in flight
            _insert(dsn, 4, 5)
            wait_for(lambda: runner.tracker.events_in_flight >= 4, 30, "the source stalled")
            time.sleep(8)
            (tmp_path / "sink_up").touch()
            wait_for(lambda: len(_ids(tmp_path / "flaky.jsonl")) == 8, 60, "every row")
        text = server.log_since_start()
    assert "replication timeout" not in text, text[-2000:]
    assert "resuming from the checkpoint" not in caplog.text
    assert any("has been busy" in r.getMessage() and "transform" in r.getMessage()
               for r in caplog.records), caplog.text[-3000:]


def test_silent_walsender_is_detected_and_resumed(tmp_path, caplog):
    """The walsender process is stopped with SIGSTOP: its socket stays open and the
    kernel acknowledges what cdc sends, but nothing comes back (a half-open
    connection, for real)."""
    caplog.set_level(logging.INFO)
    with PostgresServer(settings={"wal_sender_timeout": "2s"}) as server:
        dsn = server.create_database("shop")
        sql(dsn, "CREATE TABLE t (id int PRIMARY KEY)")
        cfg = config(tmp_path, dsn, ["public.t"], _pipelines(tmp_path, flag_up=True))
        with Running(cfg) as running:
            runner = running.runner
            _insert(dsn, 1, 2)
            wait_for(lambda: len(_ids(tmp_path / "flaky.jsonl")) == 2, 30, "2 rows")
            pid = _walsender(dsn, runner.source.slot)
            os.kill(pid, signal.SIGSTOP)
            try:
                _insert(dsn, 3, 2)
                wait_for(lambda: not runner.source_connected, 30, "the silent connection detected")
            finally:
                os.kill(pid, signal.SIGCONT)  # it then finds its client gone and exits
            _insert(dsn, 5, 2)
            wait_for(lambda: len(_ids(tmp_path / "flaky.jsonl")) >= 6, 60, "every row after the reconnect")
            assert runner.error is None
    assert _ids(tmp_path / "flaky.jsonl") == list(range(1, 7))
    assert "presumed lost" in caplog.text, caplog.text[-2000:]



SLOW_SINK = '''
import time

class SlowSink:
    """Its first write takes 11 s (a destination that answers slowly)."""
    def __init__(self):
        self.slow = True
    def open(self): pass
    def write(self, events):
        if self.slow:
            self.slow = False
            time.sleep(11)
    def close(self): pass
'''


def test_slow_sink_batch_is_logged_with_a_hint(pg_database, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    (tmp_path / "slowsink.py").write_text(SLOW_SINK)
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY)")
    cfg = config(tmp_path, pg_database, ["public.t"], {"p": {"source": "db", "sinks": [{"type": "slowsink:SlowSink"}]}})
    with Running(cfg) as running:
        _insert(pg_database, 1, 1)
        wait_for(lambda: running.runner.tracker.acked_events == 1, 60, "the slow batch acknowledged")
    # 11 s of sleep; a loaded machine rounds it up
    assert re.search(r"a batch of 1 events took 1[1-9]s to deliver", caplog.text), caplog.text[-2000:]


def test_back_pressure_is_logged_once_for_a_stall_that_lasts_not_for_every_brief_one(pg_database, tmp_path,
                                                                                     caplog):
    """A catch-up fills ``max_in_flight_events`` again and again for a few ms each time:
    that is the flow working, not news.  A sink that holds the source for a second or
    more is logged, once, naming it."""
    caplog.set_level(logging.INFO, logger="cdc")
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY)")
    sql(pg_database, "INSERT INTO t SELECT g FROM generate_series(1, 1) g")
    pipelines = {"fast": {"source": "db", "sinks": [{"type": "file", "path": "out/fast.jsonl",
                                                     "batch_size": 50}]}}
    cfg = config(tmp_path, pg_database, ["public.t"], pipelines, max_in_flight_events=100)
    with Running(cfg) as running:
        for k in range(60):  # 6,000 changes in 100-row transactions: dozens of brief stalls
            sql(pg_database, f"INSERT INTO t SELECT g FROM generate_series({2 + k * 100}, {101 + k * 100}) g")
        wait_for(lambda: running.runner.tracker.acked_events >= 6000, 60, "the catch-up")
    brief = [r for r in caplog.records if "reading waits for sink" in r.getMessage()]
    assert len(brief) <= 3, f"{len(brief)} lines for a catch-up: " + "; ".join(r.getMessage() for r in brief[:5])

    caplog.clear()
    stuck = tmp_path / "stuck"
    stuck.mkdir()
    cfg = config(stuck, pg_database, ["public.t"], _pipelines(stuck), max_in_flight_events=3, slot="cdc_stuck")
    with Running(cfg) as running:
        _insert(pg_database, 10_001, 10)
        wait_for(lambda: running.runner.tracker.events_in_flight >= 3, 30, "the source stalled")
        time.sleep(3.5)
        (stuck / "sink_up").touch()
        wait_for(lambda: running.runner.tracker.drained, 30, "drained")
    lasting = [r.getMessage() for r in caplog.records if "reading waits for sink" in r.getMessage()]
    assert len(lasting) == 1 and FLAKY in lasting[0], lasting


def test_a_broker_outage_is_not_reported_as_a_slow_sink_once_it_recovers(pg_database, tmp_path, caplog):
    """Redis stopped for over 10 s, then back: the outage is logged by the retries and
    'recovered', but the batch that waited for it is not then called slow (its one
    successful attempt was quick; the retries were the wait)."""
    caplog.set_level(logging.INFO)
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY)")
    with RedisServer() as redis_server:
        sink = {"type": "redis", "url": redis_server.url, "retry": {"initial_backoff": 0.5, "max_backoff": 1.0}}
        cfg = config(tmp_path, pg_database, ["public.t"], {"p": {"source": "db", "sinks": [sink]}})
        with Running(cfg) as running:
            wait_for(lambda: running.runner.workers[0].connected, 30, "the sink connected")
            redis_server.stop()
            _insert(pg_database, 1, 1)
            wait_for(lambda: "write 1 events failed" in caplog.text, 30, "the write failed")
            time.sleep(11)  # longer than SLOW_BATCH
            redis_server.start()
            wait_for(lambda: running.runner.tracker.acked_events == 1, 60, "delivered once Redis is back")
    assert "recovered after" in caplog.text, caplog.text[-2000:]
    assert "to deliver; while a sink is this slow" not in caplog.text, caplog.text[-2000:]
