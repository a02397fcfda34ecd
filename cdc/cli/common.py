"""What every command shares: logging set-up, loading the config, failing cleanly."""

from __future__ import annotations

import sys
from typing import NoReturn

import click

from ..config import Config, load_config
from ..errors import ConfigError
from ..observe.secrets import redact

__all__ = ["setup_logging", "fail", "load_or_exit", "report_config_error", "CONFIG", "SOURCE", "pick_source"]

CONFIG = click.argument("config", type=click.Path(dir_okay=False))
SOURCE = click.option("--source", "source_name", help="The source (may be left out when the config has one).")


def pick_source(cfg: Config, source_name: str | None, config: str) -> str:
    """``--source``, or the config's only source; exits 2 when it is ambiguous or unknown."""
    if source_name is None:
        if len(cfg.sources) == 1:
            return next(iter(cfg.sources))
        fail(f"{config} has {len(cfg.sources)} sources: give --source ({', '.join(cfg.sources)})", 2)
    if source_name not in cfg.sources:
        fail(f"no source named {source_name!r} in {config} (sources: {', '.join(cfg.sources)})", 2)
    return source_name


def setup_logging(level: str, fmt: str = "text") -> None:
    from ..observe.logging import setup_logging as setup
    setup(level, fmt)


def fail(message: str, code: int = 1) -> NoReturn:
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
