"""Operating cdc: Prometheus metrics, health endpoints, status files, structured logs.

Everything here reads the counters that ``SourceRunner`` and ``SinkWorker`` keep per
batch, so every source and sink reports without code of its own.
"""

from .state import LockHeld, SourceLock, StatusWriter, read_status

__all__ = ["SourceLock", "LockHeld", "read_status", "StatusWriter", "attach"]


def attach(runner, listen: str | None, status_dir):
    """Wire metrics (and the HTTP endpoint when ``listen`` is set) and the status
    file to ``runner``; returns a callable that shuts them down."""
    from .metrics import RunnerMetrics
    writer = StatusWriter(runner, status_dir)
    runner.on_tick.append(writer.tick)
    server = None
    if listen:
        from .http import serve
        metrics = RunnerMetrics(runner)
        server = serve(listen, metrics)

    def close() -> None:
        writer.write(running=False)
        if server is not None:
            server.shutdown()
            server.server_close()
    return close
