"""The ``cdc`` command: run, validate, check, status, checkpoint and demo."""

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
from .secrets import redact

__all__ = ["main"]

log = logging.getLogger("cdc")


def setup_logging(level: str, fmt: str = "text") -> None:
    from .observe.logging import setup_logging as setup
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


def metrics_listen(cfg: Config, source_name: str) -> str | None:
    """With several sources (one process each), source i listens on port + i."""
    if not cfg.metrics_listen:
        return None
    host, _, port = cfg.metrics_listen.rpartition(":")
    return f"{host}:{int(port) + list(cfg.sources).index(source_name)}"


def run_source(cfg: Config, source_name: str, grace_period: float) -> int:
    from .engine import SourceRunner
    from .observe import LockHeld, SourceLock, attach
    try:
        lock = SourceLock(cfg.state_dir, source_name).acquire()
    except LockHeld as exc:
        log.error("%s", exc)
        return 1
    except OSError as exc:
        log.error("cannot lock source %s in %s: %s", source_name, cfg.state_dir, exc.strerror)
        return 1
    try:
        runner = SourceRunner(cfg, source_name, grace_period=grace_period)
    except ConfigError as exc:
        report_config_error(exc)
        return 2
    except CdcError as exc:
        log.error("%s", exc)
        return 1
    try:
        close_observers = attach(runner, metrics_listen(cfg, source_name), cfg.state_dir)
    except OSError as exc:
        log.error("cannot serve metrics on %s: %s", metrics_listen(cfg, source_name), exc.strerror)
        return 1

    from .snapshot.progress import ProgressBars
    bars = ProgressBars(runner) if runner.snapshots is not None and ProgressBars.wanted() else None
    if bars is not None:  # a snapshot's per-table progress, on a terminal
        runner.on_tick.append(bars)

    first_signal: list[float] = []

    def on_signal(signum: int, frame: object) -> None:
        if first_signal:
            # systemd signals the whole cgroup and the supervisor forwards the same stop:
            # a repeat within half a second is that same request, not an impatient second one.
            if time.monotonic() - first_signal[0] < 0.5:
                return
            log.warning("second signal: exiting now; unacknowledged events will be read again")
            os._exit(130)
        first_signal.append(time.monotonic())
        log.info("received %s: draining in-flight events (up to %.0fs)",
                 signal.Signals(signum).name, grace_period)
        runner.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return runner.run()
    except CdcError as exc:
        runner.error = runner.error or exc
        log.error("%s", exc)
        return 1
    finally:
        if bars is not None:
            bars.close()
        close_observers()
        lock.release()


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(config: str, as_json: bool) -> None:
    """Per source and pipeline: position, checkpoint age, lag, dead letters, last error."""
    from .status import all_status, render_table
    cfg = load_or_exit(config)
    rows = all_status(cfg)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
    else:
        render_table(rows)


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def check(config: str, as_json: bool) -> None:
    """Pre-flight: check every source's settings and every sink's reachability.

    Exits 1 if anything blocks a run (warnings do not)."""
    from .check import check_config
    cfg = load_or_exit(config)
    findings = check_config(cfg)
    if as_json:
        click.echo(json.dumps([f.to_dict() for f in findings], indent=2))
    else:
        mark = {"ok": "ok   ", "warning": "WARN ", "error": "ERROR"}
        for f in findings:
            click.echo(f"{mark[f.level]} {f.area}: {f.message}")
    errors = sum(f.level == "error" for f in findings)
    if not as_json:
        warnings = sum(f.level == "warning" for f in findings)
        click.echo(f"{errors} error(s), {warnings} warning(s)" + ("" if errors else ": ready to run"))
    sys.exit(1 if errors else 0)


@main.command()
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.option("--rate", type=float, default=2.0, show_default=True, help="Orders written per second.")
def demo(duration: float | None, rate: float) -> None:
    """Start a throwaway PostgreSQL, write orders, and print the change events."""
    from .demo import run_demo
    sys.exit(run_demo(duration=duration, rate=rate))


from .cli_checkpoint import checkpoint  # noqa: E402
from .cli_dlq import dlq  # noqa: E402
from .cli_snapshot import snapshot  # noqa: E402

main.add_command(checkpoint)
main.add_command(dlq)
main.add_command(snapshot)

if __name__ == "__main__":
    main()
