"""On-demand snapshot requests, as files in the source's ``state_dir``.

``cdc snapshot`` needs no write access to the source database: it writes
``<state_dir>/<source>.snapshots/<id>.request`` (JSON: id, table, where) or
``<id>.cancel``; the running ``cdc run`` looks at the directory about once a second,
takes the files (deletes them) and queues or cancels the copy.  What is queued is
part of the checkpoint from then on, so a request survives a restart once taken.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path

__all__ = ["request_dir", "submit", "cancel", "take"]

log = logging.getLogger("cdc.snapshot")


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
    _write(request_dir(state_dir, source) / f"{snapshot_id}.cancel", {"id": snapshot_id})


def take(state_dir: Path, source: str) -> tuple[list[dict], list[str]]:
    """The waiting requests (oldest first) and cancellations, removed from the directory."""
    directory = request_dir(state_dir, source)
    if not directory.is_dir():
        return [], []
    requests, cancels = [], []
    for path in sorted(directory.iterdir()):
        if path.name.startswith("."):
            continue
        if path.suffix == ".request":
            try:
                requests.append(json.loads(path.read_text()))
            except ValueError as exc:
                log.error("snapshot request %s is not valid JSON (%s): ignored", path, exc)
        elif path.suffix == ".cancel":
            cancels.append(path.stem)
        else:
            continue
        path.unlink(missing_ok=True)
    requests.sort(key=lambda r: r.get("requested_at") or 0)  # ids of the same second sort at random
    return requests, cancels
