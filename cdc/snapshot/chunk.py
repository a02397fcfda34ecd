"""One chunk of a table read by a source's snapshot reader."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import PermanentError, SourceError

__all__ = ["Chunk", "SnapshotInputError", "MODES"]

#: ``snapshot:`` modes, with Debezium's meanings
MODES = ("initial", "never", "initial_only", "when_needed")


class SnapshotInputError(SourceError, PermanentError):
    """A snapshot that cannot run as asked (no primary key, a bad ``where``): the
    snapshot is dropped, the pipeline goes on streaming."""


@dataclass
class Chunk:
    """Rows of ``table`` with keys after ``after``, read in one snapshot.

    ``rows`` are ``(key tuple, row dict)`` in key order; ``last_key`` is the key of the
    last row read (the next chunk starts after it); ``done`` is True when the table has
    no rows after this chunk; ``watermark`` is the reader's opaque description of the
    snapshot the rows were read in."""

    table: str
    rows: list[tuple[tuple, dict]]
    last_key: list | None
    done: bool
    watermark: Any
    key_columns: list[str] = field(default_factory=list)
    first_index: int = 0   # rows of this copy emitted before this chunk (set when emitted)
