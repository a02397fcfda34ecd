"""The optional C twins of the sources' row decoders (``setup.py``): which one runs."""

from __future__ import annotations

import os

__all__ = ["PURE_PYTHON", "describe"]

PURE_PYTHON = bool(os.environ.get("CDC_PURE_PYTHON"))  # chooses the Python twins


def describe(built: bool, active: bool, in_c: str, slower: str) -> str:
    """For a source's start line: ``in_c`` when the C decoder runs, else why not."""
    if active:
        return in_c
    if built:
        return "decoding in Python: CDC_PURE_PYTHON is set"
    return (f"decoding in Python, {slower}: the C speed-up was not built "
            "(reinstall cdc where a C compiler and Python's headers are installed)")
