"""A real local HTTP server (http.server in a thread on 127.0.0.1) for the HTTP sink's
tests; it can be told to fail: ``fail_next(503, n=2)`` or ``reject(b"poison", 400)``."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson


class Request:
    def __init__(self, path: str, headers: dict, body: bytes, status: int) -> None:
        self.path, self.headers, self.body, self.status = path, headers, body, status

    @property
    def json(self):
        return orjson.loads(self.body)


class WebhookServer:
    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._failures: list[tuple[int, dict]] = []
        self._rejects: dict[bytes, int] = {}
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, headers = owner._decide(body)
                with owner._lock:
                    owner.requests.append(Request(self.path, {k.lower(): v for k, v in self.headers.items()},
                                                  body, status))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def _decide(self, body: bytes) -> tuple[int, dict]:
        with self._lock:
            if self._failures:
                return self._failures.pop(0)
            for needle, status in self._rejects.items():
                if needle in body:
                    return status, {}
        return 200, {}

    def fail_next(self, status: int, n: int = 1, headers: dict | None = None) -> None:
        with self._lock:
            self._failures.extend([(status, headers or {})] * n)

    def reject(self, needle: bytes, status: int = 400) -> None:
        """Answer ``status`` to every request whose body contains ``needle``."""
        with self._lock:
            self._rejects[needle] = status

    def accept_all(self) -> None:
        with self._lock:
            self._rejects.clear()
            self._failures.clear()

    @property
    def accepted(self) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if 200 <= r.status < 300]

    def __enter__(self) -> WebhookServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
