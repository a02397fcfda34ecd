"""Keep passwords out of logs and messages."""

from __future__ import annotations

import logging
import re

__all__ = ["redact", "secrets_in", "RedactingFilter"]

_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<secret>[^@\s]+)(?=@)")
# ``user:password@host`` without its ``scheme://`` (libpq quotes such a DSN in its error)
_BARE_PASSWORD = re.compile(r"(?<![\w/:@.%+-])(?P<head>[\w.%+-]+:)(?P<secret>[^@\s/'\"]+)(?=@[\w\[])")
# not ``public.secret: ...`` (a table's name) nor MariaDB's ``(using password: YES)``
_KEY_VALUE = re.compile(r"(?P<head>(?<![\w.])(?:password|passwd|pwd|secret|token|api_key|sasl\.password)\s*[=:]\s*"
                        r"['\"]?)(?P<secret>(?!(?:YES|NO)\))[^\s'\",;&]+)", re.IGNORECASE)


_SECRET_KEY = re.compile(r"password|passwd|secret|token|api_key", re.IGNORECASE)


def redact(text: str, secrets: tuple[str, ...] | list[str] = ()) -> str:
    """``postgresql://u:pw@h`` -> ``postgresql://u:***@h`` (``u:pw@h`` too); ``password=pw`` -> ``password=***``;
    and every value in ``secrets`` (e.g. from ``secrets_in(options)``) -> ``***``."""
    if not text:
        return text
    for secret in secrets:
        if len(secret) >= 3:
            text = text.replace(secret, "***")
    text = _URL_PASSWORD.sub(r"\g<head>***", text)
    text = _BARE_PASSWORD.sub(r"\g<head>***", text)
    return _KEY_VALUE.sub(r"\g<head>***", text)


def secrets_in(options: dict) -> list[str]:
    """The secret values in a component's options: passwords inside URLs, and the
    values of keys that name a password, secret or token (nested mappings too)."""
    found: list[str] = []
    for key, value in options.items():
        if isinstance(value, dict):
            found += secrets_in(value)
        elif isinstance(value, str):
            if _SECRET_KEY.search(str(key)):
                found.append(value)
            found += [m.group("secret") for m in _URL_PASSWORD.finditer(value)]
    return found


class RedactingFilter(logging.Filter):
    """A logging filter that redacts secrets from every record's final message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True
