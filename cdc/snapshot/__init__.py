"""Snapshots: the rows that already exist, as ``op: "r"`` events, interleaved with the
live stream by the watermark method (see ``docs/snapshots.md``).

- ``chunk``: what a source's snapshot reader returns for one chunk;
- ``controller``: the window logic the runner drives (one chunk at a time);
- ``requests``: on-demand snapshot requests, as files in the source's ``state_dir``.
"""

from .chunk import Chunk, SnapshotInputError
from .controller import SnapshotController

__all__ = ["Chunk", "SnapshotController", "SnapshotInputError"]
