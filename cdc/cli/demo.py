"""``cdc demo``: a throwaway PostgreSQL, orders written to it, change events printed."""

from __future__ import annotations

import sys

import click

__all__ = ["demo"]


@click.command()
@click.option("--duration", type=click.FloatRange(min=0), default=None, help="Stop after this many seconds.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=2.0, show_default=True,
              help="Orders written per second.")
def demo(duration: float | None, rate: float) -> None:
    """Start a throwaway PostgreSQL, write orders, and print the change events."""
    from ..demo import run_demo
    sys.exit(run_demo(duration=duration, rate=rate))
