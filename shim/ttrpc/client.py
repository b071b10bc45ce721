"""ttrpc client: unary calls over one unix-socket connection, multiplexed by stream id.

Used to publish task events to containerd (`containerd.services.events.ttrpc.v1.Events/Forward` on
TTRPC_ADDRESS, as containerd pkg/shim/publisher.go does) and by the tests to drive our server.
Mirrors ttrpc-go's client [containerd/ttrpc client.go]: stream ids are odd and increase by 2
from 1, any number of calls may be pending at once, a Response with a non-zero status is an
error, and a dropped connection fails every pending call.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Mapping
from types import TracebackType
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from shim.ttrpc import codec
from shim.ttrpc.codec import FrameDecoder, OversizedFrame
from shim.ttrpc.status import Code, RpcError

log = logging.getLogger("shim.ttrpc")

_READ_SIZE = 256 * 1024
_MAX_STREAM_ID = 0xFFFFFFFF

ResponseT = TypeVar("ResponseT", bound=Message)


class TtrpcConnectionClosed(ConnectionError):
    """The connection is closed, or closed while the call was pending (ttrpc-go's ErrClosed)."""


class TtrpcClient:
    """One ttrpc connection. Create with `await TtrpcClient.connect(path)`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._write_lock = asyncio.Lock()
        self._pending: dict[int, asyncio.Future[codec.Response]] = {}
        self._next_stream_id = 1
        self._closed_reason: str | None = None
        self._read_task = asyncio.create_task(self._read_loop())

    @classmethod
    async def connect(cls, address: str) -> TtrpcClient:
        """Connect to a unix socket path; a `unix://` prefix (containerd's address form) is accepted."""
        path = address.removeprefix("unix://")
        reader, writer = await asyncio.open_unix_connection(path)
        return cls(reader, writer)

    @classmethod
    async def from_socket(cls, connected_socket: socket.socket) -> TtrpcClient:
        """Wrap an already-connected AF_UNIX socket (e.g. one end of a socketpair)."""
        reader, writer = await asyncio.open_unix_connection(sock=connected_socket)
        return cls(reader, writer)

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    async def call(
        self,
        service: str,
        method: str,
        request: Message,
        response_cls: type[ResponseT],
        *,
        timeout: float | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ResponseT:
        """Call `service/method` and return the parsed response.

        Raises RpcError for a non-OK status (DEADLINE_EXCEEDED when `timeout` passes first, as a
        Go ctx deadline would), codec.OversizedMessage for a request over 4 MiB, and
        TtrpcConnectionClosed if the connection is or goes down before the answer.
        """
        if self._closed_reason is not None:
            raise TtrpcConnectionClosed(self._closed_reason)
        timeout_nano = 0 if timeout is None else max(1, int(timeout * 1e9))
        stream_id = self._next_stream_id
        if stream_id > _MAX_STREAM_ID:
            self._shut("ttrpc: stream ids exhausted")
            raise TtrpcConnectionClosed("ttrpc: stream ids exhausted; reconnect")
        frame = codec.request_frame(
            stream_id, service, method, request.SerializeToString(), timeout_nano=timeout_nano, metadata=metadata
        )  # raises OversizedMessage before a stream id is spent
        self._next_stream_id += 2
        future: asyncio.Future[codec.Response] = asyncio.get_running_loop().create_future()
        self._pending[stream_id] = future
        try:
            async with asyncio.timeout(timeout):
                async with self._write_lock:
                    if self._closed_reason is not None:
                        raise TtrpcConnectionClosed(self._closed_reason)
                    self._writer.write(frame)
                    try:
                        await self._writer.drain()
                    except (ConnectionError, OSError) as exc:
                        self._shut(f"ttrpc: write failed: {exc}")
                        raise TtrpcConnectionClosed(self._closed_reason) from exc
                response = await future
        except TimeoutError:
            raise RpcError("context deadline exceeded", code=Code.DEADLINE_EXCEEDED) from None
        finally:
            self._pending.pop(stream_id, None)
        error = codec.response_error(response)
        if error is not None:
            raise error
        try:
            return response_cls.FromString(response.payload)
        except DecodeError as exc:
            raise RpcError(f"ttrpc: error unmarshalling response payload: {exc}", code=Code.INTERNAL) from None

    async def _read_loop(self) -> None:
        decoder = FrameDecoder()
        reason = "ttrpc: closed"
        try:
            while True:
                data = await self._reader.read(_READ_SIZE)
                if not data:
                    reason = "ttrpc: connection closed by server"
                    break
                for item in decoder.feed(data):
                    self._dispatch(item)
        except (ConnectionError, OSError) as exc:
            reason = f"ttrpc: connection lost: {exc}"
        finally:
            self._shut(reason)

    def _dispatch(self, item: codec.Frame | OversizedFrame) -> None:
        future = self._pending.get(item.stream_id)
        if isinstance(item, OversizedFrame):
            if future is not None and not future.done():
                future.set_exception(
                    RpcError(codec.oversized_message_text(item.length), code=Code.RESOURCE_EXHAUSTED)
                )
            return
        if item.type != codec.MESSAGE_TYPE_RESPONSE or future is None or future.done():
            # Data frames belong to streaming calls (we make none); unknown streams timed out.
            log.debug("ignoring frame type %d on stream %d", item.type, item.stream_id)
            return
        try:
            future.set_result(codec.decode_response(item.payload))
        except DecodeError as exc:
            future.set_exception(RpcError(f"ttrpc: unmarshal response error: {exc}", code=Code.INTERNAL))

    def _shut(self, reason: str) -> None:
        if self._closed_reason is None:
            self._closed_reason = reason
        self._writer.close()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(TtrpcConnectionClosed(reason))

    def close(self) -> None:
        """Close the connection; pending calls fail with TtrpcConnectionClosed."""
        self._shut("ttrpc: closed")
        if not self._read_task.done():
            self._read_task.cancel()

    async def wait_closed(self) -> None:
        """Wait until the connection is fully torn down (after close() or a drop)."""
        await asyncio.wait([self._read_task])
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError):
            pass

    async def __aenter__(self) -> TtrpcClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
        await self.wait_closed()


__all__ = ["TtrpcClient", "TtrpcConnectionClosed"]
