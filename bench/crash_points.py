"""The cost of the crash points (cdc/faults.py) when ``CDC_CRASH_AT`` is unset.

    .venv/bin/python bench/crash_points.py [--runs 5] [--base REV]

Two measurements, in the same run:

1. The hook statement alone (``if crash_point is not None: crash_point("...")`` with
   ``crash_point = None``), timed with ``timeit`` against an empty statement, and the
   number of hooks the engine passes per event on this workload.
2. pg_bench's engine child (the 400k workload, full engine into the ``discard`` sink)
   with this tree's ``cdc`` and with ``cdc`` as of ``--base`` (default: the commit
   before the crash points, found by ``git log``), runs alternated so that machine
   noise hits both alike.  Reported: the median rows/s of each and their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import timeit
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))  # the test servers
sys.path.insert(0, str(HERE))

import pg_bench  # noqa: E402


def hook_cost() -> tuple[float, float]:
    """Nanoseconds per hook statement, and per empty statement (``pass``)."""
    setup = "crash_point = None"
    n = 5_000_000
    hook = min(timeit.repeat('if crash_point is not None: crash_point("after_ack")', setup, number=n, repeat=5))
    empty = min(timeit.repeat("pass", setup, number=n, repeat=5))
    return hook / n * 1e9, empty / n * 1e9


def base_commit() -> str:
    """The commit before the one that added cdc/faults.py."""
    added = subprocess.run(["git", "log", "--diff-filter=A", "--format=%H", "--", "cdc/faults.py"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    if not added:  # not committed yet: compare with HEAD
        return "HEAD"
    return added[-1] + "~1"


def export(rev: str, into: Path) -> None:
    archive = subprocess.run(["git", "archive", rev, "cdc"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)


def child(tree: Path | None, dsn: str, slot: str) -> tuple[float, str]:
    env = dict(os.environ)
    env.pop("CDC_CRASH_AT", None)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    which = subprocess.run([sys.executable, "-c", "import cdc, cdc.engine.runner as r; print(r.__file__)"],
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    old = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        _, read, _, _ = pg_bench.run_child([sys.executable, str(HERE / "pg_bench.py"), "--child", dsn, slot, "bench"])
    finally:
        os.environ.clear()
        os.environ.update(old)
    return pg_bench.TOTAL / read, which


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--base", default=None, help="git revision to compare with")
    args = parser.parse_args()
    hook, empty = hook_cost()
    print(f"hook statement: {hook:.1f} ns (an empty statement: {empty:.1f} ns)", file=sys.stderr)
    base = args.base or base_commit()
    import psycopg

    from servers import PostgresServer
    with tempfile.TemporaryDirectory() as tmp, PostgresServer() as server:
        before = Path(tmp) / "base"
        before.mkdir()
        export(base, before)
        os.chdir(tmp)  # no cdc on the children's path but the one chosen
        dsn = server.create_database("bench")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, status varchar(20),"
                         " amount numeric(12,2), note varchar(200), created_at timestamp)")
            conn.execute("CREATE PUBLICATION bench FOR TABLE orders")
            slots = [f"s{i}" for i in range(2 * args.runs)]
            for slot in slots:
                conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
            print(f"writing the 400k workload ({pg_bench.TOTAL} row changes) ...", file=sys.stderr)
            pg_bench.workload(dsn)
        ours, theirs = [], []
        for i in range(args.runs):
            first, second = (None, before) if i % 2 == 0 else (before, None)
            for tree in (first, second):
                rate, which = child(tree, dsn, slots.pop())
                (theirs if tree is not None else ours).append(rate)
                label = f"{base} " if tree is not None else "this tree"
                print(f"run {i + 1}: {label:>12} {rate:>9,.0f} rows/s  ({which})", file=sys.stderr)
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"\ncrash points, CDC_CRASH_AT unset, {pg_bench.TOTAL:,} changes, median of {args.runs}:")
    print(f"  the hook statement:            {hook:6.1f} ns  (empty statement {empty:.1f} ns)")
    print(f"  engine, this tree:             {a:>9,.0f} rows/s")
    print(f"  engine, {base:<22} {b:>9,.0f} rows/s")
    print(f"  ratio this tree / base:        {a / b:.3f}")


if __name__ == "__main__":
    main()
