"""Which characters admin input may hold, decided before any store sees it.

The backends disagree about text they cannot store: PostgreSQL refuses a NUL
outright, SQLite keeps it and compares strings in ways a caller cannot
predict. So the domain refuses such text itself, and every backend gives the
same answer.
"""

from __future__ import annotations

import re

# Unicode's control characters (category Cc: C0, DEL and C1), the line and
# paragraph separators, which break a line as a newline does, and lone
# surrogates, which no backend can encode (a JSON token claim can carry one).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def has_control_characters(text: str, *, allowed: frozenset[str] = frozenset()) -> bool:
    """Whether ``text`` holds a control character, line or paragraph
    separator or lone surrogate other than those in ``allowed``."""
    return any(match.group() not in allowed for match in _CONTROL.finditer(text))
