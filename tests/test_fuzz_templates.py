"""Template fuzzing (issue 12): random template values (``/``, ``..``, ``%``, unicode,
NUL, dots, spaces) never write outside the file sink's directory and never change an
HTTP request's host or path prefix.  A value either lands as data or the event is a
permanent error for the error policy; nothing goes anywhere else.  Real destinations:
a directory and a local HTTP server."""

from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_templates_safety import outbox_message

from cdc.config import Context
from cdc.errors import PermanentSinkError
from cdc.sinks.file import FileSink
from cdc.sinks.http import HttpSink

from webhook_server import WebhookServer

NASTY = st.sampled_from(["/", "..", ".", "%", "%2F", "\0", "\\", "?", "#", "&", "=", " ", "é", "…", "😀",
                         "\u202e", "\n", "~", "$", "{", "}", "a", "b", "-"])
VALUES = st.lists(NASTY, min_size=1, max_size=8).map("".join) | st.text(min_size=1, max_size=12)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=VALUES)
def test_file_sink_never_writes_outside_its_directory(tmp_path_factory, value):
    root = tmp_path_factory.mktemp("fuzz")
    base = root / "a" / "b"
    base.mkdir(parents=True)
    sink = FileSink("out/{destination}.jsonl", context=Context(base, name="f"))
    sink.open()
    try:
        sink.write([outbox_message(value)])
        written = True
    except PermanentSinkError:
        written = False
    finally:
        sink.close()
    files = [p for p in root.rglob("*") if p.is_file()]
    out = (base / "out").resolve()
    for f in files:
        assert os.path.commonpath([f.resolve(), out]) == str(out), f"{value!r} wrote {f}"
    assert len(files) == (1 if written else 0), (value, files)
    if written:
        assert files[0].name == value + ".jsonl", (value, files)


def test_http_sink_never_changes_host_or_path_prefix():
    values: list[str] = []

    @settings(max_examples=150, deadline=None)
    @given(value=VALUES)
    def send(value):
        try:
            sink.write([outbox_message(value)])
            values.append(value)
        except PermanentSinkError:
            pass

    with WebhookServer() as server:
        sink = HttpSink(server.url + "/events/{destination}?kind={message_type}")
        sink.open()
        try:
            send()
        finally:
            sink.close()
        host = urlsplit(server.url).netloc
    assert values, "no value was sent at all"
    assert len(server.requests) == len(values)
    for request, value in zip(server.requests, values):
        url = urlsplit(request.path)
        assert url.path.startswith("/events/") and url.path.count("/") == 2, (value, request.path)
        assert unquote(url.path.removeprefix("/events/")) == value, (value, request.path)
        assert url.query.startswith("kind=") and "&" not in url.query, (value, request.path)
        assert request.headers.get("host") == host, (value, request.headers)

