"""PostgreSQL over TLS (``sslmode=require``): a real server with ``ssl=on`` and a
self-signed certificate made with openssl.  Streaming works, the walsender's
connection is encrypted (``pg_stat_ssl``), and the reader never reads the socket
itself where libpq decrypts: the raw fast path would hand ciphertext to the decoder.

GSSAPI encryption needs a Kerberos KDC, which cannot be set up here; the code takes
the raw path only when libpq reports neither TLS nor GSSAPI (``encrypted()`` in
``cdc/sources/postgres/replication.py``)."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time

from _ops_helpers import wait_for
from pgutil import Running, config, file_pipeline, read_jsonl, sql
from servers import PostgresServer


def _tls_server() -> PostgresServer:
    server = PostgresServer()
    crt, key = server.data_dir / "server.crt", server.data_dir / "server.key"
    subprocess.run(["openssl", "req", "-new", "-x509", "-days", "2", "-nodes", "-subj", "/CN=127.0.0.1",
                    "-newkey", "rsa:2048", "-keyout", str(key), "-out", str(crt)],
                   check=True, capture_output=True, timeout=60)
    key.chmod(0o600)
    if server.user:
        for path in (crt, key):
            shutil.chown(path, server.user, server.user)
    server.settings.update({"ssl": "on", "ssl_cert_file": str(crt), "ssl_key_file": str(key),
                            "wal_sender_timeout": "2s"})  # status updates must flow through libpq too
    return server


def test_streaming_over_tls_reads_through_libpq(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    with _tls_server() as server:
        dsn = server.create_database("shop") + "?sslmode=require"
        sql(dsn, "CREATE TABLE t (id int PRIMARY KEY, pad text)")
        cfg = config(tmp_path, dsn, ["public.t"], {"all": file_pipeline()}, max_poll_events=500)
        out = tmp_path / "out/all.jsonl"
        with Running(cfg) as running:
            stream = running.runner.source.stream
            assert stream.pgconn.ssl_in_use
            assert stream._raw is False, "the raw socket path must not be used under TLS"
            pid = wait_for(lambda: sql(dsn, "SELECT active_pid FROM pg_replication_slots WHERE active"), 30,
                           "the walsender")[0][0]
            assert sql(dsn, "SELECT ssl, version FROM pg_stat_ssl WHERE pid = %s", params=(pid,))[0][0] is True
            sql(dsn, "INSERT INTO t SELECT g, repeat('y', 300) FROM generate_series(1, 20000) g")
            for i in range(20001, 20011):
                sql(dsn, f"INSERT INTO t VALUES ({i}, 'small')")
            wait_for(lambda: len(read_jsonl(out)) >= 20010, 120, "every row over TLS")
            time.sleep(5)  # idle, over TLS, with wal_sender_timeout 2 s: keepalives keep the walsender
            sql(dsn, "INSERT INTO t VALUES (20011, 'after a pause')")
            wait_for(lambda: len(read_jsonl(out)) >= 20011, 30, "a row after the pause")
            assert running.runner.error is None
    assert "resuming from the checkpoint" not in caplog.text, caplog.text[-2000:]
    ids = [e["after"]["id"] for e in read_jsonl(out)]
    assert ids == list(range(1, 20012))


def test_plain_connection_keeps_the_fast_path(pg_database, tmp_path):
    """The counterpart: without TLS (``sslmode=disable``) the socket is read directly."""
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY)")
    cfg = config(tmp_path, pg_database + "?sslmode=disable", ["public.t"], {"all": file_pipeline()})
    with Running(cfg) as running:
        stream = running.runner.source.stream
        assert not stream.pgconn.ssl_in_use and stream._raw is True
        sql(pg_database, "INSERT INTO t VALUES (1)")
        wait_for(lambda: len(read_jsonl(tmp_path / "out/all.jsonl")) == 1, 30, "1 row")
