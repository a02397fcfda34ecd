"""PostgreSQL log sequence numbers: the 64-bit WAL position and its ``X/Y`` text form."""

from __future__ import annotations

import re

__all__ = ["format_lsn", "parse_lsn", "is_lsn"]

_LSN = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")


def format_lsn(lsn: int) -> str:
    """``27405256`` -> ``"0/1A2292C8"`` (as PostgreSQL prints it)."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """``"0/1A2292C8"`` -> ``27405256``; ``ValueError`` for anything else."""
    m = _LSN.match(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"not a PostgreSQL LSN (X/Y in hex, e.g. 0/1A2B3C8): {text!r}")
    return (int(m[1], 16) << 32) | int(m[2], 16)


def is_lsn(text: object) -> bool:
    return isinstance(text, str) and _LSN.match(text) is not None
