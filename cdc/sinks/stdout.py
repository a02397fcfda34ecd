"""``stdout``: one JSON event per line on standard output."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import orjson

from ..event import ChangeEvent
from ._message import Content, body_of, is_message, payload_of

__all__ = ["StdoutSink"]


class StdoutSink:
    """Prints events; ``pretty: true`` indents them for people watching.  ``content``:
    ``auto`` (outbox messages as their payload), ``envelope`` or ``payload``."""

    def __init__(self, pretty: bool = False, content: Content = "auto") -> None:
        self.pretty = pretty
        self.content = content

    def open(self) -> None:
        pass

    def write(self, events: Sequence[ChangeEvent]) -> None:
        out = sys.stdout.buffer
        if self.pretty:
            for e in events:
                value = payload_of(e) if is_message(e, self.content) else e.to_dict()
                out.write(orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n")
        else:
            content = self.content
            out.write(b"".join(body_of(e, content) + b"\n" for e in events))
        out.flush()

    def close(self) -> None:
        sys.stdout.flush()
