"""On-demand snapshot requests, as files in the source's ``state_dir``.

``cdc snapshot`` needs no write access to the source database: it writes
``<state_dir>/<source>.snapshots/<id>.request`` (JSON: id, table, where) or
``<id>.cancel``; the running ``cdc run`` looks at the directory about once a second,
takes the files and queues or cancels the copy.  A taken file is renamed
``<id>.request.taken`` (``<id>.cancel.taken``), not deleted: the copy is in the
checkpoint only from its next save, and a process killed before it would lose the
request.  A copy's file goes when the copy ends (finished, cancelled, dropped); at the
next start ``retake`` puts back the files the checkpoint does not hold.  ``cdc snapshot
--list`` shows such a request as taken by a run that stopped (``taken_requests``), and
``--cancel`` removes it (``drop_taken``) while no ``cdc run`` of the source runs.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path

__all__ = ["request_dir", "submit", "cancel", "take", "ended", "retake", "waiting", "taken_requests",
           "cancels_asked", "drop_taken"]

log = logging.getLogger("cdc.snapshot")
TAKEN = ".taken"


def request_dir(state_dir: Path, source: str) -> Path:
    return Path(state_dir) / f"{source}.snapshots"


def _write(path: Path, body: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(body))
    os.replace(tmp, path)


def submit(state_dir: Path, source: str, table: str, where: str | None = None) -> str:
    """Queue a snapshot of ``table``; returns its id."""
    snapshot_id = time.strftime("%Y%m%d%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
    _write(request_dir(state_dir, source) / f"{snapshot_id}.request",
           {"id": snapshot_id, "table": table, "where": where, "requested_at": time.time()})
    return snapshot_id


def cancel(state_dir: Path, source: str, snapshot_id: str) -> None:
    _write(request_dir(state_dir, source) / f"{snapshot_id}.cancel", {"id": snapshot_id, "requested_at": time.time()})


def take(state_dir: Path, source: str) -> tuple[list[dict], list[str]]:
    """The waiting requests (oldest first) and cancellations, renamed ``<name>.taken``."""
    directory = request_dir(state_dir, source)
    if not directory.is_dir():
        return [], []
    requests, cancels = [], []
    for path in sorted(directory.iterdir()):
        if path.name.startswith("."):
            continue
        if path.suffix == ".request":
            problem: str | None = None
            try:
                body = json.loads(path.read_text())
            except ValueError as exc:
                body, problem = None, f"is not valid JSON ({exc})"
            if problem is None and not isinstance(body, dict):
                problem = "is not a JSON object"
            if problem:
                log.error("snapshot request %s %s: ignored (make requests with cdc snapshot)", path, problem)
                path.unlink(missing_ok=True)
                continue
        elif path.suffix != ".cancel":
            continue
        try:
            os.replace(path, path.with_name(path.name + TAKEN))
        except OSError as exc:  # e.g. a read-only state_dir: left for the next look
            log.warning("cannot take snapshot request %s: %s", path, exc)
            continue
        if path.suffix == ".cancel":
            cancels.append(path.stem)
        else:
            body["id"] = path.stem  # the file's name: the taken file goes by it when the copy ends
            requests.append(body)
    # ids of the same second sort at random
    requests.sort(key=lambda r: r["requested_at"] if isinstance(r.get("requested_at"), (int, float)) else 0)
    return requests, cancels


def ended(state_dir: Path, source: str, snapshot_id: str) -> None:
    """The copy ``snapshot_id`` ended (finished, cancelled or dropped): its request is done."""
    (request_dir(state_dir, source) / f"{snapshot_id}.request{TAKEN}").unlink(missing_ok=True)


def retake(state_dir: Path, source: str, saved: set[str] | None) -> list[tuple[str, str]]:
    """At a start, with ``saved`` the ids of the copies in the checkpoint: the requests
    taken by an earlier process that the checkpoint does not hold are put back to be
    taken again, and so are the cancels of copies it still holds; the other taken files
    go.  ``saved`` None (no checkpoint: reset, or started over with when_needed): every
    taken file goes, as the copies they were for are forgotten with the checkpoint.
    Returns the (id, "request" or "cancel") put back."""
    directory = request_dir(state_dir, source)
    if not directory.is_dir():
        return []
    back = []
    for path in sorted(directory.glob(f"*{TAKEN}")):
        name = path.name[:-len(TAKEN)]
        snapshot_id, kind = name.rsplit(".", 1) if "." in name else (name, "")
        if saved is None:
            path.unlink(missing_ok=True)
        elif (kind == "request" and snapshot_id not in saved) or (kind == "cancel" and snapshot_id in saved):
            os.replace(path, directory / name)
            back.append((snapshot_id, kind))
        elif kind != "request":  # a request the checkpoint holds stays until its copy ends
            path.unlink(missing_ok=True)
    return back


def _bodies(directory: Path, suffix: str) -> list[dict]:
    """The requests of the files named ``<id><suffix>``, each with its id (oldest first); a
    file that is not a request is left out (``take`` says so)."""
    rows = []
    for path in sorted(directory.glob(f"*{suffix}")) if directory.is_dir() else []:
        if path.name.startswith("."):
            continue
        try:
            body = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(body, dict):
            rows.append({**body, "id": path.name[:-len(suffix)]})
    rows.sort(key=lambda r: r["requested_at"] if isinstance(r.get("requested_at"), (int, float)) else 0)
    return rows


def waiting(state_dir: Path, source: str) -> list[dict]:
    """The requests not taken yet."""
    return _bodies(request_dir(state_dir, source), ".request")


def taken_requests(state_dir: Path, source: str) -> list[dict]:
    """The requests taken by a ``cdc run``: until their copy ends, and, when that process was
    killed before its checkpoint held the copy, until the next start takes them again."""
    return _bodies(request_dir(state_dir, source), f".request{TAKEN}")


def cancels_asked(state_dir: Path, source: str, taken: bool) -> set[str]:
    """The ids of the copies whose cancel waits to be taken, and with ``taken`` (no process
    runs) those taken by a run that stopped: ``retake`` puts back the ones its checkpoint
    did not see."""
    directory = request_dir(state_dir, source)
    if not directory.is_dir():
        return set()
    return {p.name[:p.name.rindex(".cancel")] for p in directory.iterdir()
            if not p.name.startswith(".") and (p.name.endswith(".cancel") or taken and p.name.endswith(f".cancel{TAKEN}"))}


def drop_taken(state_dir: Path, source: str, snapshot_id: str) -> bool:
    """Forget a request taken by a run that stopped (the caller holds the source's lock and
    made sure the checkpoint does not hold its copy): the next start does not take it again.
    False when there was none."""
    directory = request_dir(state_dir, source)
    path = directory / f"{snapshot_id}.request{TAKEN}"
    if not path.exists():
        return False
    path.unlink()
    for name in (f"{snapshot_id}.cancel", f"{snapshot_id}.cancel{TAKEN}"):
        (directory / name).unlink(missing_ok=True)
    return True
