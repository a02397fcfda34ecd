"""``file``: JSON Lines, flushed and fsynced before a batch is acknowledged.

Each line is serialized with its newline and the lines go to the file with
``os.writev`` (up to ``IOV_MAX`` at a time), without joining them into one buffer.
A batch either lands whole or not at all: when a write fails part-way (a full disk),
every file the batch touched is truncated back to where the batch started, so a retry
neither tears a line nor duplicates one.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from ..config.model import Context
from ..errors import PermanentSinkError, TransientSinkError
from ..event import ChangeEvent
from ..templates import Template, UnsafeValue, path_segment
from ._message import Content, body_of

__all__ = ["FileSink"]

log = logging.getLogger("cdc.sink")

# Failures no retry can fix: the path cannot be created or opened as it is.
_PERMANENT_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR, errno.EISDIR,
                               errno.EROFS, errno.ENAMETOOLONG, errno.EEXIST, errno.ELOOP})

_IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024


def write_lines(fd: int, lines: list[bytes]) -> None:
    """Write every byte of ``lines`` (each ending in a newline) with ``os.writev``."""
    for start in range(0, len(lines), _IOV_MAX):
        part = lines[start:start + _IOV_MAX]
        written = os.writev(fd, part)
        if written < sum(map(len, part)):  # a short write: the rest one buffer at a time
            view = memoryview(b"".join(part))[written:]
            while view:
                view = view[os.write(fd, view):]


class FileSink:
    """Appends one JSON event per line.  ``path`` may be a template such as
    ``out/{destination}.jsonl`` (see ``cdc.templates``): a field value is one file-name
    segment (never ``/``, ``..`` or NUL), and the file stays inside the directory
    before the first field.  ``content``: ``envelope``, ``payload`` or ``auto``
    (the default: outbox messages as their payload, other events as envelopes)."""

    default_batch_size = 5000

    def __init__(self, path: str, fsync: bool = True, content: Content = "auto",
                 context: Context | None = None) -> None:
        text = str(context.resolve_path(path) if context else Path(path))
        self.template = Template(text, "path", encode=path_segment, check=self._inside)
        self.base = os.path.abspath(os.path.dirname(self.template.prefix) or ".")
        self.fsync = fsync
        self.content = content
        self.name = context.name if context else "file"
        self._files: dict[str, int] = {}
        self._inodes: dict[int, tuple[int, int]] = {}  # fd -> the file it was opened on

    def _inside(self, path: str) -> None:
        if self.template.is_constant:
            return
        if not os.path.abspath(path).startswith(self.base.rstrip(os.sep) + os.sep):
            raise UnsafeValue(f"{path!r} is outside {self.base}")

    def open(self) -> None:
        if self.template.is_constant:
            try:
                self._fd(self.template.text)
            except OSError as exc:
                raise self._error(exc, self.template.text) from None

    def _fd(self, path: str) -> int:
        fd = self._files.get(path)
        if fd is None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            _cut_torn_tail(path, fd)
            st = os.fstat(fd)
            self._files[path], self._inodes[fd] = fd, (st.st_ino, st.st_dev)
        return fd

    def write(self, events: Sequence[ChangeEvent]) -> None:
        for _ in range(3):
            starts = (self._write_to(self.template.text, events) if self.template.is_constant
                      else self._write_rendered(events))
            gone = self._gone(starts)
            if not gone:
                return
            # The batch went to a file no longer at its path (removed, or renamed by a rotation):
            # take it back from there and write it again to a new file at the path.
            self._roll_back(starts)
            for path in gone:
                log.warning("sink %s: %s was removed or replaced while cdc wrote to it; writing to a new "
                            "file there (what was delivered before is in the old file if it was renamed, "
                            "and gone if it was deleted)", self.name, path)
                if path in self._files:  # (a failed roll-back forgets it already)
                    self._forget(self._files[path])
        raise TransientSinkError(f"{', '.join(gone)} keeps being removed or replaced", sink=self.name)

    def _gone(self, starts: dict[int, int]) -> list[str]:
        """The paths this batch wrote to whose file is no longer there (one stat per file)."""
        gone = []
        for path, fd in self._files.items():
            if fd in starts:
                try:
                    st = os.stat(path)
                    if (st.st_ino, st.st_dev) == self._inodes[fd]:
                        continue
                except OSError:
                    pass
                gone.append(path)
        return gone

    def _write_rendered(self, events: Sequence[ChangeEvent]) -> dict[int, int]:
        render = self.template.render
        paths = []
        for event in events:  # every path checked before anything is written
            try:
                paths.append(render(event))
            except UnsafeValue as exc:
                raise PermanentSinkError(f"event {event.id}: path template: {exc}", sink=self.name,
                                         events=[event]) from None
        content = self.content
        # Lines go out IOV_MAX at a time: holding a whole batch of them costs more (fresh
        # memory for every batch, system time) than the extra system calls.
        pending: dict[str, list[bytes]] = {}
        starts: dict[int, int] = {}  # fd -> size before this batch
        path = ""
        try:
            for path, event in zip(paths, events):
                lines = pending.get(path)
                if lines is None:
                    lines = pending[path] = []
                if event.message is None and content != "payload":  # the common case, inline
                    lines.append(event.to_json_line())
                else:
                    lines.append(body_of(event, content) + b"\n")
                if len(lines) >= _IOV_MAX:
                    self._append(path, lines, starts)
                    lines.clear()
            for path, lines in pending.items():
                if lines:
                    self._append(path, lines, starts)
            if self.fsync:
                for fd in starts:
                    os.fsync(fd)
        except OSError as exc:
            self._roll_back(starts)
            raise self._error(exc, path) from exc
        return starts

    def _write_to(self, path: str, events: Sequence[ChangeEvent]) -> dict[int, int]:
        """``write`` to one file: no path to render, nor to group lines by, per event."""
        content = self.content
        starts: dict[int, int] = {}
        try:
            for start in range(0, len(events), _IOV_MAX):
                self._append(path, [event.to_json_line() if event.message is None and content != "payload"
                                    else body_of(event, content) + b"\n"
                                    for event in events[start:start + _IOV_MAX]], starts)
            if self.fsync:
                for fd in starts:
                    os.fsync(fd)
        except OSError as exc:
            self._roll_back(starts)
            raise self._error(exc, path) from exc
        return starts

    def _append(self, path: str, lines: list[bytes], starts: dict[int, int]) -> None:
        fd = self._fd(path)
        if fd not in starts:
            starts[fd] = os.fstat(fd).st_size
        write_lines(fd, lines)

    def _roll_back(self, starts: dict[int, int]) -> None:
        """Cut every file this batch touched back to its size before the batch."""
        for fd, size in starts.items():
            try:
                os.ftruncate(fd, size)
            except OSError:  # cannot even truncate: forget the fd, reopen next time
                self._forget(fd)

    def _forget(self, fd: int) -> None:
        for path, known in list(self._files.items()):
            if known == fd:
                del self._files[path]
                self._inodes.pop(fd, None)
                os.close(fd)

    def _error(self, exc: OSError, path: str) -> Exception:
        cls = PermanentSinkError if exc.errno in _PERMANENT_ERRNOS else TransientSinkError
        return cls(f"cannot write {exc.filename or path}: {exc.strerror}", sink=self.name)

    def close(self) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()
        self._inodes.clear()


def _cut_torn_tail(path: str, fd: int) -> None:
    """A process killed in the middle of a write leaves a last line without its newline.
    That batch was never acknowledged (it is delivered again), so the fragment is cut
    off rather than glued to the next event."""
    size = os.fstat(fd).st_size
    if size == 0:
        return
    with open(path, "rb") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        end = size
        while end > 0:  # back to the newline before the fragment
            start = max(0, end - 65536)
            f.seek(start)
            block = f.read(end - start)
            cut = block.rfind(b"\n")
            if cut >= 0:
                os.ftruncate(fd, start + cut + 1)
                return
            end = start
    os.ftruncate(fd, 0)
