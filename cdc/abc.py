"""The interfaces of cdc's parts, as ``typing.Protocol``s.

The data flows one way::

    Source.poll() -> ChangeEvent / Commit -> Transform(...) -> Sink.write(batch)
                                                                   | acknowledged
    Source.confirm(position) <- CheckpointStore.save(position) <---+

A new sink is one class with ``open``, ``write`` and ``close``; its ``__init__``
keyword arguments are its YAML options (``cdc.config`` validates them from the
signature and the annotations).  ``write`` runs on the sink's own thread; when it
returns, the batch counts as durably delivered.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, Union, runtime_checkable

from .event import ChangeEvent, Commit

__all__ = ["Source", "Sink", "CheckpointStore", "Transform", "TransformResult", "Commit"]

TransformResult = Union[ChangeEvent, None, Iterable[ChangeEvent]]


@runtime_checkable
class Transform(Protocol):
    """A plain callable: return the event (changed or not), ``None`` to drop it, or
    several events.  Never mutate the argument: return ``event.replace(...)``."""

    def __call__(self, event: ChangeEvent) -> TransformResult: ...


@runtime_checkable
class Sink(Protocol):
    def open(self) -> None:
        """Connect.  Raise ``TransientSinkError`` if the destination is down."""

    def write(self, events: Sequence[ChangeEvent]) -> None:
        """Deliver ``events`` in order and return once the destination has durably
        accepted all of them.  Raise ``TransientSinkError`` (retry) or
        ``PermanentSinkError`` (the error policy decides)."""

    def close(self) -> None:
        """Flush and disconnect."""


@runtime_checkable
class Source(Protocol):
    name: str

    def open(self, position: dict | None) -> None:
        """Connect and start reading after ``position`` (None: from now on)."""

    def poll(self, timeout: float) -> list[ChangeEvent | Commit]:
        """Committed changes in commit order, each transaction closed by a ``Commit``.
        Returns an empty list when nothing arrived within ``timeout`` seconds."""

    def keepalive(self) -> None:
        """Keep the connection alive while the pipeline applies back-pressure."""

    def confirm(self, position: dict) -> None:
        """Tell the server everything up to ``position`` is safely stored."""

    def close(self) -> None: ...


@runtime_checkable
class CheckpointStore(Protocol):
    def load(self) -> dict | None:
        """The last saved position, or None when there is none."""

    def save(self, position: dict) -> None:
        """Store ``position`` durably before returning."""

    def reset(self) -> None:
        """Forget the stored position."""

    def close(self) -> None: ...

