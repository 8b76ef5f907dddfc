"""``IdentityMemo``: answers derived from objects, found again by the objects'
identity.

The ``Check`` path derives a value (a decision, a response message) from
objects that never change while they live: a cached key record, a route of
the table, a decision. Hashing such an object by its fields costs more than
deriving the value again; its ``id()`` costs nothing. An ``id()`` is unique
only while its object lives, so each entry holds the objects it was derived
from (their ids cannot be handed to another object while the entry exists)
and a hit also checks identity, so an entry can only ever be a miss, never a
wrong answer.

Use it only for values that are a function of their objects alone: every
input of the derived value must be one of the objects (or unchanging for as
long as they live), and the objects must be immutable.
"""

from __future__ import annotations

from typing import Generic, TypeVar

V = TypeVar("V")

DEFAULT_LIMIT = 4096


class IdentityMemo(Generic[V]):
    """A bounded map from one or two immutable objects to a value derived from them.

    When full it forgets everything at once: the working set of the ``Check``
    path is small, so a clear is rare and cheaper than tracking recency.
    """

    __slots__ = ("_entries", "_limit")

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        if limit < 1:
            raise ValueError("an identity memo needs room for at least one entry")
        self._limit = limit
        self._entries: dict[tuple[int, int], tuple[object, object, V]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, first: object, second: object = None) -> V | None:
        """The value remembered for exactly these objects, or ``None``."""
        entry = self._entries.get((id(first), id(second)))
        if entry is None or entry[0] is not first or entry[1] is not second:
            return None
        return entry[2]

    def put(self, value: V, first: object, second: object = None) -> V:
        """Remembers ``value`` for these objects and returns it."""
        if len(self._entries) >= self._limit:
            self._entries.clear()
        self._entries[(id(first), id(second))] = (first, second, value)
        return value
