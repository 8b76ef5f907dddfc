from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.harness import SHARED_SECRETS, Harness, running_server


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    """The server on the embedded default (SQLite in tmp_path)."""
    async with running_server(tmp_path / "var") as started:
        yield started


@pytest.fixture
async def harness_on(tmp_path: Path, database_url: str) -> AsyncIterator[Harness]:
    """The server on each backend of ``database_url``."""
    async with running_server(
        tmp_path / "var", args=["--database-url", database_url, *SHARED_SECRETS]
    ) as started:
        yield started
