"""The acceptance pass of snapshots (issue 9), as a new user tries them: what the pass
found, each against a real server."""

from __future__ import annotations

import re
import time
from pathlib import Path

import orjson
import pytest
import yaml
from click.testing import CliRunner
from test_snapshot_mysql import Running as MariaDBRunning
from test_snapshot_mysql import _config as mariadb_config
from test_snapshot_postgres import wait_for

from cdc.cli import main

from mysql_helpers import db_of, execute
from pgutil import Running, config, file_pipeline, sql

DOCS = Path(__file__).resolve().parent.parent / "docs"


def cdc(*args) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def saved_snapshot(tmp_path) -> dict:
    """The snapshot progress in the checkpoint file: what a restart after ``kill -9`` reads."""
    return orjson.loads((tmp_path / "state/db.json").read_bytes())["position"]["snapshot"]


def test_a_cancelled_copy_is_checkpointed_without_another_change(pg_database, tmp_path):
    """Before: the cancel changed only the running process's state; on an idle database
    no commit followed, so the checkpoint kept the copy, and a restart after ``kill -9``
    resumed the copy that had been cancelled."""
    sql(pg_database, "CREATE TABLE snap (id bigint PRIMARY KEY, v int)",
        "INSERT INTO snap SELECT g, 0 FROM generate_series(1, 50000) g")
    cfg = config(tmp_path, pg_database, ["public.snap"], {"all": file_pipeline()}, snapshot="initial",
                 snapshot_chunk_size=20, snapshot_parallelism=1)
    path = str(tmp_path / "pipelines.yaml")
    with Running(cfg) as r:
        wait_for(lambda: r.runner.snapshots.rows_total > 500, 60, "the copy to start")
        code, text = cdc("snapshot", path, "--source", "db", "--cancel", "initial")
        assert code == 0, text
        wait_for(lambda: r.runner.snapshots.finished, 30, "the cancel")
        assert r.runner.snapshots.rows_total < 50000, "the copy ended before the cancel: make it longer"
        # nothing else happens in the database: the checkpoint must say so by itself
        wait_for(lambda: saved_snapshot(tmp_path)["queue"] == [], 10, "the cancel in the checkpoint")
        assert "cancelled" in saved_snapshot(tmp_path)["skipped"]["public.snap"]
    with Running(cfg) as r:  # the restart does not copy again
        time.sleep(1.0)
        assert r.runner.snapshots.finished and r.runner.snapshots.rows_total == 0


def test_a_table_without_a_key_is_checkpointed_as_not_copied_on_mariadb(mariadb_server, mariadb_database,
                                                                        tmp_path, caplog):
    """The same for a copy dropped by the reader (a table without a primary key, the last
    one of the initial copy): before, the checkpoint kept it queued until the next change,
    and the ERROR neither said that its changes are still streamed nor how to copy it later."""
    db = db_of(mariadb_database)
    execute(mariadb_server, db, "CREATE TABLE items (id int PRIMARY KEY, n int)",
            "INSERT INTO items SELECT seq, seq FROM seq_1_to_300",
            "CREATE TABLE nokey (n int)", "INSERT INTO nokey VALUES (1), (2)")
    cfg = mariadb_config(tmp_path, mariadb_server, db, [f"{db}.items", f"{db}.nokey"], snapshot_chunk_size=64)
    with MariaDBRunning(cfg) as r:
        wait_for(lambda: r.runner.snapshots.finished, 60, "the copy")
        wait_for(lambda: saved_snapshot(tmp_path)["queue"] == [], 10, "the checkpoint")
        assert "no primary key" in saved_snapshot(tmp_path)["skipped"][f"{db}.nokey"]
    error = next(m for m in caplog.messages if f"{db}.nokey" in m and "no primary key" in m)
    assert "its changes are still streamed" in error, error
    assert f"cdc snapshot CONFIG --source db --table {db}.nokey" in error, error


def test_the_filter_the_docs_give_drops_the_snapshot_rows_and_keeps_the_changes(pg_database, tmp_path):
    """docs/snapshots.md showed ``{type: filter, expression: "op != 'r'"}``: the filter has
    no ``expression``, so the documented config did not validate."""
    text = (DOCS / "snapshots.md").read_text()
    shown = re.search(r"drops them with a filter:\s*`transforms: (\[.*?\])`", text, re.S)
    assert shown, "docs/snapshots.md no longer shows the filter"
    transforms = yaml.safe_load(shown.group(1))
    readme = re.search(r"drop the copy with `(\{type: filter.*?\})`", (DOCS.parent / "README.md").read_text(), re.S)
    assert readme and [yaml.safe_load(readme.group(1))] == transforms, "the README's quick start shows another filter"
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY, v int)", "INSERT INTO t VALUES (1, 0), (2, 0)")
    cfg = config(tmp_path, pg_database, ["public.t"], {"all": file_pipeline(transforms=transforms)},
                 snapshot="initial")
    out = tmp_path / "out/all.jsonl"
    with Running(cfg) as r:
        wait_for(lambda: r.runner.snapshots.finished, 30, "the copy")
        sql(pg_database, "INSERT INTO t VALUES (3, 0)", "UPDATE t SET v = 1 WHERE id = 1", "DELETE FROM t WHERE id = 2",
            "TRUNCATE t")
        wait_for(lambda: out.exists() and out.read_text().count("\n") >= 4, 30, "the changes")
    ops = [orjson.loads(line)["op"] for line in out.read_text().splitlines()]
    assert ops == ["c", "u", "d", "t"], ops


def test_a_request_taken_but_not_checkpointed_survives_kill_9(pg_database, tmp_path):
    """``cdc run`` takes a request file and queues the copy; the copy is in the checkpoint
    only after the next save.  Before: the file was deleted when taken, so a ``kill -9`` in
    between (here: at the copy's first chunk, with a long ``checkpoint_interval``) lost the
    request, silently: ``--list`` showed nothing and nothing was copied."""
    import os
    import subprocess
    import sys
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY, v int)",
        "INSERT INTO t SELECT g, 0 FROM generate_series(1, 3000) g")
    config(tmp_path, pg_database, ["public.t"], {"all": file_pipeline()}, snapshot="never",
           snapshot_chunk_size=100, snapshot_parallelism=1, checkpoint_interval=30.0)
    path = str(tmp_path / "pipelines.yaml")
    out = tmp_path / "out/all.jsonl"

    def start(crash_at: str | None, log_name: str):
        env = {k: v for k, v in os.environ.items() if k != "CDC_CRASH_AT"}
        if crash_at:
            env["CDC_CRASH_AT"] = crash_at
        log = open(tmp_path / log_name, "wb")
        return subprocess.Popen([sys.executable, "-m", "cdc", "run", path], stdout=log, stderr=log, env=env)

    first = start("snapshot_chunk:1", "run1.log")
    try:
        time.sleep(2.0)
        sql(pg_database, "UPDATE t SET v = 1 WHERE id = 1")  # the first checkpoint is saved at once
        wait_for(lambda: (tmp_path / "state/db.json").exists(), 30, "the first checkpoint")
        code, text = cdc("snapshot", path, "--source", "db", "--table", "t")
        assert code == 0, text
        assert first.wait(60) == -9, (tmp_path / "run1.log").read_text()
    finally:
        first.kill()
    assert saved_snapshot(tmp_path)["queue"] == [], "the copy reached the checkpoint: the test proves nothing"
    second = start(None, "run2.log")
    try:
        wait_for(lambda: len({e["after"]["id"] for e in orjson_lines(out) if e["op"] == "r"}) == 3000, 30,
                 "the copy after the restart")
    finally:
        second.terminate()
        second.wait(30)
    print((tmp_path / "run2.log").read_text())


def orjson_lines(path: Path) -> list[dict]:
    from snapshot_helpers import read_complete
    return read_complete(path)


@pytest.mark.unit
def test_taken_requests_and_cancels_are_put_back_unless_the_checkpoint_holds_them(tmp_path):
    from cdc.snapshot import requests
    saved_copy = requests.submit(tmp_path, "db", "public.a")
    lost_copy = requests.submit(tmp_path, "db", "public.b")
    requests.cancel(tmp_path, "db", saved_copy)
    requests.cancel(tmp_path, "db", "gone")
    taken, cancels = requests.take(tmp_path, "db")
    assert [r["id"] for r in taken] == [saved_copy, lost_copy] and sorted(cancels) == sorted([saved_copy, "gone"])
    assert requests.take(tmp_path, "db") == ([], [])  # taken once
    back = requests.retake(tmp_path, "db", {saved_copy})
    assert sorted(back) == sorted([(lost_copy, "request"), (saved_copy, "cancel")])
    taken, cancels = requests.take(tmp_path, "db")
    assert [r["id"] for r in taken] == [lost_copy] and cancels == [saved_copy]
    requests.ended(tmp_path, "db", saved_copy)
    requests.ended(tmp_path, "db", lost_copy)
    assert requests.retake(tmp_path, "db", set()) == []
    assert not list(requests.request_dir(tmp_path, "db").iterdir())
    # no checkpoint (reset, or when_needed starting over): the taken files are forgotten with it
    requests.submit(tmp_path, "db", "public.a")
    requests.take(tmp_path, "db")
    assert requests.retake(tmp_path, "db", None) == []
    assert not list(requests.request_dir(tmp_path, "db").iterdir())


def test_the_progress_display_stops_when_no_copy_is_left(pg_database, tmp_path):
    """Before: the rich display of ``cdc run`` on a terminal went on redrawing the finished
    bars ten times a second for as long as the pipeline streamed (2.6% of a core against
    0.3% without a terminal, measured with an idle database)."""
    import io

    from cdc.snapshot.progress import ProgressBars
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY)", "INSERT INTO t SELECT generate_series(1, 500)")
    cfg = config(tmp_path, pg_database, ["public.t"], {"all": file_pipeline()}, snapshot="initial",
                 snapshot_chunk_size=50, snapshot_parallelism=1)
    screen = io.StringIO()
    with Running(cfg) as r:
        bars = ProgressBars(r.runner, stream=screen)
        r.runner.on_tick.append(bars)
        wait_for(lambda: r.runner.snapshots.finished, 30, "the copy")
        wait_for(lambda: "500/500" in screen.getvalue(), 5, "the display's last lines")
        assert not bars.showing
        code, text = cdc("snapshot", str(tmp_path / "pipelines.yaml"), "--source", "db", "--table", "t",
                         "--where", "id <= 7")
        assert code == 0, text
        wait_for(lambda: "7/7" in screen.getvalue(), 30, "a new display for the new copy")
        wait_for(lambda: not bars.showing, 5, "the display to stop again")


@pytest.mark.unit
def test_a_request_file_written_by_hand_goes_by_its_name(tmp_path, caplog):
    from cdc.snapshot import requests
    directory = requests.request_dir(tmp_path, "db")
    directory.mkdir()
    (directory / "mine.request").write_text('{"table": "public.t", "requested_at": "soon"}')
    (directory / "list.request").write_text("[1, 2]")
    taken, _ = requests.take(tmp_path, "db")
    assert [r["id"] for r in taken] == ["mine"]
    assert "list.request is not a JSON object" in caplog.text
    requests.ended(tmp_path, "db", "mine")
    assert not list(directory.iterdir())


def test_a_copy_with_a_condition_has_no_estimate_of_the_whole_table(pg_database, tmp_path):
    """Before: a ``--where`` copy took the table's row estimate as its total, so the bar, ``cdc
    status`` and ``--list`` showed it far from done (``500 of ~20,000``) and its time left was
    that of the whole table."""
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY)", "INSERT INTO t SELECT generate_series(1, 20000)",
        "ANALYZE t")
    cfg = config(tmp_path, pg_database, ["public.t"], {"all": file_pipeline()}, snapshot="never",
                 snapshot_chunk_size=5, snapshot_parallelism=1)
    path = str(tmp_path / "pipelines.yaml")
    with Running(cfg) as r:
        code, text = cdc("snapshot", path, "--source", "db", "--table", "t", "--where", "id % 4 = 0")
        assert code == 0, text
        wait_for(lambda: r.runner.snapshots.rows_total >= 50, 30, "the copy to start")
        from cdc.snapshot.progress import status_of
        figures = status_of(r.runner)
        assert not r.runner.snapshots.finished, "the copy ended already: make it longer"
        copy = figures["tables"][0]
        assert copy["total"] is None and copy["eta_s"] is None, copy


def test_status_does_not_call_a_table_copied_under_snapshot_never(pg_database, tmp_path):
    """Before: with ``snapshot: never`` (and for a table added later under it) ``cdc status``
    listed every table's initial copy as ``done``, though no row was copied."""
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY)", "INSERT INTO t VALUES (1)",
        "CREATE TABLE later (id int PRIMARY KEY)", "INSERT INTO later VALUES (1)")
    path = str(tmp_path / "pipelines.yaml")

    def states() -> dict:
        code, text = cdc("status", path, "--json")
        assert code == 0, text
        return {s["table"]: (s["state"], s.get("error")) for s in orjson.loads(text)[0]["snapshots"]}

    cfg = config(tmp_path, pg_database, ["public.t"], {"all": file_pipeline()}, snapshot="never")
    with Running(cfg):
        sql(pg_database, "INSERT INTO t VALUES (2)")
        wait_for(lambda: (tmp_path / "state/db.json").exists(), 30, "the checkpoint")
    assert states() == {"public.t": ("not copied", "snapshot: never")}
    cfg = config(tmp_path, pg_database, ["public.t", "public.later"], {"all": file_pipeline()}, snapshot="never")
    with Running(cfg) as r:
        wait_for(lambda: "public.later" in r.runner.snapshots.state["tables"], 30, "the table added")
        sql(pg_database, "INSERT INTO t VALUES (3)")
        wait_for(lambda: "public.later" in saved_snapshot(tmp_path).get("skipped", {}), 30, "the checkpoint")
        code, text = cdc("snapshot", path, "--source", "db", "--table", "t")  # a full copy: copied now
        assert code == 0, text
        wait_for(lambda: "public.t" not in saved_snapshot(tmp_path).get("skipped", {}), 30, "the copy")
    assert states() == {"public.t": ("done", None), "public.later": ("not copied", "snapshot: never")}
