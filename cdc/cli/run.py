"""``cdc run``: one source in this process, or a supervisor for several."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time

import click

from ..config import Config
from ..config.targets import shared_target_tables
from ..errors import CdcError, ConfigError
from .common import CONFIG, fail, load_or_exit, report_config_error

__all__ = ["run", "run_source"]

log = logging.getLogger("cdc")


@click.command()
@CONFIG
@click.option("--source", "source_name", help="Run only this source (one process per source).")
@click.option("--grace-period", default=30.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds to drain in-flight events on SIGTERM.")
def run(config: str, source_name: str | None, grace_period: float) -> None:
    """Run the pipelines of CONFIG."""
    cfg = load_or_exit(config)
    from ..engine.supervisor import PARENT_ENV
    if not os.environ.get(PARENT_ENV):  # a supervised child's supervisor said it already
        for path, message in shared_target_tables(cfg, source_name):
            log.warning("%s: %s", path, message)
    if source_name is None and len(cfg.sources) > 1:
        from ..engine.supervisor import supervise
        _refuse_running(cfg)
        sys.exit(supervise(config, list(cfg.sources), grace_period))
    if source_name is None:
        source_name = next(iter(cfg.sources))
    if source_name not in cfg.sources:
        fail(f"no source named {source_name!r} in {config} (sources: {', '.join(cfg.sources)})", 2)
    sys.exit(run_source(cfg, source_name, grace_period))


def _refuse_running(cfg: Config) -> None:
    """A supervisor whose sources already run: its children would find them locked and be
    restarted for ever.  Refused at once."""
    from ..observe import SourceLock
    running = [SourceLock(cfg.state_dir, name) for name in cfg.sources]
    running = [lock for lock in running if lock.held()]
    if running:
        fail("; ".join(f"source {lock.source} is running (pid {lock.holder() or '?'})" for lock in running)
             + ": stop it first" + ("" if len(running) == len(cfg.sources) else
                                    " (or run the others, each with --source NAME)"))


def metrics_listen(cfg: Config, source_name: str) -> str | None:
    """With several sources (one process each), source i listens on port + i."""
    if not cfg.metrics_listen:
        return None
    host, _, port = cfg.metrics_listen.rpartition(":")
    return f"{host}:{int(port) + list(cfg.sources).index(source_name)}"


def _lock_keeper(lock):
    """A tick that takes the source's lock again if its file was removed (every 2 s)."""
    from ..observe import LockHeld
    last = [time.monotonic()]

    def keep(runner) -> None:
        now = time.monotonic()
        if now - last[0] < 2.0:
            return
        last[0] = now
        try:
            lock.reclaim()
        except LockHeld as exc:
            if runner.error is None:
                runner.error = CdcError(f"the lock file {lock.path} was removed while this process ran, and another "
                                        f"process took it: {exc}; two processes must not run one source: stopping "
                                        f"this one")
                log.error("%s", runner.error)
            runner.request_stop()
    return keep


def run_source(cfg: Config, source_name: str, grace_period: float) -> int:
    from ..engine import SourceRunner, tune_process
    from ..engine.supervisor import follow_supervisor
    from ..observe import LockHeld, SourceLock, attach
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

    runner.on_tick.append(_lock_keeper(lock))
    from ..snapshot.progress import ProgressBars
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
    follow_supervisor()
    tune_process()  # this process runs one source: a library embedder decides for itself
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
