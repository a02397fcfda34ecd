"""``http``: POST events to a webhook as JSON, acknowledged by a 2xx response.

- Body: with ``batch_size: 1`` one JSON object per request and an ``Idempotency-Key``
  header holding the event id; otherwise a JSON array whose elements carry their ids.
  The change envelope, or the message body (see ``content``), batched as
  ``{"id": ..., "type": ..., "payload": ...}``.
- ``url`` may be a template (``https://hooks.example/{destination}``): consecutive
  events for the same URL share a request, and order is kept.  Field values are
  percent-encoded (``/``, ``?``, ``#`` and ``&`` included), ``.`` and ``..`` are refused,
  and fields may only appear after the host: an event can never pick the server or
  climb the path.  A refused value is a permanent error for that event.
- ``content``: ``auto`` (default: outbox messages as their payload, other events as
  envelopes), ``envelope`` or ``payload``.  The payload of an ordinary row change is
  ``after``, or for a delete ``before`` (the old row, or at least its key).
- ``secret``: Standard Webhooks signing.  Headers ``webhook-id``,
  ``webhook-timestamp`` (unix seconds) and ``webhook-signature: v1,<base64
  HMAC-SHA256(key, "{id}.{timestamp}.{body}")>``; a ``whsec_``-prefixed secret is
  base64-decoded to get the key, any other secret is used as UTF-8 bytes.
- Failures: network errors, timeouts, 408, 429 and 5xx are transient (retried with
  backoff and jitter by the sink worker, honouring ``Retry-After``); any other
  non-2xx status is permanent and goes to the sink's ``on_error`` policy.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Sequence
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import orjson

from ..config.model import Context
from ..errors import PermanentSinkError, TransientSinkError
from ..event import ChangeEvent
from ..templates import Template, UnsafeValue, url_part
from ._logs import route_library_logs
from ._message import Content, is_message, payload_of

if TYPE_CHECKING:
    import httpx

__all__ = ["HttpSink", "sign"]

_TRANSIENT_STATUS = {408, 425, 429}

route_library_logs("httpx", "cdc.sink.http.httpx")
route_library_logs("httpcore", "cdc.sink.http.httpx")


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks ``webhook-signature`` value."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class HttpSink:
    default_batch_size = 100

    def __init__(self, url: str, timeout: float = 10.0, headers: dict[str, str] | None = None,
                 secret: str | None = None, content: Content = "auto",
                 context: Context | None = None) -> None:
        self.name = context.name if context else "http"
        self.template = Template(url, "url", encode=url_part)
        prefix = urlsplit(self.template.prefix)
        if not self.template.is_constant and not (prefix.netloc and prefix.path.startswith("/")):
            raise PermanentSinkError("url: template fields may only follow the host"
                                     " (https://host/path/{destination}), never choose it", sink=self.name)
        self.timeout = timeout
        self.headers = {"Content-Type": "application/json", "User-Agent": "cdc", **(headers or {})}
        self.key = None
        if secret:
            self.key = base64.b64decode(secret[6:]) if secret.startswith("whsec_") else secret.encode()
        self.content = content
        self.client: httpx.Client | None = None

    def open(self) -> None:
        import httpx
        self.client = httpx.Client(timeout=self.timeout, follow_redirects=False)

    def _element(self, e: ChangeEvent) -> object:
        if not is_message(e, self.content):
            return e.to_dict()
        return {"id": e.id, "type": (e.message or {}).get("type"), "payload": payload_of(e)}

    def _url(self, event: ChangeEvent) -> str:
        try:
            return self.template.render(event)
        except UnsafeValue as exc:
            raise PermanentSinkError(f"event {event.id}: url template: {exc}", sink=self.name,
                                     events=[event]) from None

    def write(self, events: Sequence[ChangeEvent]) -> None:
        urls = [self._url(e) for e in events]  # every value checked before anything is sent
        start = 0
        while start < len(events):  # one request per run of events with the same URL
            url = urls[start]
            end = start + 1
            while end < len(events) and urls[end] == url:
                end += 1
            self._post(url, events[start:end])
            start = end

    def _post(self, url: str, events: Sequence[ChangeEvent]) -> None:
        import httpx
        if len(events) == 1:
            e = events[0]
            body = orjson.dumps(payload_of(e)) if is_message(e, self.content) else e.to_json()
            msg_id = e.id
        else:
            body = orjson.dumps([self._element(e) for e in events])
            msg_id = hashlib.sha256("\n".join(e.id for e in events).encode()).hexdigest()[:32]
        headers = dict(self.headers)
        headers["Idempotency-Key"] = msg_id
        headers["webhook-id"] = msg_id
        if self.key is not None:
            ts = int(time.time())
            headers["webhook-timestamp"] = str(ts)
            headers["webhook-signature"] = sign(self.key, msg_id, ts, body)
        if self.client is None:
            self.open()
        try:
            response = self.client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:  # connect/read timeouts, refused, reset
            raise TransientSinkError(f"POST {url}: {type(exc).__name__}: {exc}", sink=self.name,
                                     events=list(events)) from exc
        status = response.status_code
        if 200 <= status < 300:
            return
        text = response.text[:200]
        if status >= 500 or status in _TRANSIENT_STATUS:
            raise TransientSinkError(f"POST {url}: HTTP {status}: {text}", sink=self.name, events=list(events),
                                     retry_after=_retry_after(response.headers.get("Retry-After")))
        raise PermanentSinkError(f"POST {url}: HTTP {status}: {text}", sink=self.name, events=list(events))

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
