"""The ``cdc`` command: one module per command group.

``run``, ``validate``, ``schema``, ``status``, ``check``, ``checkpoint``, ``snapshot``, ``dlq``, ``demo``.
"""

from __future__ import annotations

import importlib
import os

import click

from .common import setup_logging

__all__ = ["main"]


# command -> "module:attribute" in this package; a command's module is imported only when that
# command runs, so `cdc run` does not pay for the others' imports (psycopg, for a MySQL source)
COMMANDS = {"run": "run:run", "validate": "validate:validate", "schema": "validate:schema",
            "status": "status:status", "check": "check:check", "checkpoint": "checkpoint:checkpoint",
            "snapshot": "snapshot:snapshot", "dlq": "dlq:dlq", "demo": "demo:demo"}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, attribute = COMMANDS[cmd_name].split(":")
        command = getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", default=lambda: os.environ.get("CDC_LOG_LEVEL", "info"),
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
              help="Log level (env CDC_LOG_LEVEL).")
@click.option("--log-format", default=lambda: os.environ.get("CDC_LOG_FORMAT", "text"),
              type=click.Choice(["text", "json"], case_sensitive=False),
              help="text (for people) or json (one object per line; env CDC_LOG_FORMAT).")
@click.version_option(package_name="cdc")
def main(log_level: str, log_format: str) -> None:
    """Change data capture: PostgreSQL and MySQL changes to files, brokers and APIs."""
    # children started by the supervisor inherit these
    os.environ["CDC_LOG_LEVEL"], os.environ["CDC_LOG_FORMAT"] = log_level.lower(), log_format.lower()
    setup_logging(log_level, log_format.lower())


if __name__ == "__main__":
    main()
