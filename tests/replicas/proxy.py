"""A TCP proxy between replicas and PostgreSQL whose upstream can be
switched, as a failover moves the database's address to another server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

CHUNK = 65536


class SwitchingProxy:
    """Listens on 127.0.0.1 and forwards each connection to the current
    upstream port; ``switch`` cuts every open connection and sends new ones
    to another port."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = 0
        self._pipes: set[asyncio.Task[None]] = set()

    async def switch(self, upstream: int) -> None:
        """From now on connect to ``upstream``; connections to the old one
        are cut, as a failed server's are."""
        self.upstream = upstream
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Forwards one client connection until either side closes."""
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.upstream
            )
        except OSError:
            writer.close()
            self._pipes.discard(task)
            return
        try:
            await asyncio.gather(pump(reader, upstream_writer), pump(upstream_reader, writer))
        except asyncio.CancelledError:
            pass
        finally:
            for side in (writer, upstream_writer):
                side.transport.abort()
            self._pipes.discard(task)


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copies ``reader`` to ``writer`` until either side closes, then cuts ``writer``."""
    with contextlib.suppress(OSError):
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()


@contextlib.asynccontextmanager
async def switching_proxy(upstream: int) -> AsyncIterator[SwitchingProxy]:
    """A running ``SwitchingProxy`` to ``upstream``, closed on exit."""
    proxy = SwitchingProxy(upstream)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    proxy.port = server.sockets[0].getsockname()[1]
    try:
        yield proxy
    finally:
        server.close()
        await proxy.switch(upstream)
        await server.wait_closed()
