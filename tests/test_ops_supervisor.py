"""The supervisor (``cdc run`` with several sources): a child's configuration error
stops it instead of restarts for ever, and a ``kill -9`` of the supervisor does not
leave its children running with their locks."""

from __future__ import annotations

import os
import signal
import time

from cdc.observe import SourceLock

from _ops_helpers import CdcProcess, make_orders, wait_for, write_config

TWO_SOURCES = """
sources:
  a:
    type: postgres
    dsn: "{dsn}"
    tables: [orders]
    slot: {slot}_a
    checkpoint: {type: file, path: state/a.json}
  b:
    type: postgres
    dsn: "DSN_B"
    tables: [orders]
    slot: {slot}_b
    checkpoint: {type: file, path: state/b.json}
pipelines:
  pa: {source: a, sinks: [{type: file, path: out/a.jsonl}]}
  pb: {source: b, sinks: [{type: file, path: out/b.jsonl}]}
"""


def _start(tmp_path, pg_server, pg_database):
    dsn_b = pg_server.create_database(f"b_{os.getpid()}_{time.time_ns() % 10**9}")
    for dsn in (pg_database, dsn_b):
        make_orders(dsn)
    config = write_config(tmp_path, pg_database, TWO_SOURCES.replace("DSN_B", dsn_b))
    supervisor = CdcProcess(config)
    state = tmp_path / "state"

    def pids():
        return {s: SourceLock(state, s).holder() if SourceLock(state, s).held() else None for s in "ab"}
    first = wait_for(lambda: all((p := pids()).values()) and p, 60, "both children")
    return config, supervisor, pids, first, dsn_b


def _kill_leftovers(pids: dict) -> None:
    for pid in pids.values():
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_config_error_in_a_child_stops_the_supervisor(tmp_path, pg_server, pg_database):
    config, supervisor, pids, first, _ = _start(tmp_path, pg_server, pg_database)
    try:
        config.write_text(config.read_text() + "\nbogus_key: 1\n")  # someone edits the config
        os.kill(first["b"], signal.SIGKILL)                          # and child b crashes
        code = supervisor.proc.wait(60)
        text = supervisor.text()
        assert code == 2, text[-3000:]
        assert "source b exited with a configuration error (exit code 2)" in text, text[-3000:]
        assert text.count("bogus_key") >= 1
        assert pids() == {"a": None, "b": None}
    finally:
        supervisor.stop()
        _kill_leftovers(first)


def test_children_stop_when_the_supervisor_is_killed(tmp_path, pg_server, pg_database):
    config, supervisor, pids, first, dsn_b = _start(tmp_path, pg_server, pg_database)
    try:
        wait_for(lambda: supervisor.text().count("streaming slot") >= 2, 60, "both streaming")
        supervisor.signal(signal.SIGKILL)
        supervisor.wait(10)
        wait_for(lambda: pids() == {"a": None, "b": None}, 45, "the children gone with their locks")
    finally:
        supervisor.stop()
        _kill_leftovers(first)
