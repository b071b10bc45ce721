"""Reading a pipe to its end from the daemon's event loop, without a thread.

The daemon waits on pipes in two places: an instance process's one status message (EOF
comes with the message or with the child's death) and a `binary://` logger's ready fd
(EOF is the signal). Both are the same wait; the fd is never blocking-read on the loop.
"""

from __future__ import annotations

import asyncio
import os


async def read_until_eof(fd: int) -> bytes:
    loop = asyncio.get_running_loop()
    chunks: list[bytes] = []
    while True:
        readable: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, _resolve, readable)
        try:
            await readable
        finally:
            loop.remove_reader(fd)
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
