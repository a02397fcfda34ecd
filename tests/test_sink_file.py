"""The file sink on a really full disk (a 64 KiB tmpfs, mounted for the test; needs
root) and on paths it may not write."""

from __future__ import annotations

import os
import subprocess

import orjson
import pytest

from cdc.config import Context
from cdc.errors import PermanentSinkError, TransientSinkError
from cdc.event import ChangeEvent
from cdc.sinks.file import FileSink


def events(first: int, count: int, size: int = 100) -> list[ChangeEvent]:
    return [ChangeEvent(f"0/F:{n}", "c", None, {"id": n, "pad": "x" * size}, {"id": n},
                        {"name": "shop", "schema": "public", "table": "orders"}, 1, "public.orders")
            for n in range(first, first + count)]


def test_full_disk_truncates_the_partial_batch_and_the_retry_is_exact(small_disk):
    sink = FileSink(str(small_disk / "out.jsonl"), context=Context(small_disk, name="f"))
    sink.open()
    sink.write(events(0, 50))          # ~7 KB: fits
    before = (small_disk / "out.jsonl").read_bytes()
    big = events(50, 1000)             # ~140 KB: the disk fills part-way through
    with pytest.raises(TransientSinkError, match="No space left"):
        sink.write(big)
    assert (small_disk / "out.jsonl").read_bytes() == before  # no torn line, nothing half-written
    subprocess.run(["mount", "-o", "remount,size=1m", str(small_disk)], check=True)  # space freed
    sink.write(big)                    # the worker's retry of the same batch
    sink.close()
    ids = [orjson.loads(line)["after"]["id"] for line in (small_disk / "out.jsonl").read_bytes().splitlines()]
    assert ids == list(range(1050))    # every line whole, none twice


def test_permission_denied_is_permanent(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    os.chown(locked, 0, 0)
    sink = FileSink(str(locked / "out.jsonl"))
    os.seteuid(65534)                  # root may write anywhere: act as nobody
    try:
        with pytest.raises(PermanentSinkError, match="Permission denied"):
            sink.write(events(0, 1))
    finally:
        os.seteuid(0)


def test_missing_directory_is_permanent(tmp_path):
    (tmp_path / "out.jsonl").symlink_to(tmp_path / "gone" / "out.jsonl")  # a dangling link
    sink = FileSink(str(tmp_path / "out.jsonl"))
    with pytest.raises(PermanentSinkError, match="No such file"):
        sink.write(events(0, 1))
