"""Reading the change feed in tests: every page from a position on, as one."""

from __future__ import annotations

from typing import Any

from server.domain.records import ChangePage, FeedPosition
from server.store import SqlKeyStore


async def read_changes(
    store: SqlKeyStore, position: FeedPosition, *, limit: int = 100
) -> ChangePage:
    """Every page from ``position`` on, as one page (flags of any page)."""
    changes: list[Any] = []
    missed = reset = False
    while True:
        page = await store.changes_since(position, limit=limit)
        changes.extend(page.changes)
        missed, reset = missed or page.missed, reset or page.reset
        position = page.position
        if not page.more:
            return ChangePage(
                changes=tuple(changes),
                position=position,
                mark=page.mark,
                missed=missed,
                reset=reset,
            )
