"""Throwaway database and broker servers on 127.0.0.1, each in a private temp dir.

Used by the test-suite and by `cdc demo`:

    with PostgresServer() as pg:
        print(pg.dsn())
"""

from importlib import import_module

from .base import Server, ServerError, free_port, wait_for_port

_MODULES = {
    "KafkaServer": "kafka",
    "MariaDBServer": "mariadb",
    "PostgresServer": "postgres",
    "RabbitMQServer": "rabbitmq",
    "RedisServer": "redis",
}

__all__ = [
    "KafkaServer", "MariaDBServer", "PostgresServer", "RabbitMQServer", "RedisServer",
    "Server", "ServerError", "free_port", "wait_for_port",
]


def __getattr__(name: str):
    # Imported on first use, so `python -m cdc.servers.kafka` runs cleanly.
    if name in _MODULES:
        return getattr(import_module(f".{_MODULES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
