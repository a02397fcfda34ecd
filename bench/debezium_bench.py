"""cdc beside Debezium 3.6.1.Final: PostgreSQL -> discard and PostgreSQL -> Kafka, 400k workload, catch-up.

    .venv/bin/python bench/debezium_bench.py [--rounds 3] [--modes discard,kafka]

1. A private PostgreSQL (wal_level=logical) and, for ``kafka``, a private single-node Kafka broker
   (``tests/servers``), both on 127.0.0.1.
2. One pgoutput slot per (round, mode, system) is created, then the 400k workload of
   ../shared/perf-anchors.md is written: 200 transactions of 1,000 INSERTs into ``orders``, then 200
   transactions that each UPDATE 1,000 rows.  Every reader reads the same WAL over TCP.
3. For each round and mode, cdc and Debezium run one after the other on their own slots, in
   alternating order (cdc first in even rounds, Debezium first in odd ones):
   - cdc: ``cdc run CONFIG`` as a user runs it (a subprocess, from process start; file checkpoint,
     metrics endpoint on, ``snapshot: never`` as Debezium's ``no_data``), into a ``discard`` sink
     (every event serialised to JSON) or a ``kafka`` sink.
     Its ``/metrics`` (``cdc_source_events_acknowledged``) is scraped to see the 400,000th change
     acknowledged; then it gets SIGTERM.
   - Debezium: ``bench/debezium`` (``java -jar``, default JVM heap): the embedded engine Debezium
     Server runs, PostgreSQL connector, pgoutput, JSON without schemas, ``snapshot.mode=no_data``,
     default ``max.batch.size``/``max.queue.size``; ``discard`` counts the records, ``kafka`` follows
     Debezium Server's Kafka sink loop (send the batch, wait for every ack, mark the batch finished;
     acks=all, idempotence on).  It prints when it has delivered the 400,000th change, then exits.
   Each system writes to its own topic (one partition) of the same broker.
4. Reported per run and as medians: rows/s from process start to the 400,000th change delivered,
   CPU seconds of the process (user+system, start to exit, from wait4), peak RSS (ru_maxrss), and the
   ratios cdc / Debezium of the same round.  After a Kafka run the topic must hold every change.

Exits 1 when a target of issue 13 measured here is missed (medians of the per-round ratios):
PostgreSQL -> Kafka >= 5x Debezium (``--min-vs-debezium``), and cdc's PostgreSQL -> Kafka >= 0.8x
cdc's own PostgreSQL -> discard (``--min-kafka-vs-discard``; needs both modes).  Results also go to
bench/results/debezium_bench.json.  The jar is built with Maven when missing or stale
(``mvn -q -f bench/debezium/pom.xml package``; the dependencies are cached in ~/.m2).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "tests"))  # the test servers

DEBEZIUM_VERSION = "3.6.1.Final"
POM = BENCH / "debezium" / "pom.xml"
JAR = BENCH / "debezium" / "target" / "debezium-bench.jar"
PUBLICATION = "bench"
SYSTEMS = ("cdc", "debezium")
RUN_TIMEOUT = 900.0  # seconds one reader may take before the bench gives up on it
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    system: str
    mode: str
    round: int
    seconds: float            # process start -> the N-th change delivered
    rows_s: float
    cpu_s: float              # user + system, process start -> exit (wait4)
    cpu_at_done_s: float      # user + system when the N-th change was seen (/proc)
    peak_rss_mib: float       # ru_maxrss
    exit_s: float             # process start -> exit
    extra: dict = field(default_factory=dict)


# ---- workload -------------------------------------------------------------------------------

def workload(dsn: str, transactions: int, rows_per_tx: int) -> str:
    """``transactions`` x INSERT ``rows_per_tx`` rows, then as many UPDATEs of that many rows;
    returns the WAL position after the last commit."""
    import psycopg
    rnd = random.Random(1)
    with psycopg.connect(dsn) as conn:
        for t in range(transactions):
            with conn.cursor() as cur:
                rows = [(t * rows_per_tx + i, rnd.randint(1, 10_000), "new",
                         f"{rnd.randint(100, 99_999_99) / 100:.2f}",
                         "".join(rnd.choices("abcdefghijklmnopqrstuvwxyz ", k=rnd.randint(30, 110))))
                        for i in range(rows_per_tx)]
                cur.executemany("INSERT INTO orders VALUES (%s, %s, %s, %s, %s, now())", rows)
            conn.commit()
        for t in range(transactions):
            conn.execute("UPDATE orders SET status = 'shipped' WHERE id >= %s AND id < %s",
                         (t * rows_per_tx, (t + 1) * rows_per_tx))
            conn.commit()
        return conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]


# ---- child processes ------------------------------------------------------------------------

def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a live process (threads included)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return float("nan")


def reap(proc: subprocess.Popen, started: float, timeout: float) -> tuple[int, float, resource.struct_rusage]:
    """Wait for the child (killing it after ``timeout``): exit code, seconds since start, its rusage."""
    timer = threading.Timer(timeout, lambda: proc.poll() is None and proc.kill())
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.time() - started, usage


def acknowledged(url: str) -> int | None:
    """cdc_source_events_acknowledged from cdc's /metrics; None while it is not serving yet."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            body = resp.read().decode()
    except OSError:
        return None
    for line in body.splitlines():
        if line.startswith("cdc_source_events_acknowledged_total{"):
            return int(float(line.rsplit(" ", 1)[1]))
    return None


def run_cdc(mode: str, rnd: int, slot: str, dsn: str, bootstrap: str | None, total: int,
            workdir: Path) -> Run:
    from servers import free_port
    port = free_port()
    sink = {"type": "discard"} if mode == "discard" else \
        {"type": "kafka", "bootstrap_servers": bootstrap, "topic": f"cdc_r{rnd}"}
    config = {
        "sources": {"db": {"type": "postgres", "dsn": dsn, "tables": ["public.orders"], "slot": slot,
                           "publication": PUBLICATION, "create": False,
                           # the log only, as Debezium's snapshot.mode=no_data: the default
                           # (initial) would also copy the table's rows
                           "snapshot": "never",
                           "checkpoint": {"type": "file", "path": str(workdir / f"{slot}.checkpoint.json")}}},
        "pipelines": {"bench": {"source": "db", "sinks": [sink]}},
        "metrics": {"listen": f"127.0.0.1:{port}"},
        "state_dir": str(workdir / f"{slot}.state"),
    }
    path = workdir / f"{slot}.yaml"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    url = f"http://127.0.0.1:{port}/metrics"
    log = open(workdir / f"{slot}.log", "wb")
    started = time.time()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "cdc"), "run", str(path)],
                            stdout=log, stderr=subprocess.STDOUT)
    done_at, cpu_at_done, seen, scrapes = None, float("nan"), 0, 0
    try:
        while time.time() - started < RUN_TIMEOUT and proc.poll() is None:
            # scrape every 100 ms until 90% are in, then every 10 ms: few scrapes, 10 ms resolution
            time.sleep(0.1 if seen < 0.9 * total else 0.01)
            count = acknowledged(url)
            scrapes += 1
            if count is not None:
                seen = count
            if seen >= total:
                done_at = time.time()
                cpu_at_done = proc_cpu(proc.pid)
                break
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code, exit_s, usage = reap(proc, started, 120)
        log.close()
    if done_at is None:
        tail = (workdir / f"{slot}.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"cdc {mode} round {rnd}: {seen:,} of {total:,} changes acknowledged "
                         f"(exit {code}):\n{tail}")
    seconds = done_at - started
    return Run("cdc", mode, rnd, seconds, total / seconds, usage.ru_utime + usage.ru_stime, cpu_at_done,
               usage.ru_maxrss / 1024, exit_s, {"exit_code": code, "scrapes": scrapes})


def run_debezium(mode: str, rnd: int, slot: str, pg_port: int, bootstrap: str | None, total: int,
                 workdir: Path) -> Run:
    argv = ["java", "-jar", str(JAR), "--mode", mode, "--host", "127.0.0.1", "--port", str(pg_port),
            "--dbname", "bench", "--user", "postgres", "--slot", slot, "--publication", PUBLICATION,
            "--table", "public.orders", "--count", str(total),
            "--offsets", str(workdir / f"{slot}.offsets.dat"), "--topic-prefix", f"dbz_r{rnd}"]
    if bootstrap:
        argv += ["--bootstrap", bootstrap]
    log = open(workdir / f"{slot}.log", "wb")
    started = time.time()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log)
    report, cpu_at_done = None, float("nan")
    timer = threading.Timer(RUN_TIMEOUT, lambda: proc.poll() is None and proc.kill())
    timer.start()
    try:
        for line in proc.stdout:  # one JSON line when the N-th change is delivered
            if line.startswith(b"{"):
                cpu_at_done = proc_cpu(proc.pid)
                report = json.loads(line)
    finally:
        timer.cancel()
        code, exit_s, usage = reap(proc, started, 120)
        log.close()
    if report is None or code != 0:
        tail = (workdir / f"{slot}.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"debezium {mode} round {rnd} failed (exit {code}):\n{tail}")
    seconds = report["done_at"] - started
    return Run("debezium", mode, rnd, seconds, total / seconds, usage.ru_utime + usage.ru_stime, cpu_at_done,
               usage.ru_maxrss / 1024, exit_s,
               {"jvm_start_s": round(report["jvm_start"] - started, 3),
                "first_batch_s": round(report["first_at"] - started, 3), "batches": report["batches"],
                "json_bytes": report["json_bytes"]})


def topic_messages(bootstrap: str, topic: str) -> int:
    """Messages in the one partition of ``topic`` (its high watermark)."""
    from confluent_kafka import Consumer, TopicPartition
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "debezium-bench", "enable.auto.commit": False})
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=30)[1]
    finally:
        consumer.close()


def build_jar() -> None:
    """Build the jar when it is missing or older than its pom.xml or sources."""
    sources = [POM, *(POM.parent / "src").rglob("*.java")]
    if JAR.exists() and JAR.stat().st_mtime >= max(p.stat().st_mtime for p in sources):
        return
    print(f"building {JAR.relative_to(ROOT)} (Debezium {DEBEZIUM_VERSION} from Maven Central) ...",
          file=sys.stderr, flush=True)
    subprocess.run(["mvn", "-q", "-B", "-f", str(POM), "package"], check=True)


# ---- report ---------------------------------------------------------------------------------

def summarize(runs: list[Run], modes: list[str]) -> dict:
    out: dict = {}
    for mode in modes:
        by = {s: [r for r in runs if r.mode == mode and r.system == s] for s in SYSTEMS}
        rounds = sorted({r.round for r in by["cdc"]} & {r.round for r in by["debezium"]})
        pair = {n: {r.system: r for r in runs if r.mode == mode and r.round == n} for n in rounds}
        med = {s: {k: statistics.median(getattr(r, k) for r in by[s])
                   for k in ("rows_s", "cpu_s", "cpu_at_done_s", "peak_rss_mib")} for s in SYSTEMS}
        out[mode] = {
            "median": med,
            "ratio_rows_s": statistics.median(pair[n]["cdc"].rows_s / pair[n]["debezium"].rows_s for n in rounds),
            "ratio_rows_s_per_round": [round(pair[n]["cdc"].rows_s / pair[n]["debezium"].rows_s, 2)
                                       for n in rounds],
            "ratio_cpu_debezium_over_cdc": statistics.median(pair[n]["debezium"].cpu_s / pair[n]["cdc"].cpu_s
                                                             for n in rounds),
            "ratio_rss_debezium_over_cdc": statistics.median(
                pair[n]["debezium"].peak_rss_mib / pair[n]["cdc"].peak_rss_mib for n in rounds),
        }
    if "discard" in modes and "kafka" in modes:
        cdc = {(r.mode, r.round): r for r in runs if r.system == "cdc"}
        rounds = sorted({n for (_, n) in cdc})
        out["cdc_kafka_over_cdc_discard"] = statistics.median(
            cdc["kafka", n].rows_s / cdc["discard", n].rows_s for n in rounds)
    return out


def print_table(summary: dict, modes: list[str], total: int, rounds: int) -> None:
    print(f"\nPostgreSQL catch-up, {total:,} changes, medians of {rounds} round(s); ratio = median of the "
          "same-round ratios")
    print(f"{'path':<31}{'system':<10}{'rows/s':>10}{'CPU s':>9}{'CPU s@N':>9}{'peak RSS':>11}")
    names = {"discard": "PostgreSQL -> JSON -> discard", "kafka": "PostgreSQL -> Kafka"}
    for mode in modes:
        s = summary[mode]
        for system in SYSTEMS:
            m = s["median"][system]
            print(f"{names[mode] if system == 'cdc' else '':<31}{system:<10}{m['rows_s']:>10,.0f}"
                  f"{m['cpu_s']:>9.1f}{m['cpu_at_done_s']:>9.1f}{m['peak_rss_mib']:>7,.0f} MiB")
        print(f"{'':<31}cdc / Debezium rows/s {s['ratio_rows_s']:.2f}x (rounds: "
              f"{', '.join(f'{r}x' for r in s['ratio_rows_s_per_round'])}); Debezium / cdc CPU "
              f"{s['ratio_cpu_debezium_over_cdc']:.1f}x, peak RSS {s['ratio_rss_debezium_over_cdc']:.1f}x")
    if "cdc_kafka_over_cdc_discard" in summary:
        print(f"cdc: PostgreSQL -> Kafka / PostgreSQL -> discard: {summary['cdc_kafka_over_cdc_discard']:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default="discard,kafka", help="comma-separated: discard, kafka")
    parser.add_argument("--transactions", type=int, default=200,
                        help="INSERT (and as many UPDATE) transactions (default 200: the 400k workload)")
    parser.add_argument("--rows-per-tx", type=int, default=1000)
    parser.add_argument("--min-vs-debezium", type=float, default=5.0,
                        help="fail when cdc -> Kafka is below this many times Debezium -> Kafka (default 5)")
    parser.add_argument("--min-kafka-vs-discard", type=float, default=0.8,
                        help="fail when cdc -> Kafka is below this fraction of cdc -> discard (default 0.8)")
    args = parser.parse_args()
    # An installed cdc has its modules byte-compiled (pip compiles them): so do the children here,
    # rather than compile every module at each start as PYTHONDONTWRITEBYTECODE=1 makes them.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - {"discard", "kafka"}:
        parser.error("--modes takes discard and/or kafka")
    total = 2 * args.transactions * args.rows_per_tx
    build_jar()

    import psycopg

    from servers import KafkaServer, PostgresServer
    runs: list[Run] = []
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dbz-bench-")))
        pg = stack.enter_context(PostgresServer())
        kafka = stack.enter_context(KafkaServer()) if "kafka" in modes else None
        bootstrap = kafka.bootstrap if kafka else None
        dsn = pg.create_database("bench")
        with psycopg.connect(dsn, autocommit=True) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
            conn.execute("CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint,"
                         " status varchar(20), amount numeric(12,2), note varchar(200), created_at timestamp)")
            conn.execute(f"CREATE PUBLICATION {PUBLICATION} FOR TABLE orders")
            for n in range(args.rounds):
                for mode in modes:
                    for system in SYSTEMS:
                        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')",
                                     (f"{system}_{mode}_{n}",))
        if kafka:
            from confluent_kafka.admin import AdminClient, NewTopic
            topics = [t for n in range(args.rounds) for t in (f"cdc_r{n}", f"dbz_r{n}.public.orders")]
            admin = AdminClient({"bootstrap.servers": bootstrap})
            for future in admin.create_topics([NewTopic(t, 1, 1) for t in topics]).values():
                future.result(60)
            del admin  # its librdkafka thread would complain when the broker stops
        print(f"PostgreSQL {version}, Debezium {DEBEZIUM_VERSION}; writing the workload "
              f"({total:,} row changes) ...", file=sys.stderr, flush=True)
        workload(dsn, args.transactions, args.rows_per_tx)
        for n in range(args.rounds):
            order = SYSTEMS if n % 2 == 0 else SYSTEMS[::-1]
            for mode in modes:
                for system in order:
                    slot = f"{system}_{mode}_{n}"
                    if system == "cdc":
                        run = run_cdc(mode, n, slot, dsn, bootstrap, total, workdir)
                    else:
                        run = run_debezium(mode, n, slot, pg.port, bootstrap, total, workdir)
                    run.extra["load_1min_after"] = round(os.getloadavg()[0], 1)
                    if mode == "kafka":  # every change really is in the topic
                        topic = f"cdc_r{n}" if system == "cdc" else f"dbz_r{n}.public.orders"
                        run.extra["topic_messages"] = topic_messages(bootstrap, topic)
                        if run.extra["topic_messages"] < total:
                            raise SystemExit(f"{system} round {n + 1}: {run.extra['topic_messages']:,} messages "
                                             f"in {topic}, expected {total:,}")
                    runs.append(run)
                    print(f"round {n + 1} {mode:<7} {system:<8} {run.rows_s:>9,.0f} rows/s "
                          f"({run.seconds:.2f} s to the last change, exit at {run.exit_s:.2f} s), "
                          f"CPU {run.cpu_s:.1f} s ({run.cpu_at_done_s:.1f} s at the last change), "
                          f"peak RSS {run.peak_rss_mib:,.0f} MiB {run.extra}", file=sys.stderr, flush=True)

    summary = summarize(runs, modes)
    print_table(summary, modes, total, args.rounds)
    failures = []
    if "kafka" in modes and summary["kafka"]["ratio_rows_s"] < args.min_vs_debezium:
        failures.append(f"PostgreSQL -> Kafka: cdc is {summary['kafka']['ratio_rows_s']:.2f}x Debezium "
                        f"(target >= {args.min_vs_debezium}x)")
    if "cdc_kafka_over_cdc_discard" in summary and summary["cdc_kafka_over_cdc_discard"] < args.min_kafka_vs_discard:
        failures.append(f"PostgreSQL -> Kafka: cdc is {summary['cdc_kafka_over_cdc_discard']:.2f}x its own "
                        f"PostgreSQL -> discard (target >= {args.min_kafka_vs_discard}x)")
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "postgres": version,
               "debezium": DEBEZIUM_VERSION, "changes": total, "rounds": args.rounds, "load_average": os.getloadavg(),
               "summary": summary, "runs": [asdict(r) for r in runs], "failures": failures}
    out = BENCH / "results"
    out.mkdir(exist_ok=True)
    (out / "debezium_bench.json").write_text(json.dumps(results, indent=2) + "\n")
    for failure in failures:
        print(f"FAIL: {failure}")
    if not failures:
        print("PASS: every target measured here is met")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
