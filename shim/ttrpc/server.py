"""ttrpc server: the shim daemon's listener, answering like ttrpc-go's server
[containerd/ttrpc server.go, services.go].

Two layers:

- `ConnectionRules` (pure, no I/O): per-connection protocol state. Given each decoded frame it
  says whether to start a call, answer an error status, or ignore it, with ttrpc-go's exact codes
  and messages. `run_call` turns a handler's outcome into the Response frame.
- `TtrpcServer` (asyncio): accept loop, one read loop per connection feeding a `FrameDecoder`,
  one task per call. Calls on one connection run concurrently and their responses are written in
  completion order under a write lock, because containerd keeps a `Wait` open on its single
  connection while it calls other methods (one ttrpc client per shim: containerd
  core/runtime/v2/shim.go).

Deliberate differences from ttrpc-go, each where Go would crash or drop the whole connection:
a Data frame on a stream we know (Go dereferences a nil stream handler and panics) is ignored;
a response over 4 MiB is answered with RESOURCE_EXHAUSTED on its stream (Go fails the send and
closes the connection, failing every pending call, including containerd's Wait).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from google.protobuf.message import DecodeError, Message

from shim.ttrpc import codec
from shim.ttrpc.codec import Frame, FrameDecoder, OversizedFrame
from shim.ttrpc.status import Code, RpcError

log = logging.getLogger("shim.ttrpc")

# containerd puts the namespace of every call here [containerd 1.7 namespaces/ttrpc.go].
NAMESPACE_METADATA_KEY = "containerd-namespace-ttrpc"

_READ_SIZE = 256 * 1024
_UCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a handler may know about its call besides the request message."""

    service: str
    method: str
    stream_id: int
    # Key -> values in wire order; ttrpc allows a key more than once [containerd/ttrpc metadata.go].
    metadata: dict[str, list[str]]
    # First `containerd-namespace-ttrpc` value (what containerd's namespaces.Namespace reads), or None.
    namespace: str | None
    # time.monotonic() deadline from the request's timeout_nano, None when the caller set none.
    # Advisory, as a Go context deadline is for a handler that ignores ctx: the server does not
    # cancel a handler when it passes (cancelling a Create halfway would leave half-made state).
    deadline: float | None

    def remaining(self) -> float | None:
        """Seconds left before the caller gives up (may be negative), or None without a deadline."""
        return None if self.deadline is None else self.deadline - time.monotonic()


Handler = Callable[[Message, CallContext], Awaitable[Message]]


class Method(NamedTuple):
    """One unary method: how to parse its request payload, and the coroutine that answers it."""

    request_type: type[Message]
    handler: Handler


Registry = Mapping[str, Mapping[str, Method]]


@dataclass(frozen=True, slots=True)
class Call:
    """A request that passed every connection-level check and found its method."""

    stream_id: int
    method: Method
    payload: bytes
    context: CallContext


class ConnectionRules:
    """ttrpc-go's per-connection receive rules, without I/O [containerd/ttrpc server.go serverConn.run].

    `receive` returns a `Call` to run, the bytes of an error Response to send, or None (ignored).
    Checks run in Go's order: oversized frame, odd stream id, frame type, increasing stream id
    (consumed even when the envelope then fails to parse), envelope, service, method.
    """

    def __init__(self, services: Registry) -> None:
        self._services = services
        self.last_stream_id = 0
        self.active: set[int] = set()

    def receive(self, item: Frame | OversizedFrame, now: float | None = None) -> Call | bytes | None:
        if isinstance(item, OversizedFrame):
            return _error(item.stream_id, Code.RESOURCE_EXHAUSTED, codec.oversized_message_text(item.length))
        stream_id = item.stream_id
        if stream_id % 2 != 1:
            return _error(stream_id, Code.INVALID_ARGUMENT, "StreamID must be odd for client initiated streams")
        if item.type == codec.MESSAGE_TYPE_DATA:
            # Only streaming methods take Data frames and we serve none. Go answers an unknown
            # stream with this status; for a live unary stream it would panic, we ignore it.
            if stream_id in self.active:
                log.debug("ignoring data frame on unary stream %d", stream_id)
                return None
            return _error(stream_id, Code.INVALID_ARGUMENT, "StreamID is no longer active")
        if item.type != codec.MESSAGE_TYPE_REQUEST:
            # Go: "else we must ignore this for future compat" (Response frames, unknown types).
            log.debug("ignoring frame type %d on stream %d", item.type, stream_id)
            return None
        if stream_id <= self.last_stream_id:
            return _error(stream_id, Code.INVALID_ARGUMENT, "StreamID cannot be re-used and must increment")
        self.last_stream_id = stream_id
        try:
            request = codec.decode_request(item.payload)
        except DecodeError as exc:
            return _error(stream_id, Code.INVALID_ARGUMENT, f"unmarshal request error: {exc}")
        methods = self._services.get(request.service)
        if methods is None:
            return _error(stream_id, Code.UNIMPLEMENTED, f"service {request.service}")
        method = methods.get(request.method)
        if method is None:
            return _error(stream_id, Code.UNIMPLEMENTED, f"method {request.method}")
        metadata = codec.metadata_dict(request)
        namespaces = metadata.get(NAMESPACE_METADATA_KEY)
        deadline = None
        if request.timeout_nano:
            # Go: context.WithTimeout(ctx, Duration(timeout_nano)); a negative value is already past.
            deadline = (time.monotonic() if now is None else now) + request.timeout_nano / 1e9
        context = CallContext(
            service=request.service,
            method=request.method,
            stream_id=stream_id,
            metadata=metadata,
            namespace=namespaces[0] if namespaces else None,
            deadline=deadline,
        )
        self.active.add(stream_id)
        return Call(stream_id, method, request.payload, context)

    def finish(self, stream_id: int) -> None:
        self.active.discard(stream_id)


def _error(stream_id: int, code: Code, message: str) -> bytes:
    return codec.response_frame(stream_id, b"", code, message)


async def run_call(call: Call) -> bytes:
    """Run one handler and return its Response frame; only cancellation propagates.

    Status mapping [containerd/ttrpc services.go unaryCall, protoUnmarshal]: payload parse failure -> INTERNAL
    "ttrpc: error unmarshalling payload: ..."; RpcError -> its code and message; any other
    exception -> UNKNOWN with str(exc), logged with its traceback (a bug, not a protocol event).
    """
    stream_id = call.stream_id
    try:
        try:
            request = call.method.request_type.FromString(call.payload)
        except DecodeError as exc:
            raise RpcError(f"ttrpc: error unmarshalling payload: {exc}", code=Code.INTERNAL) from None
        response = await call.method.handler(request, call.context)
        if response is None:
            raise RpcError("ttrpc: marshal called with nil", code=Code.UNKNOWN)
        if not isinstance(response, Message):
            raise RpcError(f"ttrpc: error unsupported response type: {type(response).__name__}", code=Code.INTERNAL)
        return codec.response_frame(stream_id, response.SerializeToString())
    except RpcError as exc:
        code = exc.code
        if code == Code.OK:  # an "error" with code 0 would reach the client as an empty success
            code = Code.UNKNOWN
        return codec.response_frame(stream_id, b"", code, exc.message)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - the server must answer, whatever the handler did
        log.exception("%s/%s on stream %d failed", call.context.service, call.context.method, stream_id)
        return codec.response_frame(stream_id, b"", Code.UNKNOWN, str(exc))


class _Connection:
    """One client connection: read loop, in-flight call tasks, serialized writes."""

    def __init__(self, server: TtrpcServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._server = server
        self._reader = reader
        self._writer = writer
        self._write_lock = asyncio.Lock()
        self._calls: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        return len(self._calls)

    async def run(self) -> None:
        rules = ConnectionRules(self._server.services)
        decoder = FrameDecoder()
        try:
            while True:
                data = await self._reader.read(_READ_SIZE)
                if not data:
                    if not decoder.at_frame_boundary:
                        log.debug("connection closed mid-frame (%d bytes buffered)", decoder.buffered)
                    break
                for item in decoder.feed(data):
                    outcome = rules.receive(item)
                    if outcome is None:
                        continue
                    if isinstance(outcome, bytes):
                        log.debug("answering stream %d with an error status", item.stream_id)
                        await self._write(outcome)
                        continue
                    task = asyncio.create_task(self._serve_call(outcome, rules))
                    self._calls.add(task)
                    task.add_done_callback(self._calls.discard)
        except (ConnectionError, OSError) as exc:
            log.debug("connection read failed: %s", exc)
        finally:
            await self.abort()

    async def _serve_call(self, call: Call, rules: ConnectionRules) -> None:
        try:
            # run_call already turned an over-4-MiB response into a RESOURCE_EXHAUSTED frame.
            await self._write(await run_call(call))
        finally:
            rules.finish(call.stream_id)

    async def _write(self, frame: bytes) -> None:
        async with self._write_lock:
            if self._writer.is_closing():
                return
            self._writer.write(frame)
            try:
                await self._writer.drain()
            except (ConnectionError, OSError) as exc:
                log.debug("connection write failed: %s", exc)

    def close_transport(self) -> None:
        self._writer.close()

    async def abort(self) -> None:
        """Close the socket and cancel this connection's handlers (ttrpc-go cancels their ctx)."""
        self._writer.close()
        calls = list(self._calls)
        for task in calls:
            task.cancel()
        if calls:
            await asyncio.gather(*calls, return_exceptions=True)
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError):
            pass


def _peer_is_same_user(sock: socket.socket | None) -> bool:
    """ttrpc's UnixSocketRequireSameUser: the peer's uid and gid must be our effective ones.

    Go shims install this handshake [containerd pkg/shim/shim_linux.go; containerd/ttrpc unixcreds_linux.go].
    """
    if sock is None or sock.family != socket.AF_UNIX:
        return False
    try:
        _pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    except OSError:
        return False
    return uid == os.geteuid() and gid == os.getegid()


class TtrpcServer:
    """Serves a registry of unary ttrpc methods on unix sockets.

    `services` maps a fully-qualified service name (`containerd.task.v2.Task`) to its methods by
    bare name (`Create`). The shim registers the same handlers under v2 and v3 names.
    """

    def __init__(
        self,
        services: Registry,
        *,
        on_connection_closed: Callable[[int], None] | None = None,
        require_same_user: bool = True,
    ) -> None:
        """`on_connection_closed(remaining_connections)` runs after each connection has ended."""
        self.services = services
        self._on_connection_closed = on_connection_closed
        self._require_same_user = require_same_user
        self._listeners: list[asyncio.AbstractServer] = []
        self._connections: set[_Connection] = set()
        self._closing = False
        self._closed = asyncio.Event()

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    @property
    def in_flight(self) -> int:
        """Calls currently being handled, over all connections."""
        return sum(conn.in_flight for conn in self._connections)

    async def serve(self, listening_socket: socket.socket) -> None:
        """Start accepting on an already bound and listening AF_UNIX socket; returns once accepting.

        The caller owns the socket's creation (the shim's `start` binds it before spawning the
        daemon, so the address is valid the moment `start` prints it); the server closes it.
        """
        if self._closing:
            raise RuntimeError("server is closed")
        listener = await asyncio.start_unix_server(self._accepted, sock=listening_socket)
        self._listeners.append(listener)

    async def serve_connection(self, connected_socket: socket.socket) -> None:
        """Serve one already-connected socket (e.g. one end of a socketpair) until it closes.

        No peer-credential check: the caller made this socket itself.
        """
        reader, writer = await asyncio.open_unix_connection(sock=connected_socket)
        await self._run_connection(reader, writer)

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closing:
            writer.close()
            return
        if self._require_same_user and not _peer_is_same_user(writer.get_extra_info("socket")):
            log.warning("rejecting ttrpc connection: peer credentials do not match this process")
            writer.close()
            return
        await self._run_connection(reader, writer)

    async def _run_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection(self, reader, writer)
        self._connections.add(conn)
        log.debug("ttrpc connection opened (%d open)", len(self._connections))
        try:
            await conn.run()
        finally:
            self._connections.discard(conn)
            log.debug("ttrpc connection closed (%d open)", len(self._connections))
            if self._on_connection_closed is not None:
                try:
                    self._on_connection_closed(len(self._connections))
                except Exception:  # noqa: BLE001 - a hook bug must not take the server down
                    log.exception("on_connection_closed hook failed")
            self._maybe_closed()

    def close(self) -> None:
        """Stop accepting, close every connection now and cancel their in-flight handlers.

        A handler that wants the server gone after it has answered (Shutdown) should instead
        start `asyncio.create_task(server.shutdown())`: shutdown waits for in-flight calls,
        including that handler's own response, before closing.
        """
        self._closing = True
        for listener in self._listeners:
            listener.close()
        for conn in list(self._connections):
            conn.close_transport()
        self._maybe_closed()

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting, let in-flight calls finish (at most `grace` seconds), then close.

        Like ttrpc-go's Server.Shutdown, which waits for connections to go idle.
        """
        self._closing = True
        for listener in self._listeners:
            listener.close()
        deadline = None if grace is None else time.monotonic() + grace
        while self.in_flight and (deadline is None or time.monotonic() < deadline):
            await asyncio.sleep(0.01)
        self.close()
        await self.wait_closed()

    def _maybe_closed(self) -> None:
        if self._closing and not self._connections:
            self._closed.set()

    async def wait_closed(self) -> None:
        """Return once close() was called and every connection has finished its cleanup."""
        await self._closed.wait()
        for listener in self._listeners:
            await listener.wait_closed()


__all__ = [
    "NAMESPACE_METADATA_KEY",
    "Call",
    "CallContext",
    "ConnectionRules",
    "Handler",
    "Method",
    "Registry",
    "TtrpcServer",
    "run_call",
]
