"""Serving the console with uvicorn on a socket bound up front, so that a
port in use is a start-up error and port 0 tells which port it picked."""

from __future__ import annotations

import logging
import socket

import uvicorn

from console._app import create_app
from console._settings import ConsoleSettings

__all__ = ["ConsoleServer"]


class ConsoleServer:
    """The console's HTTP server. Binding happens in the constructor
    (``OSError`` when the address is taken); :meth:`serve` runs until
    :meth:`stop`."""

    def __init__(self, settings: ConsoleSettings) -> None:
        family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
        self._socket = socket.create_server((settings.host, settings.port), family=family)
        self.host = settings.host
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn.Config(
            create_app(settings),
            # The application logs each request itself, without query strings.
            access_log=False,
            log_config=None,
            lifespan="off",
            server_header=False,
        )
        # Off for good, not only unhandled: its lines carry query strings.
        logging.getLogger("uvicorn.access").disabled = True
        self._server = uvicorn.Server(config)

    @property
    def url(self) -> str:
        """The console's base URL, e.g. ``http://127.0.0.1:8080``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def started(self) -> bool:
        """Whether it answers requests yet."""
        return self._server.started

    async def serve(self) -> None:
        """Serves until :meth:`stop`; closes the socket afterwards."""
        try:
            await self._server.serve(sockets=[self._socket])
        finally:
            self._socket.close()

    def stop(self) -> None:
        """Asks :meth:`serve` to finish the requests in flight and return."""
        self._server.should_exit = True
