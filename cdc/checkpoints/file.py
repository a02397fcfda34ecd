"""``file``: the position as JSON, replaced atomically (temp file, fsync, rename, fsync dir)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..config.model import Context
from ..errors import CheckpointError
from ..faults import crash_point
from . import UnreadableCheckpoint

__all__ = ["FileCheckpointStore", "UnreadableCheckpoint"]


class FileCheckpointStore:
    def __init__(self, path: str, context: Context | None = None) -> None:
        self.path = context.resolve_path(path) if context else Path(path)
        self.source = context.source if context else ""
        self._owner_checked = False
        self.database: str | None = None

    def bind_database(self, database: str) -> None:
        self.database = database

    def load(self) -> dict | None:
        data = self._read()
        return None if data is None else data.get("position")

    def _read(self) -> dict | None:
        """The file's content, refused when another source saved it: resuming from that
        source's position would skip (or repeat) this one's changes."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read checkpoint {self.path}: {getattr(exc, 'strerror', None) or exc}") from exc
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise UnreadableCheckpoint(self.path, self.source, text, "empty" if not text.strip()
                                       else f"not JSON: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("position"), dict):
            raise UnreadableCheckpoint(self.path, self.source, text, "no position in it")
        owner = data.get("source")
        if owner and self.source and owner != self.source:
            raise CheckpointError(
                f"checkpoint {self.path} holds the position of source {owner}, not of source {self.source}: "
                f"two sources must not share a checkpoint path. Give source {self.source} its own "
                f"checkpoint path; if source {owner} was renamed to {self.source}, set \"source\" in "
                f"the file to {self.source!r}")
        saved_in = data.get("database")
        if saved_in and self.database and saved_in != self.database:
            name = self.source or "NAME"
            raise CheckpointError(
                f"checkpoint {self.path} was saved reading database {saved_in}, but source {name} now reads "
                f"database {self.database}: resuming there from that position would skip the changes of "
                f"{self.database} up to it. Give source {name} its own checkpoint path (or restore its own "
                f"file); if {saved_in} was renamed to {self.database}, set \"database\" in the file to "
                f"{self.database!r}; to start over, `cdc checkpoint reset CONFIG --source {name}`")
        return data

    def saved_at(self) -> float | None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        saved_at = data.get("saved_at") if isinstance(data, dict) else None
        return saved_at if isinstance(saved_at, (int, float)) else None

    def save(self, position: dict) -> None:
        if self._owner_checked is not True:
            self._read()  # raises when another source owns the file
            self._owner_checked = True
        body = json.dumps({"source": self.source, **({"database": self.database} if self.database else {}),
                           "position": position, "saved_at": time.time()})
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                view = memoryview(body.encode())
                while view:  # a short write (the disk filled part-way) must not tear the file
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            if crash_point is not None: crash_point("checkpoint_write")  # noqa: E701 - crash point (cdc/faults.py)
            os.replace(tmp, self.path)
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            try:
                tmp.unlink(missing_ok=True)  # give back the space a partial temp file holds
            except OSError:
                pass
            raise CheckpointError(f"cannot write checkpoint {self.path}: {exc.strerror} (the file keeps the "
                                  f"position saved last, if any; delivery goes on; make {self.path.parent} "
                                  f"writable, with space)") from exc

    def reset(self) -> None:
        self.path.unlink(missing_ok=True)

    def close(self) -> None:
        pass
