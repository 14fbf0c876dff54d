"""A hostile stand-in for the vendor's LeadList endpoint: a real HTTP server on 127.0.0.1 that
answers exactly what a test tells it to, down to the bytes, headers and framing, including
decompression bombs that are produced lazily, so a client that stops reading early is visible
(`Bomb.blocks_sent` stays far below `Bomb.blocks`).

    async with HostileApi() as api:
        api.answer(200, b'{"Data": []}', headers={"Retry-After": "5"})
        ... LeadListClient(http, api.base_url, ...) ...

Framings: "length" (Content-Length), "chunked" (Transfer-Encoding: chunked), and "close"
(neither: the body ends when the server closes the connection, which aiohttp's own server only
does for HTTP/1.0, so that one is written on a raw asyncio socket)."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

from aiohttp import web

from notifier.api import LEADLIST_PATH

Framing = Literal["length", "chunked", "close"]


@dataclass
class Bomb:
    """`blocks` blocks of `block_size` zero bytes, gzip- or deflate-compressed (about 1,000:1),
    yielded one compressed block at a time. The trailer (CRC/size or Adler-32) is computed only
    if a reader gets that far, so the stream is valid whatever its size."""

    encoding: Literal["gzip", "deflate"] = "gzip"
    blocks: int = 64
    block_size: int = 1 << 20
    blocks_sent: int = 0
    finished: bool = False
    _parts: tuple[bytes, bytes] | None = field(default=None, repr=False)

    @property
    def decoded_size(self) -> int:
        return self.blocks * self.block_size

    def parts(self) -> tuple[bytes, bytes]:
        """(first block with the header, every further block): after a full flush the
        compressor starts afresh, so every further block is the same bytes."""
        if self._parts is None:
            zeros = bytes(self.block_size)
            compressor = zlib.compressobj(9, zlib.DEFLATED, 31 if self.encoding == "gzip" else 15)
            first = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
            again = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
            assert first.endswith(again)
            self._parts = (first, again)
        return self._parts

    def compressed_size(self) -> int:
        first, again = self.parts()
        trailer = 2 + (8 if self.encoding == "gzip" else 4)
        return len(first) + (self.blocks - 1) * len(again) + trailer

    def _trailer(self) -> bytes:
        zeros = bytes(self.block_size)
        if self.encoding == "gzip":
            crc = 0
            for _ in range(self.blocks):
                crc = zlib.crc32(zeros, crc)
            return b"\x03\x00" + struct.pack("<II", crc, self.decoded_size & 0xFFFFFFFF)
        adler = 1
        for _ in range(self.blocks):
            adler = zlib.adler32(zeros, adler)
        return b"\x03\x00" + struct.pack(">I", adler)

    async def stream(self) -> AsyncIterator[bytes]:
        first, again = self.parts()
        for index in range(self.blocks):
            yield first if index == 0 else again
            self.blocks_sent += 1
        yield self._trailer()
        self.finished = True


@dataclass
class Answer:
    status: int = 200
    body: bytes | Bomb = b'{"Data": [], "Success": true, "Code": 200, "Message": ""}'
    headers: dict[str, str] = field(default_factory=dict)
    framing: Framing = "length"


class HostileApi:
    """Serves `answers` in order (the last one again once they run out) on LeadListPath; every
    request body is kept in `requests`. `done` is set whenever a streamed answer has ended,
    whether by its end or by the client going away (`errors` says which)."""

    def __init__(self) -> None:
        self.answers: list[Answer] = [Answer()]
        self.requests: list[bytes] = []
        self.errors: list[str] = []
        self.done = asyncio.Event()
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        self._raw: asyncio.Server | None = None
        self._raw_url = ""

    def answer(self, status: int = 200, body: bytes | Bomb = b"", headers: dict[str, str] | None = None,
               framing: Framing = "length") -> Answer:
        """Replace every answer with this one."""
        self.answers = [Answer(status, body, dict(headers or {}), framing)]
        return self.answers[0]

    def _next(self) -> Answer:
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    async def __aenter__(self) -> HostileApi:
        app = web.Application()
        app.router.add_post(LEADLIST_PATH, self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}"
        self._raw = await asyncio.start_server(self._handle_raw, "127.0.0.1", 0)
        raw_port = self._raw.sockets[0].getsockname()[1]
        self._raw_url = f"http://127.0.0.1:{raw_port}"
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._raw is not None:
            self._raw.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._raw.wait_closed(), 5)
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        """Where a client should send its request: the raw server when the next answer is
        close-delimited, aiohttp's otherwise."""
        return self._raw_url if self.answers[0].framing == "close" else self.base_url

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(await request.read())
        answer = self._next()
        if isinstance(answer.body, bytes):
            return web.Response(status=answer.status, body=answer.body, headers=answer.headers)
        bomb = answer.body
        response = web.StreamResponse(status=answer.status, headers={
            **answer.headers, "Content-Encoding": bomb.encoding, "Content-Type": "application/json"})
        if answer.framing == "length":
            response.content_length = bomb.compressed_size()
        else:
            response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            async for piece in bomb.stream():
                await response.write(piece)
            await response.write_eof()
        except (ConnectionError, RuntimeError) as exc:  # the client went away, as it should
            self.errors.append(type(exc).__name__)
        finally:
            self.done.set()
        return response

    async def _handle_raw(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """HTTP/1.1 by hand: read one request, answer without Content-Length or chunking, and
        end the body by closing the connection."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            self.requests.append(await asyncio.wait_for(reader.readexactly(length), 10))
            answer = self._next()
            headers = {**answer.headers, "Connection": "close", "Content-Type": "application/json"}
            if isinstance(answer.body, Bomb):
                headers["Content-Encoding"] = answer.body.encoding
            lines = [f"HTTP/1.1 {answer.status} Answer"] + [f"{k}: {v}" for k, v in headers.items()]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            if isinstance(answer.body, bytes):
                writer.write(answer.body)
            else:
                async for piece in answer.body.stream():
                    writer.write(piece)
                    await writer.drain()
            await writer.drain()
        except (ConnectionError, RuntimeError) as exc:
            self.errors.append(type(exc).__name__)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 5)
            self.done.set()
