"""Throwaway database and broker servers on 127.0.0.1, each in a private temp dir,
for the tests and benchmarks (``cdc demo`` has its own PostgreSQL in ``cdc.demo``)::

    with PostgresServer() as pg:
        print(pg.dsn())
"""

from cdc.demo.postgres import PostgresServer, pg_bindir
from cdc.demo.server import HOST, Server, ServerError, find_binary, free_port, port_open, wait_for_port

from .kafka import KafkaServer
from .mariadb import MariaDBServer
from .rabbitmq import RabbitMQServer
from .redis import RedisServer

__all__ = [
    "KafkaServer", "MariaDBServer", "PostgresServer", "RabbitMQServer", "RedisServer",
    "Server", "ServerError", "HOST", "find_binary", "free_port", "port_open", "wait_for_port", "pg_bindir",
]
