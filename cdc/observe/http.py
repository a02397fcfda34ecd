"""``metrics: {listen: host:port}``: /metrics, /healthz and /readyz on a daemon thread."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST

from ..abc import ReportsReadiness
from .secrets import redact

__all__ = ["serve", "health", "readiness"]

log = logging.getLogger("cdc.http")
LIVENESS_TIMEOUT = 60.0  # seconds the main loop may go without a turn while nothing is in flight


def health(runner) -> tuple[bool, str]:
    """Liveness: the main loop is turning (or waiting on sinks that hold events)."""
    if runner._stop.is_set() and runner.error is not None:
        return False, f"stopping after an error: {redact(str(runner.error))}"
    idle = time.monotonic() - runner.last_tick
    if idle > LIVENESS_TIMEOUT and runner.tracker.drained:
        return False, f"main loop has not turned for {idle:.0f}s"
    return True, "ok"


def readiness(runner) -> tuple[bool, list[str]]:
    """Ready when the source and every sink are connected and their last attempt worked."""
    reasons = []
    if not runner.source_connected:
        reasons.append(f"source {runner.name}: not connected"
                       + (f": {runner.source_error}" if runner.source_error else ""))
    for w in runner.workers:
        if not w.connected:
            reasons.append(f"sink {w.name}: not connected" + (f": {w.last_error}" if w.last_error else ""))
        elif w.last_error is not None:
            reasons.append(f"sink {w.name}: {w.last_error}")
        elif isinstance(w.sink, ReportsReadiness) and (reason := w.sink.not_ready()) is not None:
            reasons.append(f"sink {w.name}: {reason}")  # e.g. the Kafka producer has no broker
    return not reasons, [redact(r) for r in reasons]


def serve(listen: str, metrics) -> ThreadingHTTPServer:
    host, _, port = listen.rpartition(":")
    runner = metrics.runner

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, metrics.render(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ok, reason = health(runner)
                self._json(200 if ok else 503, {"status": "ok" if ok else "failing", "reason": reason})
            elif path == "/readyz":
                ok, reasons = readiness(runner)
                self._json(200 if ok else 503, {"status": "ready" if ok else "not ready", "reasons": reasons})
            else:
                self._send(404, b"not found\n", "text/plain")

        def _json(self, code: int, body: dict) -> None:
            self._send(code, json.dumps(body).encode() + b"\n", "application/json")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args) -> None:
            log.debug("http: " + fmt, *args)

    server = ThreadingHTTPServer((host.strip("[]"), int(port)), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics http", daemon=True).start()
    log.info("metrics on http://%s/metrics (health: /healthz, /readyz)", listen)
    return server
