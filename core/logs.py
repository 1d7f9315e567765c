"""Logging setup: plain text or one JSON object per line, and secrets never written.

Every handler gets a filter that replaces the value of any configured secret (tokens, keys)
found in a record's message, arguments or traceback with "[redacted]", so a token that slips
into an exception message or a library's debug line does not reach the log.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime

REDACTED = "[redacted]"


class RedactSecrets(logging.Filter):
    def __init__(self, secrets: Iterable[str | None]):
        super().__init__()
        # Longest first, so a secret containing another is replaced whole; short values (a
        # misconfigured "x") would mangle every line and are not worth hiding.
        self.secrets = sorted({s for s in secrets if s and len(s) >= 8}, key=len, reverse=True)

    def _clean(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg = self._clean(record.getMessage())
            record.args = None
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = self._clean(record.exc_text)
            record.exc_info = None if record.exc_text else record.exc_info
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(*, level: int, fmt: str = "text", secrets: Iterable[str | None] = (),
                  stream=None) -> logging.Handler:
    """Install our handler on the root logger (replacing the one a previous call installed, and
    leaving other handlers, like a test runner's, alone); returns it."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        JsonFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    handler.addFilter(RedactSecrets(secrets))
    handler.set_name("search-all")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "search-all"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
