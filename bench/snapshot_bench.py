"""Initial-snapshot benchmark: cdc vs COPY TO STDOUT (PostgreSQL) and mariadb-dump --quick.

    .venv/bin/python bench/snapshot_bench.py [--rows 1000000] [--runs 3] [--chunk 10000]
        [--only postgres|mariadb] [--tree PATH ...] [--min-ratio 0.5] [--debezium]

The anchor table of ../shared/perf-anchors.md (orders: id, customer_id, status,
amount, note of 30-110 ASCII characters, created_at) with ``--rows`` rows, on
private servers, everything over TCP 127.0.0.1.  cdc runs ``cdc run`` with
``snapshot: initial_only`` into the ``discard`` sink (which serialises every event
to JSON), from process start to exit (start-up and slot creation included).
Anchors in the same run: ``psql -c "COPY (SELECT * FROM orders) TO STDOUT"`` and
``mariadb-dump --quick``, both to /dev/null.  Reported: rows/s (median of the
runs, min-max beside it), the ratios, and cdc's peak RSS.  ``--tree`` (repeatable) runs
``cdc`` from other checkouts too (``PYTHONPATH`` and working directory), alternating with
the anchor in every run: a before/after comparison in one run.  ``--debezium`` also runs
Debezium 3.6.1.Final's embedded engine (``bench/debezium``, as ``debezium_bench.py`` builds it)
with ``snapshot.mode=initial_only`` on its own slot of the same PostgreSQL, counting records into
a discard loop, timed from process start to its 1,000,000th record: a reference, not a target.
Each run also times ``snapshot_floor.py``: the least Python work per row (read the rows, build
and serialise each row's envelope with orjson; no engine), from process start; ``floor / anchor``
is the most any Python reader that emits one JSON event per row reaches on one core.
Exits 1 when the first tree's median ratio is below ``--min-ratio`` for a source.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the test servers

from servers import MariaDBServer, PostgresServer  # noqa: E402

NOTE = "substr(repeat(md5(g::text) || ' ', 4), 1, (30 + (g * 7919) % 81)::int)"


ROOT = Path(__file__).resolve().parent.parent
CPU: list[float] = []  # CPU seconds of each timed child, in order


def timed(argv: list[str], env: dict | None = None, cwd: Path | None = None) -> tuple[float, int]:
    """(seconds, peak RSS KiB) of a child process; its output goes to /dev/null.  Its CPU
    seconds (user + system) go to ``CPU`` (load-independent, unlike the wall time)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=cwd)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv[:3]} failed: {proc.stderr.read().decode()[-3000:]}")
    CPU.append(usage.ru_utime + usage.ru_stime)
    return seconds, usage.ru_maxrss


def cdc_run(source: dict, workdir: Path, tree: Path) -> tuple[float, int]:
    raw = {"sources": {"db": {**source, "snapshot": "initial_only",
                              "checkpoint": {"type": "file", "path": "state/db.json"}}},
           "pipelines": {"all": {"source": "db", "sinks": [{"type": "discard"}]}}}
    for old in workdir.glob("state/*"):
        old.unlink()
    path = workdir / "pipelines.yaml"
    path.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return timed([sys.executable, "-m", "cdc", "--log-level", "warning", "run", str(path)], env, tree)


def debezium_run(dsn: str, port: int, rows: int, workdir: Path, run: int) -> tuple[float, int]:
    """(seconds from process start to the ``rows``-th record, peak RSS KiB) of Debezium's
    initial snapshot (``bench/debezium``; it creates its own slot)."""
    import json

    from debezium_bench import JAR
    argv = ["java", "-jar", str(JAR), "--mode", "discard", "--host", "127.0.0.1", "--port", str(port),
            "--dbname", "bench", "--user", "postgres", "--slot", f"dbz_snap_{run}", "--publication", "dbz_snap",
            "--table", "public.orders", "--count", str(rows), "--snapshot-mode", "initial_only",
            "--offsets", str(workdir / f"dbz_snap_{run}.offsets.dat")]
    started = time.time()
    with open(workdir / "debezium.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log)
        out = proc.stdout.read()  # one JSON line once the N-th record is delivered, then EOF at exit
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    report = next((json.loads(line) for line in out.splitlines() if line.startswith(b"{")), None)
    if proc.returncode != 0 or report is None:
        tail = (workdir / "debezium.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"debezium failed (exit {proc.returncode}): {tail}")
    peak = usage.ru_maxrss
    return report["done_at"] - started, peak


def floor_run(kind: str, where: str) -> float:
    """Seconds of ``snapshot_floor.py`` (see the module's docstring)."""
    s, _ = timed([sys.executable, str(ROOT / "bench" / "snapshot_floor.py"), kind, where])
    CPU.pop()
    return s


def summary(rows: int, anchor_s: list[float], cdc_s: dict[Path, list[float]], rss: dict[Path, list[int]],
            cpu: dict[Path, list[float]], floor_s: list[float]) -> dict:
    anchor = [rows / s for s in anchor_s]
    out = {"anchor": statistics.median(anchor), "anchor_spread": (min(anchor), max(anchor)), "trees": {},
           "floor": statistics.median(rows / s for s in floor_s),
           "floor_ratio": statistics.median(a / s for a, s in zip(anchor_s, floor_s))}
    for tree, seconds in cdc_s.items():
        rates = [rows / s for s in seconds]
        ratios = [rows / s / a for s, a in zip(seconds, anchor)]  # each run against its own anchor
        out["trees"][tree] = {"cdc": statistics.median(rates), "cdc_spread": (min(rates), max(rates)),
                              "ratio": statistics.median(ratios), "ratio_spread": (min(ratios), max(ratios)),
                              "rss_mib": max(rss[tree]) / 1024,
                              "cpu_rate": rows / statistics.median(cpu[tree]),
                              "vs_floor": statistics.median(f / s for s, f in zip(seconds, floor_s))}
    return out


def bench_postgres(rows: int, runs: int, chunk: int, workdir: Path, trees: list[Path],
                   debezium: bool = False) -> dict:
    import psycopg
    server = PostgresServer()
    server.start()
    try:
        dsn = server.create_database("bench")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, status varchar(20),"
                         " amount numeric(12,2), note varchar(200), created_at timestamp)")
            conn.execute(f"INSERT INTO orders SELECT g, 1 + g % 10000, 'new', ((g * 37) % 9999999) / 100.0,"
                         f" {NOTE}, timestamp '2026-11-25 10:00' + g * interval '1 ms'"
                         f" FROM generate_series(1::bigint, {rows}) g")
            conn.execute("VACUUM ANALYZE orders")
            if debezium:
                conn.execute("CREATE PUBLICATION dbz_snap FOR TABLE orders")
        copy_s: list[float] = []
        floor_s: list[float] = []
        dbz_s: list[float] = []
        cdc_s: dict[Path, list[float]] = {t: [] for t in trees}
        rss: dict[Path, list[int]] = {t: [] for t in trees}
        cpu: dict[Path, list[float]] = {t: [] for t in trees}
        for i in range(runs):
            s, _ = timed(["psql", dsn, "-X", "-q", "-c", "COPY (SELECT * FROM orders) TO STDOUT"])
            copy_s.append(s)
            line = f"  postgres run {i + 1}: COPY {rows / s:,.0f} rows/s"
            floor_s.append(floor_run("postgres", dsn))
            line += f", python floor {rows / floor_s[-1]:,.0f} rows/s ({s / floor_s[-1]:.2f}x)"
            for tree in trees:
                with psycopg.connect(dsn, autocommit=True) as conn:  # each run copies with a new slot
                    for (slot,) in conn.execute("SELECT slot_name FROM pg_replication_slots").fetchall():
                        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                s, peak = cdc_run({"type": "postgres", "dsn": dsn, "tables": ["public.orders"],
                                   "snapshot_chunk_size": chunk}, workdir, tree)
                cdc_s[tree].append(s)
                rss[tree].append(peak)
                cpu[tree].append(CPU[-1])
                line += (f", cdc {tree} {rows / s:,.0f} rows/s ({rows / s / (rows / copy_s[-1]):.2f}x)"
                         f" {peak / 1024:.0f} MiB, {CPU[-1]:.1f} CPU s")
            if debezium:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    for (slot,) in conn.execute("SELECT slot_name FROM pg_replication_slots").fetchall():
                        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                s, peak = debezium_run(dsn, server.port, rows, workdir, i)
                dbz_s.append(s)
                line += f", Debezium {rows / s:,.0f} rows/s {peak / 1024:.0f} MiB"
            print(line, flush=True)
        out = summary(rows, copy_s, cdc_s, rss, cpu, floor_s)
        if dbz_s:  # cdc / Debezium, each run against its own Debezium run
            out["debezium"] = statistics.median(rows / s for s in dbz_s)
            for tree in trees:
                ratios = [d / s for s, d in zip(cdc_s[tree], dbz_s)]
                out["trees"][tree]["vs_debezium"] = (statistics.median(ratios), min(ratios), max(ratios))
        return out
    finally:
        server.close()


def bench_mariadb(rows: int, runs: int, chunk: int, workdir: Path, trees: list[Path]) -> dict:
    server = MariaDBServer()
    server.start()
    try:
        server.create_database("bench")
        with server.connect("bench") as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, status varchar(20),"
                        " amount decimal(12,2), note varchar(200), created_at datetime)")
            cur.execute(f"INSERT INTO orders SELECT seq, 1 + seq % 10000, 'new', ((seq * 37) % 9999999) / 100.0,"
                        f" substr(repeat(concat(md5(seq), ' '), 4), 1, 30 + (seq * 7919) % 81),"
                        f" timestamp '2026-11-25 10:00' + interval seq * 1000 microsecond"
                        f" FROM seq_1_to_{rows}")
            cur.execute("COMMIT")
        dump_s: list[float] = []
        floor_s: list[float] = []
        cdc_s: dict[Path, list[float]] = {t: [] for t in trees}
        rss: dict[Path, list[int]] = {t: [] for t in trees}
        cpu: dict[Path, list[float]] = {t: [] for t in trees}
        port = server.port
        for i in range(runs):
            s, _ = timed(["mariadb-dump", "--quick", "-h", "127.0.0.1", "-P", str(port), "-u", "root",
                          "-proot", "--protocol=tcp", "--skip-lock-tables", "bench", "orders"])
            dump_s.append(s)
            line = f"  mariadb run {i + 1}: mariadb-dump {rows / s:,.0f} rows/s"
            floor_s.append(floor_run("mariadb", str(port)))
            line += f", python floor {rows / floor_s[-1]:,.0f} rows/s ({s / floor_s[-1]:.2f}x)"
            for j, tree in enumerate(trees):
                s, peak = cdc_run({"type": "mysql", "dsn": server.dsn("bench", user="cdc"),
                                   "tables": ["bench.orders"], "server_id": 777 + i * len(trees) + j,
                                   "snapshot_chunk_size": chunk}, workdir, tree)
                cdc_s[tree].append(s)
                rss[tree].append(peak)
                cpu[tree].append(CPU[-1])
                line += (f", cdc {tree} {rows / s:,.0f} rows/s ({rows / s / (rows / dump_s[-1]):.2f}x)"
                         f" {peak / 1024:.0f} MiB, {CPU[-1]:.1f} CPU s")
            print(line, flush=True)
        return summary(rows, dump_s, cdc_s, rss, cpu, floor_s)
    finally:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=10_000)
    parser.add_argument("--only", choices=["postgres", "mariadb"])
    parser.add_argument("--tree", type=Path, action="append", help="a checkout to run cdc from (repeatable)")
    parser.add_argument("--min-ratio", type=float, default=0.5)
    parser.add_argument("--debezium", action="store_true", help="PostgreSQL: also time Debezium's initial snapshot")
    args = parser.parse_args()
    # An installed cdc has its modules byte-compiled (pip compiles them): so do the children here,
    # rather than compile every module at each start as PYTHONDONTWRITEBYTECODE=1 makes them.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    trees = [t.resolve() for t in (args.tree or [ROOT])]
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        if args.only in (None, "postgres"):
            if args.debezium:
                from debezium_bench import build_jar
                build_jar()
            results["PostgreSQL (anchor: COPY TO STDOUT)"] = bench_postgres(args.rows, args.runs, args.chunk,
                                                                            Path(tmp), trees, args.debezium)
        if args.only in (None, "mariadb"):
            results["MariaDB (anchor: mariadb-dump --quick)"] = bench_mariadb(args.rows, args.runs, args.chunk,
                                                                              Path(tmp), trees)
    print(f"\ninitial snapshot of {args.rows:,} rows, chunk {args.chunk:,}, median of {args.runs} (min-max):")
    print("| source | tree | anchor rows/s | cdc rows/s | cdc / anchor | cdc peak RSS | cdc rows per CPU s "
          "| python floor / anchor | cdc / python floor |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    missed = []
    for name, r in results.items():
        a_lo, a_hi = r["anchor_spread"]
        for tree, t in r["trees"].items():
            lo, hi = t["cdc_spread"]
            r_lo, r_hi = t["ratio_spread"]
            print(f"| {name} | {tree} | {r['anchor']:,.0f} ({a_lo:,.0f}-{a_hi:,.0f}) | {t['cdc']:,.0f} "
                  f"({lo:,.0f}-{hi:,.0f}) | {t['ratio']:.2f}x ({r_lo:.2f}-{r_hi:.2f}) | {t['rss_mib']:.0f} MiB | "
                  f"{t['cpu_rate']:,.0f} | {r['floor_ratio']:.2f}x ({r['floor']:,.0f} rows/s) | {t['vs_floor']:.2f}x |")
        if "debezium" in r:
            print(f"Debezium 3.6.1.Final initial snapshot (initial_only, discard): {r['debezium']:,.0f} rows/s; "
                  + "; ".join(f"cdc {tree} / Debezium {t['vs_debezium'][0]:.2f}x "
                              f"({t['vs_debezium'][1]:.2f}-{t['vs_debezium'][2]:.2f})" for tree, t in r["trees"].items()))
        first = r["trees"][trees[0]]
        if first["ratio"] < args.min_ratio:
            missed.append(f"{name}: {first['ratio']:.2f}x < {args.min_ratio}x")
    if missed:
        print("target missed: " + "; ".join(missed))
        raise SystemExit(1)


if __name__ == "__main__":
    main()
