"""Memory of an initial snapshot: a table of 1 kB rows copied by ``cdc run`` (a real
process) stays within the bound, because memory follows the chunk size and the
in-flight limit, not the table size.

The default run copies 200,000 rows (a few seconds); ``CDC_SNAPSHOT_MEMORY_ROWS=2000000``
runs the issue's full size (2,000,000 rows of 1 kB, about 2 GB)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import yaml

from pgutil import sql


def watch_peak_rss(proc: subprocess.Popen, deadline: float) -> int:
    """The process's peak RSS in KiB (``VmHWM``, polled until it exits).  Not
    ``wait4``'s ``ru_maxrss``: that one counts the forked copy of this (large) test
    process from before the child's exec."""
    peak = 0
    while proc.poll() is None:
        assert time.time() < deadline, "the copy did not finish"
        try:
            for line in open(f"/proc/{proc.pid}/status"):
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.05)
    return peak


ROWS = int(os.environ.get("CDC_SNAPSHOT_MEMORY_ROWS", "200000"))
BOUND_MIB = 200
LAUNCHER = ("import os, subprocess, sys\n"
            "proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
            "_, status, usage = os.wait4(proc.pid, 0)\n"
            "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)\n")


def test_peak_rss_of_a_large_initial_snapshot(pg_database, tmp_path):
    sql(pg_database, "CREATE TABLE big (id bigint PRIMARY KEY, payload text NOT NULL)",
        "ALTER TABLE big ALTER payload SET STORAGE EXTERNAL",  # 1 kB rows, not compressed
        f"INSERT INTO big SELECT g, repeat(md5(g::text), 31) || lpad(g::text, 32, 'x')"
        f" FROM generate_series(1, {ROWS}) g")
    raw = {"sources": {"db": {"type": "postgres", "dsn": pg_database, "tables": ["public.big"],
                              "snapshot": "initial_only",
                              "checkpoint": {"type": "file", "path": "state/db.json"}}},
           "pipelines": {"all": {"source": "db", "sinks": [{"type": "discard"}]}}}
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump(raw))
    start = time.perf_counter()
    # cdc is started by a small launcher that reports its peak RSS: a child started straight from
    # this pytest process would inherit pytest's peak in ru_maxrss (the kernel carries the RSS
    # high-water mark of the pre-exec image over exec), which after a few hundred tests is itself
    # hundreds of MiB.  The launcher's own image is small.
    proc = subprocess.run([sys.executable, "-c", LAUNCHER, sys.executable, "-m", "cdc", "run", str(path)],
                          capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    log = proc.stderr
    code, maxrss_kib = (int(v) for v in proc.stdout.split()[-2:])
    assert code == 0, log[-3000:]
    assert "snapshot initial of public.big done" in log, log[-3000:]
    peak = maxrss_kib / 1024
    print(f"{ROWS:,} rows of 1 kB in {seconds:.1f}s ({ROWS / seconds:,.0f} rows/s); peak RSS {peak:.0f} MiB")
    assert peak <= BOUND_MIB
