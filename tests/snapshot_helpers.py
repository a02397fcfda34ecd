"""Shared by the tests/test_snapshot_*.py files: rebuild a table from a file sink's
events, and a writer that hits the rows of the chunk being copied."""

from __future__ import annotations

import random
import threading
import time

import orjson


def rebuild(events: list[dict], table: str, key: str = "id") -> dict:
    """The table's rows (key -> row) after applying ``events`` in order."""
    state: dict = {}
    for e in events:
        if e["source"].get("table") != table:
            continue
        op = e["op"]
        if op == "d":
            state.pop(e["before"][key] if e["before"] else e["key"][key], None)
        elif op in ("c", "r", "u"):
            if op == "u" and e["before"] and e["before"].get(key) is not None \
                    and e["before"][key] != e["after"][key]:
                state.pop(e["before"][key], None)
            state[e["after"][key]] = e["after"]
        elif op == "t":
            state.clear()
    return state


def same_ids_same_content(events: list[dict]) -> int:
    """Assert an id is never reused for another event; the number of repeats."""
    seen: dict[str, bytes] = {}
    repeats = 0
    for e in events:
        body = orjson.dumps({k: e[k] for k in ("op", "before", "after", "key")}, option=orjson.OPT_SORT_KEYS)
        if e["id"] in seen:
            assert seen[e["id"]] == body, f"id {e['id']} reused for another event"
            repeats += 1
        seen[e["id"]] = body
    return repeats


class ChunkHitter:
    """Commits small transactions that update, delete, insert and re-key rows at the
    keys ``current()`` says are being copied (even ids exist at the start; inserts and
    new keys use odd ids, so they never collide)."""

    def __init__(self, execute, current, chunk: int, seed: int, pause: float = 0.002) -> None:
        self.execute = execute     # execute(list of (sql, params)) in one transaction
        self.current = current     # -> the last key copied (int) or None
        self.chunk = chunk
        self.random = random.Random(seed)
        self.pause = pause
        self.stop = threading.Event()
        self.done = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        rnd = self.random
        try:
            while not self.stop.is_set():
                base = self.current() or 0
                statements = []
                for _ in range(rnd.randint(1, 4)):
                    target = base + rnd.randint(0, self.chunk * 2)
                    kind = rnd.random()
                    if kind < 0.5:
                        statements.append(("UPDATE snap SET v = v + 1, note = %s WHERE id = %s",
                                           (f"w{rnd.random():.6f}", target)))
                    elif kind < 0.65:
                        statements.append(("DELETE FROM snap WHERE id = %s", (target,)))
                    elif kind < 0.85:
                        odd = target | 1
                        statements.append(("INSERT INTO snap (id, v, note) VALUES (%s, 0, 'new')"
                                           " ON CONFLICT DO NOTHING", (odd,)))
                    else:
                        odd = (target + rnd.randint(1, self.chunk)) | 1
                        statements.append(("UPDATE snap SET id = %s WHERE id = %s AND NOT EXISTS"
                                           " (SELECT 1 FROM snap WHERE id = %s)", (odd, target, odd)))
                self.execute(statements)
                self.done += 1
                time.sleep(self.pause)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def __enter__(self) -> ChunkHitter:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(30)


def read_complete(path) -> list[dict]:
    """A JSON-lines file sink's events, without a last line still being written."""
    try:
        text = open(path, "rb").read()
    except FileNotFoundError:
        return []
    out = []
    for line in text.split(b"\n")[:-1]:  # the part after the last newline is still being written
        if not line:
            continue
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            # a batch cut by SIGKILL (never acknowledged, so delivered again), then the next
            # run's first event on the same line: keep that one
            start = line.rfind(b'{"id":')
            if start > 0:
                out.append(orjson.loads(line[start:]))
    return out


class CopyUnderKills:
    """``cdc run CONFIG`` processes for the SIGKILL-mid-copy tests: ``start`` one (with a
    crash point, it kills itself there: ``cdc/faults.py``), ``copied`` reads the copy's
    last key from the checkpoint (-1: done), ``kill_loop`` kills ``kills`` times while the
    copy runs, every other time at the ``snapshot_chunk`` crash point."""

    def __init__(self, config, checkpoint, tmp_path, rnd: random.Random) -> None:
        self.config, self.checkpoint, self.tmp_path, self.rnd = config, checkpoint, tmp_path, rnd
        self.runs: list[str] = []
        self.procs: list = []

    def start(self, crash_at: str | None = None):
        import os
        import subprocess
        import sys
        log = open(self.tmp_path / f"run{len(self.runs)}.log", "wb")
        self.runs.append(log.name)
        env = {k: v for k, v in os.environ.items() if k != "CDC_CRASH_AT"}
        if crash_at:
            env["CDC_CRASH_AT"] = crash_at
        self.procs.append(subprocess.Popen([sys.executable, "-m", "cdc", "run", str(self.config)], stdout=log,
                                           stderr=log, env=env))
        return self.procs[-1]

    def copied(self) -> int | None:
        try:
            position = orjson.loads(self.checkpoint.read_bytes())["position"]
        except (OSError, ValueError):
            return None
        queue = position.get("snapshot", {}).get("queue", [])
        return queue[0]["after"][0] if queue and queue[0]["after"] else (None if queue else -1)

    def kill_loop(self, proc, kills: int, wait_for):
        """Kill ``kills`` times (returns the running process): at random moments after the
        checkpoint moved, and every other time at the crash point (a chunk handed to the
        sink, its progress not saved)."""
        import os
        import signal
        copied = self.copied
        for n in range(1, kills + 1):
            if n % 2 == 0:
                assert proc.wait(120) == -signal.SIGKILL
                assert "crash point snapshot_chunk reached" in open(self.runs[-1]).read()
            else:
                before = copied() or 0
                wait_for(lambda before=before: (copied() or 0) > before or copied() == -1, 60,
                         "progress of this run")
                time.sleep(self.rnd.uniform(0.0, 0.3))
                assert copied() != -1, "the copy finished before every kill: make it longer"
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
            print(f"kill {n}{' (crash point)' if n % 2 == 0 else ''}: checkpoint says copied up to key {copied()}")
            proc = self.start(f"snapshot_chunk:{self.rnd.randint(1, 4)}" if n % 2 else None)
        return proc
