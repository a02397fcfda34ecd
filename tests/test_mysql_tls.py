"""MariaDB over TLS without ``ssl`` options in the DSN (pymysql's PREFERRED mode): a real
server with a self-signed certificate made with openssl.  The source builds that mode's
TLS context itself (``_Connection`` in ``cdc/sources/mysql/source.py``), without the CA
bundle it never uses: the binlog stream and the metadata connection still negotiate TLS
(the server reports a TLS version for the session)."""

from __future__ import annotations

import shutil
import ssl
import subprocess

import pymysql.cursors

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
