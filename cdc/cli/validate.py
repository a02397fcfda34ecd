"""``cdc validate`` (every problem of a config, with its key path) and ``cdc schema``
(the JSON Schema of the config, for editors)."""

from __future__ import annotations

import json

import click

from ..config.targets import shared_target_tables
from .common import CONFIG, load_or_exit

__all__ = ["validate", "schema"]


@click.command()
@CONFIG
def validate(config: str) -> None:
    """Check CONFIG; print every problem with its key path."""
    cfg = load_or_exit(config)
    click.echo(f"{config}: valid ({len(cfg.sources)} source(s), {len(cfg.pipelines)} pipeline(s))")
    for path, message in shared_target_tables(cfg):
        click.echo(f"warning: {path}: {message}", err=True)


@click.command()
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True),
              help="Write to this file instead of standard output.")
def schema(output: str | None) -> None:
    """Print the JSON Schema of a config (built-in and installed plugins included).

    For completion and errors in an editor: `cdc schema -o cdc.schema.json`, then
    start the YAML file with `# yaml-language-server: $schema=cdc.schema.json`."""
    from ..config.jsonschema import config_schema
    text = json.dumps(config_schema(), indent=2)
    if output:
        with open(output, "w") as f:
            f.write(text + "\n")
    else:
        click.echo(text)
