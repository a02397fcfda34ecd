"""MySQL/MariaDB source benchmark: the 400k workload, catch-up mode (../shared/perf-anchors.md).

Writes 200 transactions of 1,000 INSERTs and 200 of 1,000 UPDATEs into a private MariaDB,
then times, each in its own process, over TCP 127.0.0.1, from the same start position:

- ``mysqlbinlog``: ``mysqlbinlog -R --base64-output=DECODE-ROWS --verbose > /dev/null``;
- ``library``: plain python-mysql-replication, ``for ev in stream: for row in ev.rows``;
- ``cdc-poll``: ``MySQLSource.poll()`` building ChangeEvents, handed to a ``discard`` sink that
  serialises each one to JSON (same thread);
- ``cdc-runner``: the whole ``SourceRunner`` (tracker, sink thread) with a ``discard`` sink
  that serialises every event to JSON;
- ``cli-discard`` and ``cli-file``: ``cdc run CONFIG`` as a user runs it, timed from process
  start to the 400,000th acknowledged change (``cdc_source_events_acknowledged`` scraped from
  ``/metrics``, as ``debezium_bench.py`` does), with a file checkpoint, the metrics endpoint on,
  and the sink's defaults: ``discard``, or ``file`` (JSON Lines, fsync on) under ``--dir``.

``--server defaults`` (the default) runs MariaDB with its own defaults (annotated row events
on, CRC32 checksums, no strict GTID mode, ...) except for what cdc requires (``log_bin``,
``binlog_format=ROW``, ``binlog_row_metadata=FULL``, a ``server_id``); ``--server tests`` uses
the settings of ``tests/servers/mariadb.py``.

Reports rows/s (median of ``--runs``, with the spread), peak RSS, and the ratios against the
plain library measured in the same run (its rate is timed after its imports: the CLI ratios
count cdc's start-up, not the library's).  Exits 1 when the reader (``cdc-poll``) is under 8x,
``cli-discard`` under 10x (issue 13), or ``cli-file`` under 0.8x ``cli-discard`` (same run,
medians of the per-run ratios).
Usage: ``.venv/bin/python bench/mysql_bench.py [--runs 3] [--server defaults|tests] [--only a,b]``
(``--only`` picks among library, cdc-poll, cdc-runner, cli-discard, cli-file and mysqlbinlog).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the test servers
sys.path.insert(0, str(Path(__file__).resolve().parent))
from debezium_bench import acknowledged  # noqa: E402 - cdc's acknowledged count from /metrics

ROWS = 400_000
TX_ROWS = 1_000
CLI_TIMEOUT = 600.0  # seconds a `cdc run` may take before the bench gives up on it
# --server defaults: MariaDB's own defaults, but for what cdc requires (preflight refuses to start
# without them) and the test server's address settings.
REQUIRED = {"log_bin": "binlog", "binlog_format": "ROW", "binlog_row_metadata": "FULL", "server_id": "1"}
SHOWN = ("binlog_annotate_row_events", "binlog_checksum", "gtid_strict_mode", "binlog_format",
         "binlog_row_image", "binlog_row_metadata", "log_slave_updates", "innodb_flush_log_at_trx_commit")


def server_settings(mode: str) -> dict:
    """The overrides of tests/servers' MariaDB settings for ``--server``."""
    from servers import MariaDBServer

    if mode == "tests":
        return {}
    keep = {"bind_address", "skip_name_resolve", "character_set_server"}
    return {key: (REQUIRED.get(key) if key not in keep else value)
            for key, value in MariaDBServer.defaults.items()}


def write_workload(server, db: str) -> dict:
    """Creates the table, returns the start position, writes the 400k changes."""
    import random

    rng = random.Random(1)
    with server.connect(db) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, status varchar(20),"
                    " amount decimal(12,2), note varchar(200), created_at datetime)")
        cur.execute("SHOW BINARY LOGS")
        file, size = cur.fetchall()[-1][:2]
        cur.execute("SELECT @@global.gtid_binlog_pos")
        start = {"gtid": cur.fetchone()[0], "file": file, "pos": int(size)}
        for t in range(ROWS // 2 // TX_ROWS):
            rows = []
            for i in range(t * TX_ROWS + 1, (t + 1) * TX_ROWS + 1):
                note = "".join(rng.choice("abcdefghij klmnopqrstuvwxyz") for _ in range(rng.randint(30, 110)))
                rows.append((i, rng.randint(1, 50_000), "new", f"{rng.randint(100, 9_999_999) / 100:.2f}", note))
            cur.execute("BEGIN")
            cur.execute("INSERT INTO orders VALUES " + ", ".join(["(%s, %s, %s, %s, %s, NOW())"] * len(rows)),
                        [v for row in rows for v in row])
            cur.execute("COMMIT")
        for t in range(ROWS // 2 // TX_ROWS):
            cur.execute("UPDATE orders SET status = 'shipped' WHERE id BETWEEN %s AND %s",
                        (t * TX_ROWS + 1, (t + 1) * TX_ROWS))
    return start


# ---- the readers, each run in a child process (python bench/mysql_bench.py --reader X) -----

def read_library(port: int, start: dict) -> int:
    from pymysqlreplication import BinLogStreamReader
    from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

    stream = BinLogStreamReader({"host": "127.0.0.1", "port": port, "user": "root", "password": "root"},
                                server_id=4301, blocking=True, is_mariadb=True, auto_position=start["gtid"],
                                only_events=[WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent],
                                enable_logging=False)
    n = 0
    for ev in stream:
        for _row in ev.rows:
            n += 1
        if n >= ROWS:
            break
    stream.close()
    return n


def read_cdc_poll(port: int, start: dict) -> int:
    from cdc.event import Commit
    from cdc.sinks.discard import DiscardSink
    from cdc.sources.mysql import MySQLSource

    source = MySQLSource(f"mysql://root:root@127.0.0.1:{port}/bench", ["bench.orders"], server_id=4302)
    sink = DiscardSink(serialize=True)
    source.open(start)
    while sink.events < ROWS:
        sink.write([item for item in source.poll(1.0) if item.__class__ is not Commit])
    source.close()
    return sink.events


def read_cdc_runner(port: int, start: dict) -> int:
    from cdc.config import parse_config
    from cdc.engine import SourceRunner, tune_process

    raw = {"sources": {"bench": {"type": "mysql", "dsn": f"mysql://root:root@127.0.0.1:{port}/bench",
                                 "tables": ["bench.orders"], "server_id": 4303, "checkpoint": {"type": "memory"},
                                 "snapshot": "never"}},
           "pipelines": {"all": {"source": "bench", "sinks": [{"type": "discard", "batch_size": 5000}]}}}
    config = parse_config(raw, Path("bench.yaml"), {})
    tune_process()  # as `cdc run` does
    runner = SourceRunner(config, "bench")
    runner.store.save(start)
    done = threading.Event()

    def watch() -> None:
        while runner.counts["received"] < ROWS:
            time.sleep(0.01)
        done.set()
        runner.request_stop()

    threading.Thread(target=watch, daemon=True).start()
    runner.run()
    return runner.counts["received"]


READERS = {"library": read_library, "cdc-poll": read_cdc_poll, "cdc-runner": read_cdc_runner}
CLI_SINKS = {"cli-discard": "discard", "cli-file": "file"}
ALL = ("library", "cdc-poll", "cdc-runner", *CLI_SINKS)


def run_cli(name: str, port: int, start: dict, workdir: Path, run: int, tree: str | None = None) -> dict:
    """``cdc run CONFIG`` from process start to the ROWS-th acknowledged change, then SIGTERM."""
    from servers import free_port

    metrics = free_port()
    tag = f"{name}-{run}{'-before' if tree else ''}"
    out = workdir / f"{tag}.jsonl"
    sink = {"type": "discard"} if CLI_SINKS[name] == "discard" else {"type": "file", "path": str(out)}
    checkpoint = workdir / f"{tag}.checkpoint.json"
    checkpoint.write_text(json.dumps({"source": "bench", "position": start}))
    config = {"sources": {"bench": {"type": "mysql", "dsn": f"mysql://root:root@127.0.0.1:{port}/bench",
                                    "tables": ["bench.orders"], "server_id": 4400 + 2 * run + bool(tree),
                                    "snapshot": "never",
                                    "checkpoint": {"type": "file", "path": str(checkpoint)}}},
              "pipelines": {"all": {"source": "bench", "sinks": [sink]}},
              "metrics": {"listen": f"127.0.0.1:{metrics}"}, "state_dir": str(workdir / f"{tag}.state")}
    path = workdir / f"{tag}.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    url = f"http://127.0.0.1:{metrics}/metrics"
    with open(workdir / f"{tag}.log", "wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "cdc", "run", str(path)], stdout=log,
                                stderr=subprocess.STDOUT, env=tree_env(tree),
                                cwd=tree)  # `-m` puts the working directory first on sys.path
        done, seen = None, 0
        try:
            while time.perf_counter() - started < CLI_TIMEOUT and proc.poll() is None:
                # every 100 ms until 90% are in, then every 10 ms: few scrapes, 10 ms resolution
                time.sleep(0.1 if seen < 0.9 * ROWS else 0.01)
                seen = acknowledged(url) or seen
                if seen >= ROWS:
                    done = time.perf_counter() - started
                    break
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            _, status, usage = os.wait4(proc.pid, 0)
    if done is None:
        tail = (workdir / f"{tag}.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"{name}: {seen:,} of {ROWS:,} changes acknowledged (status {status}):\n{tail}")
    if sink["type"] == "file":
        with open(out, "rb") as f:
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
        if lines < ROWS:
            raise SystemExit(f"{name}: {lines:,} lines in {out}, {ROWS:,} acknowledged")
        out.unlink()
    return {"rows": ROWS, "seconds": done, "rss_mb": usage.ru_maxrss / 1024,
            "cpu_s": usage.ru_utime + usage.ru_stime}


def child(reader: str, port: int, start: dict) -> None:
    import resource

    import pymysqlreplication  # noqa: F401 - imports are not part of the reading

    from cdc.engine import runner  # noqa: F401
    from cdc.sources import mysql  # noqa: F401

    t0 = time.perf_counter()
    n = READERS[reader](port, start)
    seconds = time.perf_counter() - t0
    print(json.dumps({"rows": n, "seconds": seconds,
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def tree_env(tree: str | None) -> dict | None:
    """The environment of a child that imports cdc from ``tree`` (None: this one's)."""
    return None if tree is None else {**os.environ, "PYTHONPATH": tree}


def run_child(reader: str, port: int, start: dict, tree: str | None = None) -> dict:
    out = subprocess.run([sys.executable, __file__, "--reader", reader, "--port", str(port),
                          "--start", json.dumps(start)], capture_output=True, text=True, check=True,
                         env=tree_env(tree))
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_mysqlbinlog(port: int, start: dict) -> dict:
    from servers import find_binary

    binary = find_binary("mysqlbinlog")
    t0 = time.perf_counter()
    with open(os.devnull, "wb") as devnull:
        proc = subprocess.Popen([binary, "--no-defaults", "-R", "--host=127.0.0.1", f"--port={port}", "--user=root",
                                 "--password=root", "--base64-output=DECODE-ROWS", "--verbose", "--to-last-log",
                                 f"--start-position={start['pos']}", start["file"]], stdout=devnull)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if status != 0:
        raise RuntimeError(f"mysqlbinlog failed ({status})")
    return {"rows": ROWS, "seconds": seconds, "rss_mb": usage.ru_maxrss / 1024}


def spread(values: list[float], fmt: str = "{:.1f}") -> str:
    return f"{fmt.format(min(values))}-{fmt.format(max(values))}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--server", choices=("defaults", "tests"), default="defaults")
    parser.add_argument("--only", default=",".join(ALL), help="readers to run (the library always runs)")
    parser.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                        help="where the file sink writes (tmpfs by default, as file_bench.py)")
    parser.add_argument("--before", metavar="TREE",
                        help="also run the cdc readers with cdc imported from TREE (a checkout of an older "
                             "commit), as before:<reader>, in the same runs")
    parser.add_argument("--reader")
    parser.add_argument("--port", type=int)
    parser.add_argument("--start")
    args = parser.parse_args()
    if args.reader:
        return child(args.reader, args.port, json.loads(args.start))

    from servers import MariaDBServer

    # An installed cdc has its modules byte-compiled (pip compiles them): so do the children here,
    # rather than compile every module at each start as PYTHONDONTWRITEBYTECODE=1 makes them.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    names = ["library"] + [n for n in args.only.split(",") if n in ALL and n != "library"]
    if args.before:
        names += [f"before:{n}" for n in names[1:]]
    with MariaDBServer(settings=server_settings(args.server)) as server, \
            tempfile.TemporaryDirectory(dir=args.dir, prefix="cdc-mysql-bench-") as tmp:
        server.create_database("bench")
        with server.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT VERSION(), " + ", ".join(f"@@global.{name}" for name in SHOWN))
            version, *values = cur.fetchone()
        print(f"MariaDB {version}, --server {args.server}: "
              + ", ".join(f"{k}={v}" for k, v in zip(SHOWN, values)), flush=True)
        t0 = time.perf_counter()
        start = write_workload(server, "bench")
        print(f"workload: {ROWS:,} row changes in {2 * ROWS // 2 // TX_ROWS} transactions, "
              f"written in {time.perf_counter() - t0:.0f}s; MariaDB over TCP 127.0.0.1, catch-up mode", flush=True)
        results: dict[str, list[dict]] = {name: [] for name in ("mysqlbinlog", *names)}
        for run in range(args.runs):
            if "mysqlbinlog" in args.only.split(","):
                results["mysqlbinlog"].append(run_mysqlbinlog(server.port, start))
            order = names if run % 2 == 0 else names[::-1]  # alternate, so no reader always goes first
            for name in order:
                reader, tree = (name.split(":", 1)[1], args.before) if name.startswith("before:") else (name, None)
                if reader in CLI_SINKS:
                    results[name].append(run_cli(reader, server.port, start, Path(tmp), run, tree))
                else:
                    results[name].append(run_child(reader, server.port, start, tree))
                r = results[name][-1]
                print(f"run {run + 1} {name}: {r['rows'] / r['seconds']:,.0f} rows/s", flush=True)
    results = {name: runs for name, runs in results.items() if runs}
    rates, ratios = {}, {}
    print(f"\n{'reader':<19} {'rows/s, median (' + str(args.runs) + ' runs)':>28} {'spread':>18} {'peak RSS MB':>12}")
    for name, runs in results.items():
        assert all(r["rows"] >= ROWS for r in runs), (name, runs)
        per_run = [r["rows"] / r["seconds"] for r in runs]
        rates[name] = statistics.median(per_run)
        print(f"{name:<19} {rates[name]:>28,.0f} {spread(per_run, '{:,.0f}'):>18} "
              f"{max(r['rss_mb'] for r in runs):>12.0f}")
    print()
    library = [r["rows"] / r["seconds"] for r in results["library"]]
    for name in results:
        if name == "library":
            continue
        # same-run ratios: each run's reader against that run's library
        ratios[name] = [r["rows"] / r["seconds"] / base for r, base in zip(results[name], library)]
        print(f"{name} / plain library, same run: median {statistics.median(ratios[name]):.2f}x "
              f"(runs: {', '.join(f'{x:.2f}' for x in ratios[name])})")
    checks = []
    if "cdc-poll" in ratios:
        checks.append(("the cdc reader >= 8x the plain library", statistics.median(ratios["cdc-poll"]) >= 8))
    if "cli-discard" in ratios:
        checks.append(("cdc run -> discard >= 10x the plain library",
                       statistics.median(ratios["cli-discard"]) >= 10))
    for prefix in ("before:", ""):
        if f"{prefix}cli-discard" in results and f"{prefix}cli-file" in results:
            file_vs_discard = [d["seconds"] / f["seconds"]
                               for f, d in zip(results[f"{prefix}cli-file"], results[f"{prefix}cli-discard"])]
            print(f"{prefix}cli-file / {prefix}cli-discard, same run: median {statistics.median(file_vs_discard):.2f}x "
                  f"(runs: {', '.join(f'{x:.2f}' for x in file_vs_discard)})")
    if "cli-discard" in results and "cli-file" in results:
        checks.append(("cdc run -> file >= 0.8x cdc run -> discard", statistics.median(file_vs_discard) >= 0.8))
    cpu = {name: [r["cpu_s"] for r in runs] for name, runs in results.items() if "cpu_s" in runs[0]}
    for name, values in cpu.items():
        print(f"{name}: CPU s (process, start to exit) median {statistics.median(values):.2f} ({spread(values, '{:.2f}')})")
    print()
    for what, ok in checks:
        print(f"target: {what}: {'met' if ok else 'NOT met'}")
    sys.exit(0 if all(ok for _, ok in checks) else 1)


if __name__ == "__main__":
    main()
