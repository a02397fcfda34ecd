"""The least Python work a snapshot can do per row, timed from process start: the floor
under ``snapshot_bench.py``'s cdc figure.

    python bench/snapshot_floor.py postgres DSN
    python bench/snapshot_floor.py mariadb PORT

Reads the anchor table ``orders`` and, for each row, builds the JSON envelope cdc emits
(id from a blake2b digest of the row's text, ``op: "r"``, ``after``, ``key``, one shared
``source``, ``ts_ms``) and serialises it with orjson, then drops it: no engine, no
checkpoint, no sink thread, no type handling beyond this table's columns.  PostgreSQL:
``COPY (SELECT * FROM orders) TO STDOUT`` read with psycopg.  MariaDB: the ``mariadb``
client's ``--batch --quick`` output read from a pipe (the client parses the protocol on
the other core, so this is lower than any reader in the process).  Prints the rows read.
"""

from __future__ import annotations

import subprocess
import sys
import time
from hashlib import blake2b

import orjson


def envelopes(lines, source: dict, now: int) -> int:
    dumps = orjson.dumps
    n = 0
    for line in lines:
        f = line.decode().split("\t")
        k = int(f[0])
        dumps({"id": "r-000000000000-" + blake2b(line, digest_size=12).hexdigest(), "op": "r", "before": None,
               "after": {"id": k, "customer_id": int(f[1]), "status": f[2], "amount": f[3], "note": f[4],
                         "created_at": f[5].replace(" ", "T", 1)},
               "key": {"id": k}, "source": source, "ts_ms": now})
        n += 1
    return n


def postgres(dsn: str) -> int:
    import psycopg
    source = {"connector": "postgresql", "name": "db", "db": "bench", "schema": "public", "table": "orders",
              "snapshot": True, "lsn": 0, "txId": None, "ts_ms": int(time.time() * 1000)}
    n = 0
    rest = b""
    with psycopg.connect(dsn) as conn, conn.cursor().copy("COPY (SELECT * FROM orders) TO STDOUT") as copy:
        for block in copy:
            lines = (rest + bytes(block)).split(b"\n")
            rest = lines.pop()
            n += envelopes(lines, source, source["ts_ms"])
    return n


def mariadb(port: str) -> int:
    source = {"connector": "mysql", "name": "db", "db": "bench", "table": "orders", "snapshot": True,
              "file": "", "pos": 0, "row": 0, "gtid": None, "server_id": 1, "ts_ms": int(time.time() * 1000)}
    proc = subprocess.Popen(["mariadb", "-h", "127.0.0.1", "-P", port, "-u", "root", "-proot", "--protocol=tcp",
                             "--batch", "--quick", "--skip-column-names", "bench", "-e", "SELECT * FROM orders"],
                            stdout=subprocess.PIPE)
    n = 0
    rest = b""
    assert proc.stdout is not None
    while block := proc.stdout.read1(1 << 16):
        lines = (rest + block).split(b"\n")
        rest = lines.pop()
        n += envelopes(lines, source, source["ts_ms"])
    if proc.wait() != 0:
        raise SystemExit(f"mariadb exited {proc.returncode}")
    return n


if __name__ == "__main__":
    kind, where = sys.argv[1], sys.argv[2]
    print(postgres(where) if kind == "postgres" else mariadb(where))
