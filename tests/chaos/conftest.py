"""Fixtures of the chaos suite: the seed (``--chaos-seed N`` replays a run), the size
(``--long`` for release checks), and private servers that the tests crash and restart (the
Kafka broker is the session's ``kafka_server``, tests/conftest.py: killed and started again, it
serves the later tests as before)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from servers import MariaDBServer, PostgresServer


class Chaos:
    """``rng(name)``: a Random seeded from the run's seed and ``name``; ``long``: release size."""

    def __init__(self, seed: int, long: bool) -> None:
        self.seed, self.long = seed, long
        self.started = time.monotonic()

    def rng(self, name: str) -> random.Random:
        return random.Random(f"{self.seed}:{name}")


@pytest.fixture
def chaos(request) -> Chaos:
    seed = request.config.getoption("--chaos-seed")
    if seed is None:
        seed = random.randrange(2**31)
    print(f"chaos seed: {seed} (replay with: bash scripts/test {request.node.nodeid} --chaos-seed {seed})")
    return Chaos(seed, request.config.getoption("--long"))


@pytest.fixture(scope="session")
def source_pg():
    """A private PostgreSQL source: the tests stop it immediately and restart it."""
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def target_pg():
    """A private PostgreSQL for the mirror sink (and the postgres checkpoint store)."""
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def source_mariadb():
    with MariaDBServer() as server:
        yield server


def pytest_collection_modifyitems(config, items):
    """``--long`` runs take an hour or more: above the suite's per-test timeout (pyproject.toml)."""
    if config.getoption("--long"):
        here = Path(__file__).parent
        for item in items:
            if here in item.path.parents:
                item.add_marker(pytest.mark.timeout(4 * 3600))
