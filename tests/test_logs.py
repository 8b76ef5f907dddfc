"""A log record stays one line in either format, whatever a caller put in it:
a newline in a token's ``sub`` cannot forge a line of its own."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from server.logs import JsonFormatter, TextFormatter

FORGED = "admin-1\n12:00:00.000 info    server.api.auth: admin call actor=root"
SEPARATORS = "\r\x00\x1b\x7f\x85\u2028\u2029"


def admin_call(**extra: object) -> logging.LogRecord:
    """A record as the admin interceptor logs it."""
    return logging.makeLogRecord(
        {
            "name": "server.api.auth",
            "levelno": logging.INFO,
            "levelname": "INFO",
            "msg": "admin call %s",
            "args": (FORGED,),
            **extra,
        }
    )


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
def test_control_characters_in_a_record_stay_on_its_line(formatter: logging.Formatter) -> None:
    record = admin_call(actor=FORGED, contact_center=SEPARATORS)

    line = formatter.format(record)

    assert line.splitlines() == [line]
    assert not any(character in line for character in "\n" + SEPARATORS)


def test_the_text_line_shows_the_characters_as_escapes() -> None:
    line = TextFormatter().format(admin_call(actor=FORGED, contact_center="cc\x00\u2028"))

    assert "actor=admin-1\\n12:00:00.000" in line
    assert "contact_center=cc\\x00\\u2028" in line


def test_the_json_line_keeps_the_values_exactly() -> None:
    line = JsonFormatter().format(admin_call(actor=FORGED, contact_center=SEPARATORS))

    parsed = json.loads(line)
    assert parsed["actor"] == FORGED
    assert parsed["contact_center"] == SEPARATORS
    assert parsed["message"] == f"admin call {FORGED}"


def test_a_traceback_in_the_text_format_is_indented_under_its_record() -> None:
    try:
        raise ValueError(FORGED)
    except ValueError:
        record = admin_call(exc_info=sys.exc_info())

    first, *rest = TextFormatter().format(record).splitlines()

    assert "admin call" in first
    assert rest
    assert all(line.startswith("    ") for line in rest)
