"""``cdc status``: position, checkpoint age, lag and errors of every source."""

from __future__ import annotations

import json

import click

from .common import CONFIG, load_or_exit

__all__ = ["status"]


@click.command()
@CONFIG
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(config: str, as_json: bool) -> None:
    """Per source and pipeline: position, checkpoint age, lag, dead letters, last error."""
    from ..observe.status import all_status, render_table
    cfg = load_or_exit(config)
    rows = all_status(cfg)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
    else:
        render_table(rows)
