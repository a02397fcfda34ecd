"""`cdc snapshot --list` and `--cancel` after a `cdc run` was killed between taking a request
and checkpointing it: the request is kept as ``<id>.request.taken`` in state_dir, and the next
start takes it again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from snapshot_helpers import read_complete
from test_snapshot_postgres import wait_for

from cdc.cli import main

from pgutil import config, file_pipeline, sql


def cdc(*args) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def saved_queue(tmp_path: Path) -> list | None:
    """The copies in the checkpoint file (None: no checkpoint saved)."""
    path = tmp_path / "state/db.json"
    if not path.exists():
        return None
    return orjson.loads(path.read_bytes())["position"]["snapshot"]["queue"]


def start(tmp_path: Path, log_name: str, crash_at: str | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "CDC_CRASH_AT"}
    if crash_at:
        env["CDC_CRASH_AT"] = crash_at
    log = open(tmp_path / log_name, "wb")
    return subprocess.Popen([sys.executable, "-m", "cdc", "run", str(tmp_path / "pipelines.yaml")],
                            stdout=log, stderr=log, env=env)


def copied(tmp_path: Path) -> set:
    return {e["after"]["id"] for e in read_complete(tmp_path / "out/all.jsonl") if e["op"] == "r"}


def killed_after_taking_a_request(pg_database: str, tmp_path: Path, checkpoint_first: bool) -> str:
    """A `cdc run` takes a snapshot request and is killed (-9) at the copy's first chunk,
    before a checkpoint holds the copy; returns the request's id."""
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY, v int)",
        "INSERT INTO t SELECT g, 0 FROM generate_series(1, 3000) g")
    config(tmp_path, pg_database, ["public.t"], {"all": file_pipeline()}, snapshot="never",
           snapshot_chunk_size=100, snapshot_parallelism=1, checkpoint_interval=30.0)
    run = start(tmp_path, "run1.log", crash_at="snapshot_chunk:1")
    try:
        time.sleep(2.0)
        if checkpoint_first:
            sql(pg_database, "UPDATE t SET v = 1 WHERE id = 1")  # the first checkpoint is saved at once
            wait_for(lambda: saved_queue(tmp_path) is not None, 30, "the first checkpoint")
        code, text = cdc("snapshot", str(tmp_path / "pipelines.yaml"), "--source", "db", "--table", "t")
        assert code == 0, text
        assert run.wait(60) == -9, (tmp_path / "run1.log").read_text()
    finally:
        run.kill()
        run.wait()
    assert not saved_queue(tmp_path), "the copy reached the checkpoint: the test proves nothing"
    snapshot_id = text.split("snapshot ", 1)[1].split(" ", 1)[0]
    assert list((tmp_path / "state/db.snapshots").glob(f"{snapshot_id}.request.taken"))
    return snapshot_id


def listed(tmp_path: Path) -> tuple[str, list[dict]]:
    path = str(tmp_path / "pipelines.yaml")
    code, text = cdc("snapshot", path, "--source", "db", "--list")
    assert code == 0, text
    code, as_json = cdc("snapshot", path, "--source", "db", "--list", "--json")
    assert code == 0, as_json
    return text, json.loads(as_json)


def restart_for_a_while(tmp_path) -> None:
    """``cdc run`` again, streaming for 3 s, then stopped (exit 0)."""
    run = start(tmp_path, "run2.log")
    try:
        wait_for(lambda: "streaming slot" in (tmp_path / "run2.log").read_text(), 30, "the restart")
        time.sleep(3.0)
    finally:
        run.terminate()
        assert run.wait(30) == 0, (tmp_path / "run2.log").read_text()


def test_list_shows_a_request_taken_by_a_run_that_was_killed_and_cancel_works_on_it(pg_database, tmp_path):
    """Before: `--list` showed only the checkpoint's copies and the requests not taken yet, so
    after the crash it said "no snapshot queued or running" though the next start would copy
    the table; and `--cancel ID` refused the id as never requested."""
    snapshot_id = killed_after_taking_a_request(pg_database, tmp_path, checkpoint_first=True)
    text, rows = listed(tmp_path)
    assert snapshot_id in text and "public.t" in text, text
    assert "stopped" in text and "next start" in text, text
    [row] = [r for r in rows if r["id"] == snapshot_id]
    assert row["table"] == "public.t" and row["state"] == "interrupted", row
    assert "next start" in row["note"], row
    code, text = cdc("snapshot", str(tmp_path / "pipelines.yaml"), "--source", "db", "--cancel", snapshot_id)
    assert code == 0 and "cancelled" in text, text
    assert not list((tmp_path / "state/db.snapshots").iterdir())
    text, rows = listed(tmp_path)
    assert rows == [] and "no snapshot queued or running" in text, text
    before = copied(tmp_path)
    assert len(before) < 3000
    restart_for_a_while(tmp_path)
    assert copied(tmp_path) == before, "the cancelled copy was made"
    assert "snapshot " + snapshot_id not in (tmp_path / "run2.log").read_text()


def test_after_a_reset_list_says_the_next_start_forgets_the_interrupted_request(pg_database, tmp_path):
    """Without a checkpoint (reset since, or none saved yet) the next start is a first run and
    removes the taken files (``requests.retake``): --list must not promise that it resumes."""
    snapshot_id = killed_after_taking_a_request(pg_database, tmp_path, checkpoint_first=True)
    code, text = cdc("checkpoint", "reset", str(tmp_path / "pipelines.yaml"), "--source", "db", "--yes",
                     "--keep-slot")
    assert code == 0, text
    text, rows = listed(tmp_path)
    [row] = [r for r in rows if r["id"] == snapshot_id]
    assert row["state"] == "interrupted" and "forgets it" in row["note"], row
    assert "forgets it" in text and "takes it again" not in text, text
    before = copied(tmp_path)
    restart_for_a_while(tmp_path)
    assert copied(tmp_path) == before
    assert listed(tmp_path)[1] == []


@pytest.mark.unit
def test_list_marks_a_copy_whose_cancel_is_waiting_and_cancel_removes_an_interrupted_request(tmp_path):
    """A cancel made while the source is stopped is carried out at the next start: --list
    showed the copy as if nothing were asked.  (No server: --list and --cancel read state_dir
    and the checkpoint only.)"""
    from cdc.snapshot import requests
    raw = {"sources": {"db": {"type": "postgres", "dsn": "postgresql://cdc@127.0.0.1:1/none", "tables": ["public.t"],
                              "checkpoint": {"type": "file", "path": "state/db.json"}}},
           "pipelines": {"all": file_pipeline()}}
    path = tmp_path / "pipelines.yaml"
    path.write_text(json.dumps(raw))
    state = tmp_path / "state"
    state.mkdir()
    (state / "db.json").write_text(json.dumps({"source": "db", "position": {
        "lsn": "0/1", "snapshot": {"tables": ["public.t"], "queue": [], "skipped": {}}}, "saved_at": 1}))
    waiting = requests.submit(state, "db", "public.t")
    requests.cancel(state, "db", waiting)
    interrupted = requests.submit(state, "db", "public.t", "id < 5")
    (requests.request_dir(state, "db") / f"{interrupted}.request").rename(
        requests.request_dir(state, "db") / f"{interrupted}.request.taken")
    text, rows = listed(tmp_path)
    by_id = {r["id"]: r for r in rows}
    assert by_id[waiting]["state"] == "requested" and by_id[waiting]["cancel_requested"], rows
    assert by_id[interrupted]["state"] == "interrupted" and by_id[interrupted]["where"] == "id < 5", rows
    assert "(cancel requested)" in text.splitlines()[[r["id"] for r in rows].index(waiting)], text
    code, out = cdc("snapshot", str(path), "--source", "db", "--cancel", interrupted)
    assert code == 0 and "is removed" in out, out
    assert [r["id"] for r in listed(tmp_path)[1]] == [waiting]
    code, out = cdc("snapshot", str(path), "--source", "db", "--cancel", interrupted)
    assert code == 2 and "no snapshot" in out, out
