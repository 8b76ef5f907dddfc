"""``IdentityMemo``: found again only by the very objects it was derived from."""

from __future__ import annotations

import gc
from dataclasses import dataclass

import pytest

from server.domain.memo import IdentityMemo


@dataclass(frozen=True)
class Thing:
    name: str


def test_a_value_is_found_by_the_same_objects() -> None:
    memo: IdentityMemo[str] = IdentityMemo()
    first, second = Thing("a"), Thing("b")
    assert memo.put("ab", first, second) == "ab"
    assert memo.get(first, second) == "ab"
    assert memo.get(first) is None
    assert memo.get(second, first) is None


def test_an_equal_but_different_object_is_a_miss() -> None:
    memo: IdentityMemo[str] = IdentityMemo()
    memo.put("a", Thing("a"))
    assert memo.get(Thing("a")) is None


def test_entries_keep_their_objects_alive_so_an_id_is_never_reused_for_a_wrong_hit() -> None:
    memo: IdentityMemo[str] = IdentityMemo()
    memo.put("first", Thing("first"))
    gc.collect()
    # Objects made now cannot take the id of the one the memo still holds.
    assert all(memo.get(Thing(f"other {n}")) is None for n in range(10_000))
    assert len(memo) == 1


def test_a_full_memo_starts_over_instead_of_growing() -> None:
    memo: IdentityMemo[int] = IdentityMemo(limit=3)
    things = [Thing(str(n)) for n in range(4)]
    for number, thing in enumerate(things):
        memo.put(number, thing)
    assert len(memo) == 1
    assert memo.get(things[3]) == 3
    assert memo.get(things[0]) is None


def test_a_memo_needs_room() -> None:
    with pytest.raises(ValueError, match="at least one"):
        IdentityMemo(limit=0)
