"""``file``: JSON Lines, flushed and fsynced before a batch is acknowledged."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..config.model import Context
from ..errors import TransientSinkError
from ..event import ChangeEvent
from ..templates import Template

__all__ = ["FileSink"]


class FileSink:
    """Appends one JSON event per line.  ``path`` may be a template such as
    ``out/{destination}.jsonl`` (see ``cdc.templates``)."""

    default_batch_size = 5000

    def __init__(self, path: str, fsync: bool = True, context: Context | None = None) -> None:
        self.template = Template(str(context.resolve_path(path) if context else Path(path)), "path")
        self.fsync = fsync
        self._files: dict[str, int] = {}

    def open(self) -> None:
        if self.template.is_constant:
            self._fd(self.template.text)

    def _fd(self, path: str) -> int:
        fd = self._files.get(path)
        if fd is None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._files[path] = fd
        return fd

    def write(self, events: Sequence[ChangeEvent]) -> None:
        chunks: dict[str, list[bytes]] = {}
        render = self.template.render
        for event in events:
            lines = chunks.get(path := render(event))
            if lines is None:
                lines = chunks[path] = []
            lines.append(event.to_json())
        try:
            for path, lines in chunks.items():
                fd = self._fd(path)
                data = b"\n".join(lines) + b"\n"
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if self.fsync:
                    os.fsync(fd)
        except OSError as exc:
            raise TransientSinkError(f"cannot write {exc.filename or path}: {exc.strerror}") from exc

    def close(self) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()
