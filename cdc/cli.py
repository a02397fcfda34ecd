"""The ``cdc`` command: run, validate, status and demo."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time

import click

from .config import Config, load_config
from .errors import CdcError, ConfigError
from .secrets import RedactingFilter, redact

__all__ = ["main"]

log = logging.getLogger("cdc")


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", default=lambda: os.environ.get("CDC_LOG_LEVEL", "info"),
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
              help="Log level (env CDC_LOG_LEVEL).")
@click.version_option(package_name="cdc")
def main(log_level: str) -> None:
    """Change data capture: PostgreSQL and MySQL changes to files, brokers and APIs."""
    setup_logging(log_level)


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
def validate(config: str) -> None:
    """Check CONFIG; print every problem with its key path."""
    cfg = load_or_exit(config)
    click.echo(f"{config}: valid ({len(cfg.sources)} source(s), {len(cfg.pipelines)} pipeline(s))")


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--source", "source_name", help="Run only this source (one process per source).")
@click.option("--grace-period", default=30.0, show_default=True,
              help="Seconds to drain in-flight events on SIGTERM.")
def run(config: str, source_name: str | None, grace_period: float) -> None:
    """Run the pipelines of CONFIG."""
    cfg = load_or_exit(config)
    if source_name is None and len(cfg.sources) > 1:
        from .supervisor import supervise
        sys.exit(supervise(config, list(cfg.sources), grace_period))
    if source_name is None:
        source_name = next(iter(cfg.sources))
    if source_name not in cfg.sources:
        fail(f"no source named {source_name!r} in {config} (sources: {', '.join(cfg.sources)})", 2)
    sys.exit(run_source(cfg, source_name, grace_period))


def run_source(cfg: Config, source_name: str, grace_period: float) -> int:
    from .engine import SourceRunner
    try:
        runner = SourceRunner(cfg, source_name, grace_period=grace_period)
    except ConfigError as exc:
        report_config_error(exc)
        return 2
    except CdcError as exc:
        log.error("%s", exc)
        return 1

    def on_signal(signum: int, frame: object) -> None:
        if runner._stop.is_set():
            log.warning("second signal: exiting now; unacknowledged events will be read again")
            os._exit(130)
        log.info("received %s: draining in-flight events (up to %.0fs)",
                 signal.Signals(signum).name, grace_period)
        runner.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return runner.run()
    except CdcError as exc:
        log.error("%s", exc)
        return 1


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(config: str, as_json: bool) -> None:
    """Each source's checkpoint, its age and the replication lag."""
    from .status import source_status
    cfg = load_or_exit(config)
    rows = [source_status(cfg, name) for name in cfg.sources]
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    for row in rows:
        age = row.get("checkpoint_age_s")
        click.echo(f"{row['source']} ({row['type']})")
        click.echo(f"  checkpoint: {row.get('position') or 'none'}"
                   + (f"  (saved {age:.0f}s ago)" if age is not None else ""))
        for key, label in (("lag_bytes", "lag"), ("slot", "slot"), ("error", "error")):
            if row.get(key) is not None:
                suffix = " bytes" if key == "lag_bytes" else ""
                click.echo(f"  {label}: {row[key]}{suffix}")


@main.command()
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.option("--rate", type=float, default=2.0, show_default=True, help="Orders written per second.")
def demo(duration: float | None, rate: float) -> None:
    """Start a throwaway PostgreSQL, write orders, and print the change events."""
    from .demo import run_demo
    sys.exit(run_demo(duration=duration, rate=rate))


from .cli_dlq import dlq  # noqa: E402

main.add_command(dlq)

if __name__ == "__main__":
    main()
