"""``stdout``: one JSON event per line on standard output."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import orjson

from ..event import ChangeEvent

__all__ = ["StdoutSink"]


class StdoutSink:
    """Prints events; ``pretty: true`` indents them for people watching."""

    def __init__(self, pretty: bool = False) -> None:
        self.pretty = pretty

    def open(self) -> None:
        pass

    def write(self, events: Sequence[ChangeEvent]) -> None:
        out = sys.stdout.buffer
        if self.pretty:
            for e in events:
                out.write(orjson.dumps(e.to_dict(), option=orjson.OPT_INDENT_2) + b"\n")
        else:
            out.write(b"".join(e.to_json() + b"\n" for e in events))
        out.flush()

    def close(self) -> None:
        sys.stdout.flush()
