"""Errors raised by cdc.

Every error carries the context needed to act on it at 3 a.m.: the key path of a bad
config value, the event (id, table, position) a transform or sink failed on, the
server setting that must change.  A retry policy decides with ``isinstance``::

    CdcError
    ├── ConfigError                 bad YAML: carries every problem with its key path
    ├── SourceError                 the source database cannot be read
    │   ├── SourceSetupError        a setting or privilege must change (names it)
    │   │   └── PositionLostError   the server no longer holds the log at the checkpoint
    │   ├── SourceConnectionError   lost or refused connection: reconnect and resume
    │   └── SetUpInterrupted        a stop asked for while the source was being set up
    ├── TransformError              a transform raised on an event
    ├── SinkError                   a sink could not deliver a batch
    │   ├── TransientSinkError      worth retrying: timeouts, broker down, 5xx, 429
    │   └── PermanentSinkError      retrying cannot help: 4xx, bad payload, schema
    └── CheckpointError             the position cannot be loaded or saved

``TransientError`` and ``PermanentError`` are mixins, so a source or a checkpoint
store can mark its errors the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .event import ChangeEvent

__all__ = [
    "CdcError",
    "ConfigError",
    "SourceError",
    "SourceSetupError",
    "PositionLostError",
    "SourceConnectionError",
    "SetUpInterrupted",
    "TransformError",
    "SinkError",
    "TransientSinkError",
    "PermanentSinkError",
    "CheckpointError",
    "TransientError",
    "PermanentError",
    "ConfigProblem",
]


class CdcError(Exception):
    """Base class of every error cdc raises on purpose."""


class TransientError(Exception):
    """Mixin: the operation may succeed if tried again later."""


class PermanentError(Exception):
    """Mixin: trying again will fail the same way."""


class ConfigProblem:
    """One problem in a config file: where (key path) and what."""

    __slots__ = ("path", "message")

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message

    def __repr__(self) -> str:
        return f"ConfigProblem({self.path!r}, {self.message!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ConfigProblem) and (self.path, self.message) == (
            other.path,
            other.message,
        )


class ConfigError(CdcError):
    """The configuration is invalid; ``problems`` lists each one with its key path."""

    def __init__(self, problems: list[ConfigProblem] | str, source_file: str | None = None):
        if isinstance(problems, str):
            problems = [ConfigProblem("", problems)]
        self.problems = problems
        self.source_file = source_file
        head = f"{source_file}: " if source_file else ""
        super().__init__(head + "; ".join(str(p) for p in problems))


class SourceError(CdcError):
    """The source database could not be read."""

    def __init__(self, message: str, *, source: str | None = None, sqlstate: str | None = None):
        self.source = source
        self.sqlstate = sqlstate
        super().__init__(f"source {source}: {message}" if source else message)


class SourceSetupError(SourceError, PermanentError):
    """The source is misconfigured for CDC; the message names the setting to change."""


class PositionLostError(SourceSetupError):
    """The saved position cannot be resumed: the server no longer holds the log from
    there (a dropped replication slot, a purged binlog).  ``snapshot: when_needed``
    starts over with a full re-snapshot; every other mode stops with the message.
    ``position`` is the position that was lost, ``reason`` says in a few words why."""

    def __init__(self, message: str, *, source: str | None = None, position: Any = None, reason: str = ""):
        self.position = position
        self.reason = reason or message
        super().__init__(message, source=source)


class SourceConnectionError(SourceError, TransientError):
    """The connection to the source failed; the runner resumes from its checkpoint."""


class SetUpInterrupted(SourceError):
    """A stop was asked for while the source was being set up (``Interruptible``): the
    statement it waited in was cancelled, and nothing past it was set up.  A clean stop."""


def _describe(event: ChangeEvent | None) -> str:
    if event is None:
        return ""
    return f" (event {event.id}, table {event.table}, position {event.position_text()})"


class TransformError(CdcError, PermanentError):
    """A transform raised on an event.  ``__cause__`` is the original exception."""

    def __init__(self, message: str, *, event: ChangeEvent | None = None,
                 pipeline: str | None = None, transform: str | None = None):
        self.event = event
        self.pipeline = pipeline
        self.transform = transform
        where = f"pipeline {pipeline}, transform {transform}: " if pipeline else ""
        super().__init__(where + message + _describe(event))


class SinkError(CdcError):
    """A sink could not deliver.  ``events`` is the batch (or the one event) that failed."""

    def __init__(self, message: str, *, sink: str | None = None,
                 events: Any = None, retry_after: float | None = None):
        self.sink = sink
        self.events = events
        self.retry_after = retry_after
        super().__init__(f"sink {sink}: {message}" if sink else message)


class TransientSinkError(SinkError, TransientError):
    """The destination is unavailable for now: retry later."""


class PermanentSinkError(SinkError, PermanentError):
    """The destination refused the data: retrying will not help."""


class CheckpointError(CdcError):
    """The checkpoint store failed to load or save a position."""
