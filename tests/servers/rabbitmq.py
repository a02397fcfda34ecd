"""A private RabbitMQ node, with its own epmd so nothing is shared with the system."""

from __future__ import annotations

from typing import Self

from cdc.demo.server import HOST, Server, find_binary, free_port

RABBITMQ_BIN = "/usr/lib/rabbitmq/bin"  # the real scripts; /usr/sbin/rabbitmq-server su's to rabbitmq

# Classic queues v2 (RabbitMQ 3.13 made them the default; Debian 12 ships 3.10) and Erlang
# schedulers that sleep instead of spinning (RabbitMQ's advice when the broker shares its cores):
# on this 2-core machine, where the broker shares both cores with the tests, they cut its CPU per
# persistent, confirmed message from ~85 to ~60 us (bench/rabbitmq_bench.py).
RABBITMQ_CONF = """\
loopback_users.guest = true
disk_free_limit.absolute = 50MB
classic_queue.default_version = 2
"""
ERL_SCHEDULERS_SLEEP = "+sbwt none +sbwtdcpu none +sbwtdio none"


class Epmd(Server):
    """The Erlang port mapper, in the foreground on a private port (not 4369)."""

    name = "epmd"

    def command(self) -> list[str]:
        return [find_binary("epmd"), "-port", str(self.port), "-address", HOST]


class RabbitMQServer(Server):
    """`RabbitMQServer(port=None, data_dir=None)`; `.url` is amqp://guest:guest@127.0.0.1:<port>/.

    Runs as the current user (root included) with HOME, mnesia, logs, config
    and plugins all inside the data dir; management plugin off.
    """

    name = "rabbitmq"
    start_timeout = 120.0

    def __init__(self, port=None, data_dir=None):
        super().__init__(port, data_dir)
        self.nodename = f"cdc{self.port}@localhost"
        self.dist_port = free_port()
        self.epmd = Epmd(data_dir=self.data_dir / "epmd")

    def init(self) -> None:
        (self.data_dir / "rabbitmq.conf").write_text(RABBITMQ_CONF)
        (self.data_dir / "enabled_plugins").write_text("[].\n")
        (self.data_dir / "rabbitmq-env.conf").write_text("")

    def environ(self) -> dict[str, str]:
        d = self.data_dir
        return {
            "HOME": str(d),
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": HOST,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_LOGS": "-",
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(d / "plugins-expand"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": f"-kernel inet_dist_use_interface {{127,0,0,1}} {ERL_SCHEDULERS_SLEEP}",
            "ERL_EPMD_ADDRESS": HOST,
            "ERL_EPMD_PORT": str(self.epmd.port),
        }

    def command(self) -> list[str]:
        return [f"{RABBITMQ_BIN}/rabbitmq-server"]

    def ready(self) -> bool:
        return "Server startup complete" in self.log_since_start() and super().ready()

    def start(self, timeout: float | None = None) -> Self:
        self.epmd.start()
        return super().start(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        super().stop(timeout)
        self.epmd.stop()

    def kill(self) -> None:
        super().kill()
        self.epmd.kill()

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{HOST}:{self.port}/"
