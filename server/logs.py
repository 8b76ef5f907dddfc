"""Structured log lines: one JSON object per line, or plain text for people.

Fields passed through ``extra=`` become keys of the JSON object. Nothing here
filters secrets: the code never passes them in the first place.

Either format keeps a record on one line whatever it holds, so a value from a
caller (a newline in a token's ``sub``) cannot forge a line of its own: JSON
escapes control characters, and the text format writes them as escapes too.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import textwrap
from datetime import UTC, datetime
from typing import Any

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line with its ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD_ATTRS and not name.startswith("_"):
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value ...`` for a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(
            f"{_escaped(name)}={_escaped(str(value))}"
            for name, value in vars(record).items()
            if name not in _STANDARD_ATTRS and not name.startswith("_")
        )
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S.%f")[:-3]
        message = _escaped(record.getMessage())
        text = f"{stamp} {record.levelname.lower():7} {record.name}: {message}"
        if fields:
            text += " " + fields
        if record.exc_info:
            # Indented, so that no line of a traceback (which may quote a
            # value) reads as a record of its own.
            text += "\n" + textwrap.indent(self.formatException(record.exc_info), "    ")
        return text


def _escaped(text: str) -> str:
    """``text`` with every control character written as its escape."""
    return _CONTROL.sub(lambda found: found.group().encode("unicode_escape").decode(), text)


# Database drivers log statements with their parameters at DEBUG; a parameter
# can be a secret someone pasted into the wrong field.
_PARAMETER_LOGGERS = ("aiosqlite", "asyncpg", "sqlalchemy.engine", "sqlalchemy.pool")


def quiet_parameter_loggers() -> None:
    """Caps the loggers that would print statement parameters at WARNING."""
    for name in _PARAMETER_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def configure_logging(level: str, fmt: str) -> None:
    """Sends every log line to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    quiet_parameter_loggers()
