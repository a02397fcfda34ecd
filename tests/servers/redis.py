"""A private, non-persistent Redis server."""

from __future__ import annotations

from cdc.demo.server import HOST, Server, find_binary


class RedisServer(Server):
    """`RedisServer(port=None, data_dir=None)`; `.url` is redis://127.0.0.1:<port>/0."""

    name = "redis"

    def command(self) -> list[str]:
        return [find_binary("redis-server"), "--port", str(self.port), "--bind", HOST,
                "--dir", str(self.data_dir), "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--logfile", ""]

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"
