"""Small pure functions behind the operations fixes (no server)."""

import pytest

from cdc.sources.postgres.replication import parse_duration

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("text, seconds", [("60s", 60.0), ("500ms", 0.5), ("1min", 60.0), ("0", 0.0),
                                           ("2h", 7200.0), ("1d", 86400.0), ("250", 0.25)])
def test_wal_sender_timeout_is_parsed(text, seconds):
    assert parse_duration(text) == seconds


def test_a_bad_duration_is_refused():
    with pytest.raises(ValueError):
        parse_duration("soon")
