"""What a hostile or careless caller sends: arbitrary strings and sizes."""

from __future__ import annotations

import string
from typing import TypeVar

from hypothesis import strategies as st

from server.domain.admin import UPDATABLE_FIELDS
from server.domain.scopes import SCOPE_CATALOG
from tests.property.model import BASE62, KEY_BODY, KEY_PREFIX, checksum

T = TypeVar("T")

# Strings a database or a log treats specially.
AWKWARD = (
    "\x00",
    "a\x00b",
    "\x1b[2J",
    "\r\nINFO forged",
    "\u2028",
    "\u202e",
    "\ufeff",
    "\U0001f511",
    "名前",
    "%",
    "_",
    "\\",
    "' OR '1'='1",
    "%%__%%",
    " ",
    "\t",
)


def weighted(*choices: tuple[int, st.SearchStrategy[T]]) -> st.SearchStrategy[T]:
    """One of the strategies, each drawn in proportion to its weight
    (``st.one_of`` would merge repeated strategies into one branch)."""
    branches = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(range(len(branches))).flatmap(lambda index: branches[index])


def key_shaped() -> st.SearchStrategy[str]:
    """Well-formed keys (with a valid checksum) that no one issued."""
    return st.text(alphabet=BASE62, min_size=KEY_BODY, max_size=KEY_BODY).map(
        lambda body: KEY_PREFIX + body + checksum(KEY_PREFIX + body)
    )


def very_long() -> st.SearchStrategy[str]:
    """One character repeated up to 200,000 times (a few hundred KB)."""
    return st.builds(lambda char, count: char * count, st.characters(), st.integers(90, 200_000))


def text_values(*, long: bool = True) -> st.SearchStrategy[str]:
    """Anything a string field can carry: arbitrary unicode (protobuf
    refuses lone surrogates on the client, so they cannot be sent),
    control characters, boundary lengths, keys and, with ``long``, very
    long values."""
    values = [
        st.text(),
        st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=200),
        st.text(alphabet=string.printable, min_size=95, max_size=105),
        st.sampled_from(AWKWARD),
        st.builds(
            lambda head, awkward, tail: head + awkward + tail,
            st.text(max_size=5),
            st.sampled_from(AWKWARD),
            st.text(max_size=5),
        ),
        key_shaped(),
    ]
    if long:
        values.append(very_long())
    return st.one_of(values)


def claim_values() -> st.SearchStrategy[str]:
    """A token's ``sub`` or ``contact_center_id``: JSON can carry what
    protobuf cannot, lone surrogates included."""
    return st.one_of(
        text_values(long=False),
        st.text(alphabet=st.characters(codec=None), min_size=1, max_size=10),
        st.text(min_size=120, max_size=140),
    ).filter(bool)


def scope_lists() -> st.SearchStrategy[list[str]]:
    """Repeated scopes: catalog names, near misses, junk, and very many."""
    scope = st.one_of(
        st.sampled_from(sorted(SCOPE_CATALOG)),
        st.sampled_from(sorted(SCOPE_CATALOG)).map(str.upper),
        text_values(long=False),
    )
    return st.one_of(
        st.lists(scope, max_size=30),
        _many(st.one_of(st.sampled_from(sorted(SCOPE_CATALOG)), _short())),
    )


def mask_paths() -> st.SearchStrategy[list[str]]:
    """``update_mask`` paths: the updatable fields, other fields and junk."""
    path = st.one_of(
        st.sampled_from(["name", "description", "scopes", "id", "secret", "key.name", "*", ""]),
        text_values(long=False),
    )
    return st.one_of(
        st.lists(path, max_size=12), _many(st.one_of(st.sampled_from(UPDATABLE_FIELDS), _short()))
    )


def _short() -> st.SearchStrategy[str]:
    return st.one_of(st.text(max_size=30), st.sampled_from(AWKWARD))


def _many(value: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
    """One short value repeated up to 10,000 times (at most about 1 MB)."""
    return st.builds(lambda one, count: [one] * count, value, st.integers(100, 10_000))


def page_sizes() -> st.SearchStrategy[int]:
    return st.one_of(st.integers(-2, 102), st.integers(-(2**31), 2**31 - 1))
