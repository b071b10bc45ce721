"""Reading a pipe to its end from the daemon's event loop, without a thread.

The daemon waits on pipes in two places: an instance process's one status message (EOF
comes with the message or with the child's death) and a `binary://` logger's ready fd
(EOF is the signal). Both are the same wait; the fd is never blocking-read on the loop.

The read is bounded: the instance process has read the image before it reports, and the daemon runs outside the
pod's memory limit, so a writer that never stops (a bug, or a process the guest took over) costs the daemon at
most ``limit`` bytes, never the node's memory.
"""

from __future__ import annotations

import asyncio
import os


class PipeOverflow(Exception):
    """More than the reader's limit arrived before EOF."""


async def read_until_eof(fd: int, limit: int) -> bytes:
    """Everything written to ``fd`` until its last writer closes it; PipeOverflow past ``limit`` bytes."""
    loop = asyncio.get_running_loop()
    chunks: list[bytes] = []
    size = 0
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
        size += len(chunk)
        if size > limit:
            raise PipeOverflow(f"more than {limit} bytes")
        chunks.append(chunk)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
