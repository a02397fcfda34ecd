"""The crash-point switch (cdc/faults.py): parsing, and a real SIGKILL at the n-th call."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from cdc import faults

pytestmark = pytest.mark.unit


def test_unset_is_none():
    # this test process has no CDC_CRASH_AT: every call site is skipped by one `is not None`
    assert faults.crash_point is None


def test_parse():
    assert faults.parse("after_ack:2, sink_backoff") == {"after_ack": 2, "sink_backoff": 1}
    assert faults.parse("") == {}
    with pytest.raises(ValueError, match="unknown crash point 'nope'.*after_ack"):
        faults.parse("nope:1")
    with pytest.raises(ValueError, match="'after_ack:0'"):
        faults.parse("after_ack:0")
    with pytest.raises(ValueError, match="'after_ack:x'"):
        faults.parse("after_ack:x")


def test_kills_at_the_nth_time():
    code = ("from cdc.faults import crash_point\n"
            "for i in range(1, 6):\n"
            "    crash_point('after_ack')\n"
            "    crash_point('checkpoint_write')\n"
            "    print(i, flush=True)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={"CDC_CRASH_AT": "after_ack:3,mid_transaction:1", "PATH": ""})
    assert proc.returncode == -signal.SIGKILL
    assert proc.stdout.split() == ["1", "2"]
    assert "cdc: crash point after_ack reached (3rd time): SIGKILL" in proc.stderr
