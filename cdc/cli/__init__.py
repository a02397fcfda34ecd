"""The ``cdc`` command: one module per command group.

``run``, ``validate``, ``schema``, ``status``, ``check``, ``checkpoint``, ``snapshot``, ``dlq``, ``demo``.
"""

from __future__ import annotations

import os

import click

from .check import check
from .checkpoint import checkpoint
from .common import setup_logging
from .demo import demo
from .dlq import dlq
from .run import run
from .snapshot import snapshot
from .status import status
from .validate import schema, validate

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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


for command in (run, validate, schema, status, check, checkpoint, snapshot, dlq, demo):
    main.add_command(command)

if __name__ == "__main__":
    main()
