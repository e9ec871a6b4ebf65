"""Structured logs: one JSON object per line, extras as keys, user text escaped."""

from __future__ import annotations

import json
import logging

from sentiflow.logs import JsonFormatter


def test_json_lines_carry_extras_and_escape_control_characters() -> None:
    record = logging.LogRecord("x", logging.INFO, "f.py", 1, "got %s", ("a\r\nb",), None)
    record.doc_id = "d1"
    line = JsonFormatter("ingest").format(record)
    assert "\n" not in line
    assert "\r" not in line
    entry = json.loads(line)
    assert entry["msg"] == "got a\r\nb"
    assert entry["service"] == "ingest"
    assert entry["doc_id"] == "d1"
    assert entry["level"] == "info"
