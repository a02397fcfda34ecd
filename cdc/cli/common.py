"""What every command shares: logging set-up, loading the config, failing cleanly."""

from __future__ import annotations

import sys

import click

from ..config import Config, load_config
from ..errors import ConfigError
from ..observe.secrets import redact

__all__ = ["setup_logging", "fail", "load_or_exit", "report_config_error", "CONFIG"]

CONFIG = click.argument("config", type=click.Path(dir_okay=False))


def setup_logging(level: str, fmt: str = "text") -> None:
    from ..observe.logging import setup_logging as setup
    setup(level, fmt)


def fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {redact(message)}", err=True)
    sys.exit(code)


def load_or_exit(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        report_config_error(exc)
        sys.exit(2)


def report_config_error(exc: ConfigError) -> None:
    n = len(exc.problems)
    click.echo(f"{exc.source_file or 'config'}: {n} problem{'s' if n != 1 else ''}", err=True)
    for problem in exc.problems:
        click.echo(f"  {redact(str(problem))}", err=True)
