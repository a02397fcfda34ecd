"""Keep passwords out of logs and messages."""

from __future__ import annotations

import logging
import re

__all__ = ["redact", "RedactingFilter"]

_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<secret>[^@\s]+)(?=@)")
_KEY_VALUE = re.compile(r"(?P<head>\b(?:password|passwd|pwd|secret|token|api_key|sasl\.password)\s*[=:]\s*['\"]?)"
                        r"(?P<secret>[^\s'\",;&]+)", re.IGNORECASE)


def redact(text: str) -> str:
    """``postgresql://u:pw@h`` -> ``postgresql://u:***@h``; ``password=pw`` -> ``password=***``."""
    if not text:
        return text
    text = _URL_PASSWORD.sub(r"\g<head>***", text)
    return _KEY_VALUE.sub(r"\g<head>***", text)


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
