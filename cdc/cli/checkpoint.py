"""``cdc checkpoint show|set|reset``: an operator's commands for a source's position."""

from __future__ import annotations

import json

import click

from ..checkpoints import operations as positions
from ..checkpoints.operations import PositionError
from ..errors import CdcError
from .common import CONFIG, SOURCE, NoAnswer, answer_within, command_timeout, fail, load_or_exit, pick_source

__all__ = ["checkpoint"]


@click.group()
def checkpoint() -> None:
    """Show, move or forget a source's position (refused while it runs)."""


def _positions_call(fn, *args):
    try:
        with answer_within():
            return fn(*args)
    except (PositionError, CdcError) as exc:
        fail(str(exc))
    except NoAnswer:
        fail(f"no answer within {command_timeout():.0f} s from a server of source {args[1]} (it accepts the "
             f"connection but does not answer: hung, overloaded, or not the server expected); nothing was "
             f"changed")


@checkpoint.command("show")
@CONFIG
@SOURCE
def checkpoint_show(config: str, source_name: str | None) -> None:
    """Print the saved position as JSON."""
    cfg = load_or_exit(config)
    source_name = pick_source(cfg, source_name, config)
    click.echo(json.dumps(_positions_call(positions.show, cfg, source_name), indent=2))


@checkpoint.command("set")
@CONFIG
@SOURCE
@click.option("--position", required=True, help='JSON, e.g. \'{"lsn": "0/1A2B3C8"}\'.')
def checkpoint_set(config: str, source_name: str | None, position: str) -> None:
    """Move the position, e.g. past one poison transaction."""
    cfg = load_or_exit(config)
    source_name = pick_source(cfg, source_name, config)
    value = _positions_call(positions.set_position, cfg, source_name, position)
    click.echo(f"source {source_name}: position set to {json.dumps(value)}")


@checkpoint.command("reset")
@CONFIG
@SOURCE
@click.option("--drop-slot/--keep-slot", default=None,
              help="PostgreSQL: also drop the replication slot (asked when not given; kept with --yes).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def checkpoint_reset(config: str, source_name: str | None, drop_slot: bool | None, yes: bool) -> None:
    """Forget the position: the next run is a first run.

    It copies the tables again (unless snapshot: never), then streams: a PostgreSQL
    source from its slot when the slot is kept (--keep-slot: nothing written since
    the slot's position is skipped), from now when it is dropped; a MySQL source from
    the end of the binlog (what was written since the position is not delivered)."""
    cfg = load_or_exit(config)
    source_name = pick_source(cfg, source_name, config)
    if not yes:
        click.confirm(f"Forget the position of source {source_name}?", abort=True)
    old = _positions_call(positions.reset, cfg, source_name)
    if isinstance(old, positions.Refused):
        click.echo(f"source {source_name}: checkpoint forgotten ({old.why}); it held: {str(old)!r}")
    elif old is None:
        click.echo(f"source {source_name}: no position was saved (nothing to forget)")
    else:
        click.echo(f"source {source_name}: position {json.dumps(old)} forgotten")
    slot = _positions_call(positions.slot_of, cfg, source_name)
    if slot is None:
        return
    if drop_slot is None:
        drop_slot = (not yes) and click.confirm(f"Also drop replication slot {slot} (its WAL is released)?",
                                                default=False)
    if drop_slot:
        try:
            dropped = positions.drop_slot(cfg, source_name)
        except (PositionError, CdcError) as exc:
            fail(f"the position is forgotten, but slot {slot} was not dropped: {exc}. It still holds WAL on the "
                 f"server: once it can be reached, run `cdc checkpoint reset {config} --source {source_name} "
                 f"--drop-slot --yes`")
        click.echo(f"slot {slot} {'dropped' if dropped else 'did not exist'}")
