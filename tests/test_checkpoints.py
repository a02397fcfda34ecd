"""Checkpoint stores: the file store's atomic replace and the PostgreSQL table store."""

import json
import os

import pytest

from cdc.checkpoints.file import FileCheckpointStore
from cdc.checkpoints.postgres import PostgresCheckpointStore
from cdc.config import Context
from cdc.errors import CheckpointError

from pgutil import Running, file_pipeline, sql, stream_config, wait_for_lines


def test_file_store_round_trip_and_atomic_replace(tmp_path):
    store = FileCheckpointStore("state/a.json", context=Context(tmp_path, source="shop"))
    assert store.load() is None
    store.save({"lsn": "0/1"})
    store.save({"lsn": "0/2"})
    assert store.load() == {"lsn": "0/2"}
    saved = json.loads((tmp_path / "state/a.json").read_text())
    assert saved["source"] == "shop" and saved["saved_at"] > 0
    assert os.listdir(tmp_path / "state") == ["a.json"]  # no temp file left behind
    (tmp_path / "state/a.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        store.load()
    store.reset()
    assert store.load() is None


def test_postgres_store_keeps_one_row_per_source(pg_database):
    a = PostgresCheckpointStore(pg_database, table="public.positions", context=Context(".", source="a"))
    b = PostgresCheckpointStore(pg_database, table="public.positions", context=Context(".", source="b"))
    assert a.load() is None
    a.save({"lsn": "0/10"})
    b.save({"gtid": "0-1-5"})
    a.save({"lsn": "0/20"})
    assert a.load() == {"lsn": "0/20"} and b.load() == {"gtid": "0-1-5"}
    assert sql(pg_database, "SELECT count(*) FROM positions")[0][0] == 2
    a.reset()
    assert a.load() is None and b.load() == {"gtid": "0-1-5"}
    a.close()
    b.close()


def test_engine_resumes_from_a_postgres_checkpoint(pg_database, tmp_path):
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY)")
    cfg = stream_config(tmp_path, pg_database, ["public.t"], {"all": file_pipeline()},
                 checkpoint={"type": "postgres", "dsn": pg_database})
    with Running(cfg):
        sql(pg_database, "INSERT INTO t VALUES (1)")
        wait_for_lines(tmp_path / "out/all.jsonl", 1)
    stored = sql(pg_database, "SELECT position FROM cdc_checkpoints WHERE source = 'db'")[0][0]
    assert "lsn" in stored
    sql(pg_database, "INSERT INTO t VALUES (2)")
    with Running(cfg):
        events = wait_for_lines(tmp_path / "out/all.jsonl", 2)
    assert [e["after"]["id"] for e in events] == [1, 2]


def test_file_store_refuses_a_position_saved_by_another_source(tmp_path):
    """Two sources given one checkpoint file: the second must not resume from the first's position."""
    a = FileCheckpointStore("state/shared.json", context=Context(tmp_path, source="orders"))
    b = FileCheckpointStore("state/shared.json", context=Context(tmp_path, source="legacy"))
    a.save({"lsn": "0/10"})
    with pytest.raises(CheckpointError) as info:
        b.load()
    message = str(info.value)
    assert "orders" in message and "legacy" in message and "path" in message
    assert a.load() == {"lsn": "0/10"}
    with pytest.raises(CheckpointError):
        b.save({"gtid": "0-1-5"})  # nor overwrite it
    assert a.load() == {"lsn": "0/10"}
    (tmp_path / "state/old.json").write_text(json.dumps({"position": {"lsn": "0/5"}}))  # no "source" yet
    assert FileCheckpointStore("state/old.json", context=Context(tmp_path, source="x")).load() == {"lsn": "0/5"}
