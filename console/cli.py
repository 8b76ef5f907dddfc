"""``apikeys-console``: serves the API keys page.

Bad settings and an address in use end as one line on stderr,
``apikeys-console: <what>``, and exit status 2.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import Final

from console._server import ConsoleServer
from console._settings import SettingsError, load_settings

PROG: Final = "apikeys-console"

log = logging.getLogger("console")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the console until interrupted; returns the exit status."""
    try:
        settings = load_settings(argv)
    except SettingsError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    try:
        server = ConsoleServer(settings)
    except OSError as exc:
        print(
            f"{PROG}: cannot listen on {settings.host}:{settings.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    mode = " (development sign-in)" if settings.dev else ""
    log.info(
        "the API keys page is at %s%s, using KeyAdmin at %s",
        server.url,
        mode,
        settings.channel.target,
    )
    try:
        asyncio.run(server.serve())
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
