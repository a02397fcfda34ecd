"""MariaDB over TLS without ``ssl`` options in the DSN (pymysql's PREFERRED mode): a real
server with a self-signed certificate made with openssl.  The source builds that mode's
TLS context itself (``_Connection`` in ``cdc/sources/mysql/source.py``), without the CA
bundle it never uses: the binlog stream and the metadata connection still negotiate TLS
(the server reports a TLS version for the session)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import threading
import time

import pymysql.cursors

from cdc.event import ChangeEvent
from cdc.sources.mysql import MySQLSource

from servers import MariaDBServer


def _tls_server() -> MariaDBServer:
    server = MariaDBServer()
    crt, key = server.data_dir / "server.crt", server.data_dir / "server.key"
    subprocess.run(["openssl", "req", "-new", "-x509", "-days", "2", "-nodes", "-subj", "/CN=127.0.0.1",
                    "-newkey", "rsa:2048", "-keyout", str(key), "-out", str(crt)],
                   check=True, capture_output=True, timeout=60)
    if server.user:
        for path in (crt, key):
            shutil.chown(path, server.user, server.user)
    server.settings.update({"ssl_cert": str(crt), "ssl_key": str(key)})
    return server


def test_tls_is_negotiated_when_the_server_offers_it():
    with _tls_server() as server:
        dsn = server.create_database("shop")
        with server.connect("shop") as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE t (id int PRIMARY KEY)")
        source = MySQLSource(dsn, ["shop.t"], server_id=4701, snapshot="never")
        source.open(None)
        try:
            for conn in (source.reader._stream_connection, source.reader._ctl_connection):
                assert isinstance(conn._sock, ssl.SSLSocket), conn
                assert conn._sock.version().startswith("TLS")
            with source.reader._ctl_connection.cursor(pymysql.cursors.Cursor) as cur:
                cur.execute("SHOW SESSION STATUS LIKE 'Ssl_version'")
                assert cur.fetchone()[1].startswith("TLS")
        finally:
            source.close()


def test_changes_stream_over_tls_and_an_idle_poll_returns():
    """The binlog over TLS: every change arrives, and a poll with nothing to read returns
    after its timeout (it hung in a blocking TLS read: the idle check took the TLS
    layer's "want read" for data waiting)."""
    with _tls_server() as server:
        dsn = server.create_database("shop")
        with server.connect("shop") as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE t (id int PRIMARY KEY, note varchar(50))")
        source = MySQLSource(dsn, ["shop.t"], server_id=4702, snapshot="never")
        source.open(None)
        result: dict = {}

        def read() -> None:
            got: list = []
            for n in range(4):
                with server.connect("shop") as conn, conn.cursor() as cur:
                    cur.execute("INSERT INTO t VALUES (%s, 'a'), (%s, 'b')", (2 * n, 2 * n + 1))
                deadline = time.monotonic() + 30
                while len(got) < 2 * (n + 1) and time.monotonic() < deadline:
                    got += [e.after["id"] for e in source.poll(0.5) if isinstance(e, ChangeEvent)]
            started = time.monotonic()
            source.poll(0.5)  # nothing to read
            result.update(got=got, idle=time.monotonic() - started)

        reader = threading.Thread(target=read, daemon=True)
        try:
            reader.start()
            reader.join(90)
            assert not reader.is_alive(), "poll hung on the TLS connection"
            assert result["got"] == list(range(8))
            assert result["idle"] < 10, result
        finally:
            if not reader.is_alive():
                source.close()
