"""The console against the real server: both in-process on port 0, the
console served by uvicorn in the test's event loop, driven over HTTP by
httpx or in Debian's chromium by Playwright.

Chromium is never skipped: ``make test`` installs it (``make chromium``), and
a machine without it fails these tests with that advice.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, async_playwright

from clients import AsyncAuthorizeClient, AsyncKeyAdminClient, ChannelOptions, Decision
from console import CSRF_COOKIE, ConsoleServer, load_settings
from tests.harness import Harness, running_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs"


def screenshots_wanted() -> bool:
    """``make screenshots`` sets ``APIKEYS_SCREENSHOTS=1`` to refresh the
    README's pictures; other runs leave the committed files alone."""
    return os.environ.get("APIKEYS_SCREENSHOTS") == "1"


@dataclass
class Stack:
    """A server, a console in front of it, and what a test needs of both."""

    harness: Harness
    console: ConsoleServer

    @property
    def url(self) -> str:
        return self.console.url

    def token(self, **claims: Any) -> str:
        claims.setdefault("contact_center", "cc-dev")
        return self.harness.token(**claims)

    def admin(self, **claims: Any) -> AsyncKeyAdminClient:
        """A client of the server acting for an admin of the console's contact center."""
        return AsyncKeyAdminClient(self.options(), token=self.token(**claims))

    def options(self) -> ChannelOptions:
        return ChannelOptions(target=self.harness.target, timeout=5.0)

    async def check(self, secret: str, method: str, path: str) -> Decision:
        """What ``Authorize.Check`` answers for the key right now."""
        async with AsyncAuthorizeClient(self.options()) as authorize:
            return await authorize.check(secret, method, path)

    def http(self, token: str | None = None) -> httpx.AsyncClient:
        """An HTTP client of the console; with ``token`` as the sign-in proxy would send it."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, follow_redirects=False)


@asynccontextmanager
async def running_console(
    harness: Harness, args: Sequence[str] = ()
) -> AsyncIterator[ConsoleServer]:
    """The console on 127.0.0.1:0 in front of ``harness``'s server."""
    settings = load_settings(
        [
            "--listen",
            "127.0.0.1:0",
            "--server",
            harness.target,
            "--data-dir",
            str(harness.data_dir),
            *args,
        ],
        environ={},
    )
    console = ConsoleServer(settings)
    serving = asyncio.create_task(console.serve())
    try:
        async with asyncio.timeout(10):
            while not console.started:
                if serving.done():
                    serving.result()
                await asyncio.sleep(0.01)
        yield console
    finally:
        console.stop()
        await serving


@asynccontextmanager
async def running_stack(directory: Path, console_args: Sequence[str] = ()) -> AsyncIterator[Stack]:
    async with (
        running_server(directory / "var") as harness,
        running_console(harness, console_args) as console,
    ):
        yield Stack(harness=harness, console=console)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """The console as behind the platform's sign-in proxy: tokens arrive in
    the ``Authorization`` header."""
    async with running_stack(tmp_path) as started:
        yield started


@pytest.fixture
async def dev_stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """The console with ``--dev``: it signs people in itself."""
    async with running_stack(tmp_path, ["--dev"]) as started:
        yield started


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's chromium, headless, driven by Playwright (never its own download)."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `make chromium` (make test does)", pytrace=False)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS)
        )
        try:
            yield launched
        finally:
            await launched.close()


async def new_context(
    browser: Browser, viewport: dict[str, int], token: str | None = None
) -> BrowserContext:
    """A fresh browser profile at ``viewport``, allowed to use the clipboard;
    with ``token`` every request carries it, as behind the sign-in proxy."""
    context = await browser.new_context(
        viewport=viewport,  # type: ignore[arg-type]
        permissions=["clipboard-read", "clipboard-write"],
        extra_http_headers={"Authorization": f"Bearer {token}"} if token else None,
    )
    context.set_default_timeout(10_000)
    return context


def csrf_cookie(token: str) -> dict[str, str]:
    """The cookie header that goes with ``token``: sent by hand, since httpx
    keeps the console's Secure cookies away from a plain-HTTP URL."""
    return {"Cookie": f"{CSRF_COOKIE}={token}"}
