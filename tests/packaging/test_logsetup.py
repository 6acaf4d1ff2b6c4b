"""Structured logs: one line per event, key=value or JSON."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from csnapd.logsetup import kv_quote, make_formatter, setup_logging


def record(msg: str, *args, exc: bool = False, **extra) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            import sys

            exc_info = sys.exc_info()
    rec = logging.LogRecord("csnapd.net", logging.WARNING, __file__, 1, msg, args, exc_info)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_kv_line():
    line = make_formatter("kv").format(record("closing connection %d from %s", 3, "peer x"))
    assert re.fullmatch(r'ts=\S+Z level=warning logger=csnapd\.net '
                        r'msg="closing connection 3 from peer x"', line)


def test_kv_quoting():
    assert kv_quote("plain") == "plain"
    assert kv_quote("") == '""'
    assert kv_quote('say "hi"') == '"say \\"hi\\""'
    assert kv_quote("a=b") == '"a=b"'
    assert kv_quote(7) == "7"


def test_json_line_with_extra_fields_and_exception():
    fmt = make_formatter("json")
    line = fmt.format(record("store full: %s", "squashing", exc=True, conn=4))
    assert "\n" not in line
    event = json.loads(line)
    assert event["level"] == "warning" and event["logger"] == "csnapd.net"
    assert event["msg"] == "store full: squashing"
    assert event["conn"] == 4
    assert "boom\nsecond line" in event["exc"]


def test_kv_exception_stays_on_one_line():
    line = make_formatter("kv").format(record("failed", exc=True))
    assert "\n" not in line and "exc=" in line and "boom\\nsecond line" in line


def test_unknown_format():
    with pytest.raises(ValueError, match="json"):
        make_formatter("xml")


def test_setup_logging_replaces_handlers_and_sets_the_level():
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    try:
        out = io.StringIO()
        setup_logging("warning", "json", stream=out)
        setup_logging("warning", "json", stream=out)  # twice: still one handler
        logging.getLogger("csnapd").info("hidden")
        logging.getLogger("csnapd").warning("shown %d", 1)
        lines = out.getvalue().splitlines()
        assert [json.loads(x)["msg"] for x in lines] == ["shown 1"]
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved:
            root.addHandler(h)
        root.setLevel(level)
