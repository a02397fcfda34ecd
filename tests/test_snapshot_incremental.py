"""On-demand snapshots while streaming (``cdc snapshot``), bad input, tables added
later; PostgreSQL and MariaDB, against real servers."""

from __future__ import annotations

import random
import time

from click.testing import CliRunner
from snapshot_helpers import ChunkHitter, read_complete, rebuild, same_ids_same_content
from test_snapshot_postgres import _current, _pg_executor, _table_rows, wait_for

from cdc.cli import main

from pgutil import Running, config, file_pipeline, sql


def cdc(*args) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_on_demand_snapshot_while_a_writer_hits_the_chunk(pg_database, tmp_path):
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rows = 100_000
    sql(pg_database, "CREATE TABLE snap (id bigint PRIMARY KEY, v int NOT NULL, note text)",
        f"INSERT INTO snap SELECT 2 * g, 0, 'row ' || g FROM generate_series(1, {rows}) g")
    chunk = 3000
    cfg = config(tmp_path, pg_database, ["public.snap"], {"all": file_pipeline()}, snapshot="never",
                 snapshot_chunk_size=chunk)
    out = tmp_path / "out/all.jsonl"
    path = str(tmp_path / "pipelines.yaml")
    with Running(cfg) as r:
        sql(pg_database, "UPDATE snap SET v = 1 WHERE id = 2")
        wait_for(lambda: len(read_complete(out)) == 1, 30, "a live change")
        with ChunkHitter(_pg_executor(pg_database), lambda: _current(r.runner), chunk * 2, seed) as writer:
            time.sleep(0.5)
            code, text = cdc("snapshot", path, "--source", "db", "--table", "snap")
            assert code == 0, text
            snapshot_id = text.split("snapshot ")[1].split()[0]
            wait_for(lambda: r.runner.snapshots.progress, 30, "the copy to start")
            code, text = cdc("snapshot", path, "--source", "db", "--list")
            print(text)
            wait_for(lambda: r.runner.snapshots.finished, 300, "the copy")
            time.sleep(0.5)
        assert writer.error is None, writer.error
        expected = _table_rows(pg_database)
        deadline = time.time() + 60
        while rebuild(read_complete(out), "snap") != expected:
            assert time.time() < deadline, "the file sink did not reach the table's state"
            time.sleep(0.5)
    events = read_complete(out)
    same_ids_same_content(events)
    reads = [e for e in events if e["op"] == "r"]
    assert reads and reads[-1]["source"]["snapshot"] == "last"
    print(f"snapshot {snapshot_id}: {len(reads)} rows; {writer.done} writer transactions during it")


def test_where_bad_where_cancel_and_list(pg_database, tmp_path):
    sql(pg_database, "CREATE TABLE snap (id bigint PRIMARY KEY, v int NOT NULL, note text)",
        "INSERT INTO snap SELECT g, 0, 'row ' || g FROM generate_series(1, 50000) g")
    # small chunks: the copy must still be running when the cancel arrives, on an idle machine too
    cfg = config(tmp_path, pg_database, ["public.snap"], {"all": file_pipeline()}, snapshot="never",
                 snapshot_chunk_size=20)
    out = tmp_path / "out/all.jsonl"
    path = str(tmp_path / "pipelines.yaml")
    with Running(cfg) as r:
        # a condition that does not parse: refused by the command, the pipeline is not disturbed
        code, text = cdc("snapshot", path, "--source", "db", "--table", "snap", "--where", "id <<>> 3 AND")
        assert code == 2 and "syntax error" in text, text
        code, text = cdc("snapshot", path, "--source", "db", "--table", "nope")
        assert code == 2 and "not a table of source db" in text, text
        # only the rows matching a condition
        code, text = cdc("snapshot", path, "--source", "db", "--table", "snap", "--where", "id % 1000 = 7")
        assert code == 0, text
        wait_for(lambda: sum(e["op"] == "r" for e in read_complete(out)) == 50, 60, "the rows of the condition")
        assert sorted(e["after"]["id"] for e in read_complete(out)) == list(range(7, 50000, 1000))
        # the figures: Prometheus, and the progress bar of a terminal
        import io

        from cdc.observe.metrics import RunnerMetrics
        from cdc.snapshot.progress import ProgressBars
        metrics = RunnerMetrics(r.runner).render().decode()
        assert 'cdc_snapshot_rows_total{source="db"} 50.0' in metrics, metrics
        assert 'cdc_snapshot_tables_remaining{source="db"} 0.0' in metrics, metrics
        screen = io.StringIO()
        bars = ProgressBars(r.runner, stream=screen)
        bars(r.runner)
        bars.close()
        assert "snapshot public.snap" in screen.getvalue() and "50/50" in screen.getvalue(), screen.getvalue()
        # a long copy, cancelled
        code, text = cdc("snapshot", path, "--source", "db", "--table", "snap")
        snapshot_id = text.split("snapshot ")[1].split()[0]
        wait_for(lambda: r.runner.snapshots.rows_total > 1000, 60, "the copy to start")
        code, text = cdc("snapshot", path, "--source", "db", "--list")
        assert snapshot_id in text and "running" in text, text
        code, text = cdc("snapshot", path, "--source", "db", "--cancel", snapshot_id)
        assert code == 0, text
        wait_for(lambda: r.runner.snapshots.finished, 30, "the cancel")
        copied = r.runner.snapshots.rows_total
        assert copied < 50 + 50000, "the copy was not cancelled"
        time.sleep(1.5)
        assert r.runner.snapshots.rows_total == copied
        sql(pg_database, "UPDATE snap SET v = 9 WHERE id = 1")
        wait_for(lambda: read_complete(out)[-1]["op"] == "u", 30, "streaming after the cancel")
        # the running process's status file (rewritten every 2 s) is what --list reads
        wait_for(lambda: "no snapshot queued" in cdc("snapshot", path, "--source", "db", "--list")[1], 10,
                 "--list to show the cancel")
        code, text = cdc("status", path)
        assert code == 0, text
        print(text)
    print(f"cancelled after {copied - 50} of 50000 rows")


def test_table_without_primary_key_and_table_added_later(pg_database, tmp_path, caplog):
    sql(pg_database, "CREATE TABLE a (id bigint PRIMARY KEY, n int)", "INSERT INTO a SELECT g, g FROM generate_series(1, 300) g",
        "CREATE TABLE nokey (n int)", "ALTER TABLE nokey REPLICA IDENTITY FULL",
        "INSERT INTO nokey SELECT g FROM generate_series(1, 10) g",
        "CREATE TABLE b (id bigint PRIMARY KEY, n int)", "INSERT INTO b SELECT g, g FROM generate_series(1, 200) g")
    out = tmp_path / "out/all.jsonl"
    cfg = config(tmp_path, pg_database, ["public.a", "public.nokey"], {"all": file_pipeline()},
                 snapshot="initial", snapshot_chunk_size=64)
    with Running(cfg) as r:
        wait_for(lambda: r.runner.snapshots.finished, 60, "the copy")
        sql(pg_database, "INSERT INTO nokey VALUES (11)")
        wait_for(lambda: any(e["op"] == "c" for e in read_complete(out)), 30, "streaming of the table without a key")
    events = read_complete(out)
    assert sum(e["op"] == "r" and e["source"]["table"] == "a" for e in events) == 300
    assert not any(e["op"] == "r" and e["source"]["table"] == "nokey" for e in events)
    assert "table public.nokey has no primary key" in caplog.text, caplog.text
    code, text = cdc("snapshot", str(tmp_path / "pipelines.yaml"), "--source", "db", "--table", "nokey")
    assert code == 2 and "has no primary key" in text, text
    # b joins the source: it alone gets a copy, a and nokey keep streaming
    cfg = config(tmp_path, pg_database, ["public.a", "public.nokey", "public.b"], {"all": file_pipeline()},
                 snapshot="initial", snapshot_chunk_size=64)
    with Running(cfg) as r:
        wait_for(lambda: r.runner.snapshots.finished, 60, "the copy of b")
        sql(pg_database, "UPDATE a SET n = 0 WHERE id = 1")
        wait_for(lambda: read_complete(out)[-1]["op"] == "u", 30, "streaming")
    events = read_complete(out)
    assert sum(e["op"] == "r" and e["source"]["table"] == "a" for e in events) == 300
    assert sum(e["op"] == "r" and e["source"]["table"] == "b" for e in events) == 200
