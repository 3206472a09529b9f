"""A TCP relay in front of a real server (a broker), so a test can take "the broker" down and bring
it back on the same port: new connections are refused and open ones cut, as in a real outage."""

from __future__ import annotations

import asyncio


class Relay:
    """A TCP relay to a server that can be taken down (refusing, and cutting connections)."""

    def __init__(self, host: str, port: int, *, scheme: str) -> None:
        self.host, self.upstream, self.scheme = host, port, scheme
        self.server: asyncio.Server | None = None
        self.port = 0
        self.links: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.close()
        for writer in list(self.links):  # before wait_closed, which waits for open connections
            writer.close()
        self.links.clear()
        if server is not None:
            await server.wait_closed()

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.upstream)
        self.links |= {writer, up_writer}
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()
