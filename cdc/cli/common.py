"""What every command shares: logging set-up, loading the config, failing cleanly."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import click

from ..config import Config, load_config
from ..errors import ConfigError
from ..observe.secrets import redact

__all__ = ["setup_logging", "fail", "load_or_exit", "report_config_error", "CONFIG", "SOURCE", "pick_source",
           "NoAnswer", "answer_within", "command_timeout"]

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


class NoAnswer(BaseException):
    """A server did not answer within the command's time (a BaseException: no driver's
    ``except Exception`` turns it into something else)."""


def command_timeout() -> float:
    """Seconds an operator's command waits for one server (env CDC_COMMAND_TIMEOUT, default 60)."""
    try:
        return max(float(os.environ.get("CDC_COMMAND_TIMEOUT", "60")), 1.0)
    except ValueError:
        return 60.0


@contextmanager
def answer_within(seconds: float | None = None) -> Iterator[None]:
    """Raise ``NoAnswer`` in the main thread if the block takes longer than ``seconds``.
    Connection timeouts cover a server that is down; this covers one that accepts the
    connection and never answers (hung, overloaded, not the server expected), which some
    drivers wait for without end."""
    seconds = command_timeout() if seconds is None else seconds
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return

    def expired(signum: int, frame: object) -> None:
        raise NoAnswer(seconds)

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
