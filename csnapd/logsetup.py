"""Logging for csnapd: one line per event on standard error, key=value or JSON.

``kv`` (the default) writes logfmt-style lines::

    ts=2026-11-22T10:15:02.123Z level=info logger=csnapd msg="store closed cleanly"

``json`` writes one JSON object per line with the same fields (``ts``, ``level``,
``logger``, ``msg``), plus ``exc`` when a traceback is attached and any fields
passed with ``extra={...}``.  Values that would break a line (newlines in a
traceback, quotes) are escaped, so every event is exactly one line either way,
which is what journald, Docker's log drivers and log shippers want.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

FORMATS = ("kv", "json")
# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime",
                                                                          "taskName"}


def _timestamp(record: logging.LogRecord) -> str:
    """UTC, ISO 8601, millisecond precision."""
    secs = int(record.created)
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
            + f".{int((record.created - secs) * 1000):03d}Z")


def _fields(record: logging.LogRecord, formatter: logging.Formatter) -> dict[str, Any]:
    fields: dict[str, Any] = {"ts": _timestamp(record), "level": record.levelname.lower(),
                              "logger": record.name, "msg": record.getMessage()}
    for key, value in vars(record).items():
        if key not in _STANDARD and not key.startswith("_") and key not in fields:
            fields[key] = value
    if record.exc_info:
        fields["exc"] = formatter.formatException(record.exc_info)
    elif record.exc_text:
        fields["exc"] = record.exc_text
    if record.stack_info:
        fields["stack"] = record.stack_info
    return fields


def kv_quote(value: Any) -> str:
    """A value as logfmt writes it: bare when safe, else double-quoted with escapes."""
    text = value if isinstance(value, str) else str(value)
    if text and not any(c in text for c in ' ="\\\n\r\t') and text.isprintable():
        return text
    return json.dumps(text, ensure_ascii=False)


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=... logger=... msg="..."`` (logfmt), one line per record."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={kv_quote(v)}" for k, v in _fields(record, self).items())


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record, self), default=str, ensure_ascii=False)


def make_formatter(fmt: str) -> logging.Formatter:
    """The formatter for ``fmt`` ("kv" or "json")."""
    if fmt == "kv":
        return KeyValueFormatter()
    if fmt == "json":
        return JsonFormatter()
    raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")


def setup_logging(level: str = "info", fmt: str = "kv", stream: TextIO | None = None) -> None:
    """Send every log record at ``level`` or above to ``stream`` (standard error) as ``fmt``.

    Replaces any handlers already on the root logger, so calling it twice is safe.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(make_formatter(fmt))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))


__all__ = ["FORMATS", "JsonFormatter", "KeyValueFormatter", "kv_quote", "make_formatter",
           "setup_logging"]
