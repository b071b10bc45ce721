"""The ttrpc server (and client) over real sockets: concurrency, every error path, connection lifetime.

Expected codes and messages are ttrpc-go's (containerd/ttrpc server.go, services.go, channel.go).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import tempfile
import time

import pytest
from google.protobuf import empty_pb2

from proto.containerd.task.v2 import shim_pb2
from shim.ttrpc import codec
from shim.ttrpc.client import TtrpcClient, TtrpcConnectionClosed
from shim.ttrpc.codec import MAX_MESSAGE_LENGTH, MESSAGE_TYPE_DATA, MESSAGE_TYPE_REQUEST, MESSAGE_TYPE_RESPONSE, FrameDecoder
from shim.ttrpc.server import CallContext, ConnectionRules, Method, TtrpcServer
from shim.ttrpc.status import Code, RpcError

TASK = "containerd.task.v2.Task"
TIMEOUT = 5.0


class _NotFound(RpcError):
    code = Code.NOT_FOUND


class TaskDouble:
    """A Task service whose handlers exercise each server path, recording what they saw."""

    def __init__(self) -> None:
        self.release_wait = asyncio.Event()
        self.wait_started = asyncio.Event()
        self.wait_cancelled = asyncio.Event()
        self.contexts: list[CallContext] = []

    async def connect(self, request: shim_pb2.ConnectRequest, ctx: CallContext) -> shim_pb2.ConnectResponse:
        self.contexts.append(ctx)
        return shim_pb2.ConnectResponse(shim_pid=4242, version=request.id)

    async def wait(self, request: shim_pb2.WaitRequest, ctx: CallContext) -> shim_pb2.WaitResponse:
        self.wait_started.set()
        try:
            await self.release_wait.wait()
        except asyncio.CancelledError:
            self.wait_cancelled.set()
            raise
        return shim_pb2.WaitResponse(exit_status=7)

    async def kill(self, request: shim_pb2.KillRequest, ctx: CallContext) -> empty_pb2.Empty:
        raise _NotFound(f"process {request.id} already finished")

    async def delete(self, request: shim_pb2.DeleteRequest, ctx: CallContext) -> shim_pb2.DeleteResponse:
        raise ValueError(f"boom {request.id}")

    async def state(self, request: shim_pb2.StateRequest, ctx: CallContext) -> shim_pb2.StateResponse:
        return None  # type: ignore[return-value]  # a handler bug the server must still answer

    async def stats(self, request: shim_pb2.StatsRequest, ctx: CallContext) -> shim_pb2.StatsResponse:
        response = shim_pb2.StatsResponse()
        response.stats.value = bytes(MAX_MESSAGE_LENGTH)
        return response

    def registry(self) -> dict[str, dict[str, Method]]:
        return {
            TASK: {
                "Connect": Method(shim_pb2.ConnectRequest, self.connect),
                "Wait": Method(shim_pb2.WaitRequest, self.wait),
                "Kill": Method(shim_pb2.KillRequest, self.kill),
                "Delete": Method(shim_pb2.DeleteRequest, self.delete),
                "State": Method(shim_pb2.StateRequest, self.state),
                "Stats": Method(shim_pb2.StatsRequest, self.stats),
            }
        }


class RawPeer:
    """A client that writes arbitrary bytes and reads raw frames back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder()
        self.frames: list[codec.Frame] = []

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def request(self, stream_id: int, method: str, message=None, service: str = TASK, **kwargs) -> None:
        payload = b"" if message is None else message.SerializeToString()
        await self.send(codec.request_frame(stream_id, service, method, payload, **kwargs))

    async def _read_more(self) -> bool:
        try:
            data = await self.reader.read(1 << 16)
        except ConnectionResetError:  # closed by the server with our bytes unread
            return False
        if not data:
            return False
        self.frames += self.decoder.feed(data)
        return True

    async def next_frame(self) -> codec.Frame:
        async with asyncio.timeout(TIMEOUT):
            while not self.frames:
                if not await self._read_more():
                    raise AssertionError("connection closed while a frame was expected")
        return self.frames.pop(0)

    async def next_response(self) -> tuple[int, codec.Response]:
        frame = await self.next_frame()
        assert frame.type == MESSAGE_TYPE_RESPONSE and frame.flags == 0
        return frame.stream_id, codec.decode_response(frame.payload)

    async def expect_status(self, stream_id: int, code: Code, message: str) -> None:
        got_id, response = await self.next_response()
        assert (got_id, response.status.code, response.status.message) == (stream_id, code, message)
        assert response.payload == b""

    async def expect_silence(self, seconds: float = 0.15) -> None:
        try:
            async with asyncio.timeout(seconds):
                while not self.frames:
                    if not await self._read_more():
                        return
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frames {self.frames}")

    async def expect_eof(self) -> list[codec.Frame]:
        async with asyncio.timeout(TIMEOUT):
            while await self._read_more():
                pass
        return self.frames


def run(test):
    """Run an async test body with a global timeout (no pytest-asyncio in the venv)."""

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        async def body():
            async with asyncio.timeout(30):
                await test(*args, **kwargs)

        asyncio.run(body())

    return wrapper


async def _pair(server: TtrpcServer) -> tuple[RawPeer, asyncio.Task[None]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    task = asyncio.create_task(server.serve_connection(ours))
    reader, writer = await asyncio.open_unix_connection(sock=theirs)
    return RawPeer(reader, writer), task


async def _connect_fresh(server: TtrpcServer) -> RawPeer:
    peer, _task = await _pair(server)
    return peer


# --- concurrency ---------------------------------------------------------------------------------


@run
async def test_slow_call_does_not_block_a_fast_call_on_the_same_connection():
    task = TaskDouble()
    server = TtrpcServer(task.registry())
    peer, _ = await _pair(server)
    await peer.request(1, "Wait", shim_pb2.WaitRequest(id="c1"))
    await task.wait_started.wait()
    await peer.request(3, "Connect", shim_pb2.ConnectRequest(id="v"))
    stream_id, response = await peer.next_response()
    assert stream_id == 3  # answered while stream 1 is still pending: out of order
    assert shim_pb2.ConnectResponse.FromString(response.payload).shim_pid == 4242
    task.release_wait.set()
    stream_id, response = await peer.next_response()
    assert stream_id == 1
    assert response.status.code == Code.OK
    assert shim_pb2.WaitResponse.FromString(response.payload).exit_status == 7


@run
async def test_client_multiplexes_concurrent_calls_on_one_connection():
    task = TaskDouble()
    server = TtrpcServer(task.registry())
    ours, theirs = socket.socketpair()
    serving = asyncio.create_task(server.serve_connection(ours))
    client = await TtrpcClient.from_socket(theirs)
    waiting = asyncio.create_task(client.call(TASK, "Wait", shim_pb2.WaitRequest(id="c1"), shim_pb2.WaitResponse))
    await task.wait_started.wait()
    answers = await asyncio.gather(
        *(client.call(TASK, "Connect", shim_pb2.ConnectRequest(id=str(i)), shim_pb2.ConnectResponse) for i in range(20))
    )
    assert [a.version for a in answers] == [str(i) for i in range(20)]
    assert not waiting.done()
    task.release_wait.set()
    assert (await waiting).exit_status == 7
    # Odd stream ids, increasing by 2 from 1 [containerd/ttrpc client.go].
    assert sorted(ctx.stream_id for ctx in task.contexts) == list(range(3, 3 + 2 * 20, 2))
    client.close()
    await client.wait_closed()
    await serving


# --- error paths ---------------------------------------------------------------------------------


@run
async def test_even_stream_id_is_invalid_argument_and_connection_stays_usable():
    server = TtrpcServer(TaskDouble().registry())
    peer, _ = await _pair(server)
    await peer.request(2, "Connect", shim_pb2.ConnectRequest(id="x"))
    await peer.expect_status(2, Code.INVALID_ARGUMENT, "StreamID must be odd for client initiated streams")
    await peer.request(3, "Connect", shim_pb2.ConnectRequest(id="x"))
    stream_id, response = await peer.next_response()
    assert (stream_id, response.status.code) == (3, Code.OK)


@run
async def test_reused_or_decreasing_stream_id_is_invalid_argument():
    server = TtrpcServer(TaskDouble().registry())
    peer, _ = await _pair(server)
    await peer.request(5, "Connect", shim_pb2.ConnectRequest(id="x"))
    assert (await peer.next_response())[0] == 5
    for stale in (5, 3):
        await peer.request(stale, "Connect", shim_pb2.ConnectRequest(id="x"))
        await peer.expect_status(stale, Code.INVALID_ARGUMENT, "StreamID cannot be re-used and must increment")
    await peer.request(7, "Connect", shim_pb2.ConnectRequest(id="x"))
    assert (await peer.next_response())[1].status.code == Code.OK


@run
async def test_unknown_service_and_method_are_unimplemented():
    server = TtrpcServer(TaskDouble().registry())
    peer, _ = await _pair(server)
    await peer.request(1, "Connect", service="containerd.task.v9.Task")
    await peer.expect_status(1, Code.UNIMPLEMENTED, "service containerd.task.v9.Task")
    await peer.request(3, "Checkpoint")
    await peer.expect_status(3, Code.UNIMPLEMENTED, "method Checkpoint")


@run
async def test_bad_request_envelope_is_invalid_argument_and_still_consumes_the_stream_id():
    server = TtrpcServer(TaskDouble().registry())
    peer, _ = await _pair(server)
    await peer.send(codec.encode_frame(1, MESSAGE_TYPE_REQUEST, 0, b"\x0a\xff\xff\xff\xff\x0f"))
    stream_id, response = await peer.next_response()
    assert (stream_id, response.status.code) == (1, Code.INVALID_ARGUMENT)
    assert response.status.message.startswith("unmarshal request error: ")
    await peer.request(1, "Connect")
    await peer.expect_status(1, Code.INVALID_ARGUMENT, "StreamID cannot be re-used and must increment")


@run
async def test_bad_payload_is_internal_unmarshalling_error():
    task = TaskDouble()
    server = TtrpcServer(task.registry())
    peer, _ = await _pair(server)
    await peer.send(codec.request_frame(1, TASK, "Connect", b"\x0a\x05ab"))  # truncated string field
    stream_id, response = await peer.next_response()
    assert (stream_id, response.status.code) == (1, Code.INTERNAL)
    assert response.status.message.startswith("ttrpc: error unmarshalling payload")
    assert task.contexts == []  # the handler never ran


@run
async def test_rpc_error_from_handler_keeps_its_code_and_message():
    server = TtrpcServer(TaskDouble().registry())
    peer, _ = await _pair(server)
    await peer.request(1, "Kill", shim_pb2.KillRequest(id="c1", signal=9))
    await peer.expect_status(1, Code.NOT_FOUND, "process c1 already finished")


@run
async def test_unexpected_exception_is_unknown_with_its_text_and_is_logged(caplog):
    server = TtrpcServer(TaskDouble().registry())
    peer, _ = await _pair(server)
    with caplog.at_level(logging.ERROR, logger="shim.ttrpc"):
        await peer.request(1, "Delete", shim_pb2.DeleteRequest(id="c1"))
        await peer.expect_status(1, Code.UNKNOWN, "boom c1")
    records = [r for r in caplog.records if r.name == "shim.ttrpc" and r.levelno == logging.ERROR]
    assert records and records[0].exc_info is not None and "Delete" in records[0].getMessage()


@run
async def test_handler_returning_none_is_unknown_like_a_go_nil_response():
    server = TtrpcServer(TaskDouble().registry())
    peer, _ = await _pair(server)
    await peer.request(1, "State", shim_pb2.StateRequest(id="c1"))
    await peer.expect_status(1, Code.UNKNOWN, "ttrpc: marshal called with nil")


@run
async def test_response_over_4mib_is_resource_exhausted_and_connection_survives():
    server = TtrpcServer(TaskDouble().registry())
    peer, _ = await _pair(server)
    await peer.request(1, "Stats", shim_pb2.StatsRequest(id="c1"))
    stream_id, response = await peer.next_response()
    assert (stream_id, response.status.code) == (1, Code.RESOURCE_EXHAUSTED)
    assert response.status.message.startswith("message length ")
    await peer.request(3, "Connect")
    assert (await peer.next_response())[1].status.code == Code.OK


@run
async def test_oversized_frame_is_resource_exhausted_after_discarding_and_connection_stays_open():
    server = TtrpcServer(TaskDouble().registry())
    peer, _ = await _pair(server)
    length = MAX_MESSAGE_LENGTH + 1
    await peer.send(codec.encode_header(length, 1, MESSAGE_TYPE_REQUEST, 0))
    await peer.expect_silence()  # nothing until every declared byte has been discarded
    for _ in range(length // 65536):
        await peer.send(b"\x00" * 65536)
    await peer.send(b"\x00" * (length % 65536))
    await peer.expect_status(1, Code.RESOURCE_EXHAUSTED, "message length 4194305 exceed maximum message size of 4194304")
    # Oversized frames do not consume the stream id (Go answers them before the id checks).
    await peer.request(1, "Connect")
    assert (await peer.next_response())[1].status.code == Code.OK


@run
async def test_response_and_unknown_frame_types_from_a_client_are_ignored():
    server = TtrpcServer(TaskDouble().registry())
    peer, _ = await _pair(server)
    await peer.send(codec.response_frame(1, b"", Code.OK))
    await peer.send(codec.encode_frame(3, 0x7F, 0xFF, b"future frame type"))
    await peer.expect_silence()
    await peer.request(5, "Connect")
    assert (await peer.next_response())[0] == 5


@run
async def test_data_frame_on_an_unknown_stream_is_no_longer_active():
    server = TtrpcServer(TaskDouble().registry())
    peer, _ = await _pair(server)
    await peer.send(codec.encode_frame(9, MESSAGE_TYPE_DATA, codec.FLAG_REMOTE_CLOSED, b""))
    await peer.expect_status(9, Code.INVALID_ARGUMENT, "StreamID is no longer active")
    await peer.send(codec.encode_frame(10, MESSAGE_TYPE_DATA, 0, b""))
    await peer.expect_status(10, Code.INVALID_ARGUMENT, "StreamID must be odd for client initiated streams")


@run
async def test_data_frame_on_a_live_unary_stream_is_ignored():
    task = TaskDouble()
    server = TtrpcServer(task.registry())
    peer, _ = await _pair(server)
    await peer.request(1, "Wait", shim_pb2.WaitRequest(id="c1"))
    await task.wait_started.wait()
    await peer.send(codec.encode_frame(1, MESSAGE_TYPE_DATA, 0, b"stray"))
    await peer.expect_silence()
    task.release_wait.set()
    stream_id, response = await peer.next_response()
    assert (stream_id, response.status.code) == (1, Code.OK)
    await peer.expect_silence()  # exactly one response for the stream


# --- context -------------------------------------------------------------------------------------


@run
async def test_call_context_carries_metadata_namespace_deadline_and_stream_id():
    task = TaskDouble()
    server = TtrpcServer(task.registry())
    peer, _ = await _pair(server)
    before = time.monotonic()
    await peer.request(
        3,
        "Connect",
        metadata=[("containerd-namespace-ttrpc", "k8s.io"), ("traceparent", "00-ab"), ("containerd-namespace-ttrpc", "x")],
        timeout_nano=2_000_000_000,
    )
    await peer.next_response()
    await peer.request(5, "Connect")
    await peer.next_response()
    first, second = task.contexts
    assert (first.service, first.method, first.stream_id) == (TASK, "Connect", 3)
    assert first.metadata == {"containerd-namespace-ttrpc": ["k8s.io", "x"], "traceparent": ["00-ab"]}
    assert first.namespace == "k8s.io"
    assert before + 2.0 <= first.deadline <= time.monotonic() + 2.0
    assert 0 < first.remaining() <= 2.0
    assert (second.namespace, second.deadline, second.remaining(), second.metadata) == (None, None, None, {})


def test_connection_rules_alone_decide_without_io():
    rules = ConnectionRules({TASK: {"Connect": Method(shim_pb2.ConnectRequest, TaskDouble().connect)}})
    body = codec.encode_request(TASK, "Connect", b"", timeout_nano=1_000_000_000)
    call = rules.receive(codec.Frame(1, MESSAGE_TYPE_REQUEST, 0, body), now=100.0)
    assert call.stream_id == 1 and call.context.deadline == 101.0 and rules.active == {1}
    rejected = rules.receive(codec.Frame(1, MESSAGE_TYPE_REQUEST, 0, body))
    assert codec.decode_response(rejected[10:]).status.code == Code.INVALID_ARGUMENT
    rules.finish(1)
    assert rules.active == set()


# --- connection lifetime -------------------------------------------------------------------------


@run
async def test_client_disconnect_cancels_in_flight_handlers_and_calls_the_hook():
    task = TaskDouble()
    closed_with: list[int] = []
    server = TtrpcServer(task.registry(), on_connection_closed=closed_with.append)
    peer, serving = await _pair(server)
    await peer.request(1, "Wait", shim_pb2.WaitRequest(id="c1"))
    await task.wait_started.wait()
    assert server.in_flight == 1
    peer.writer.close()
    await asyncio.wait_for(task.wait_cancelled.wait(), TIMEOUT)
    await asyncio.wait_for(serving, TIMEOUT)
    assert closed_with == [0]
    assert server.connection_count == 0 and server.in_flight == 0


@run
async def test_truncated_frame_then_eof_closes_only_that_connection():
    server = TtrpcServer(TaskDouble().registry())
    healthy, _ = await _pair(server)
    broken, serving = await _pair(server)
    await broken.send(codec.request_frame(1, TASK, "Connect", b"")[:-3])
    broken.writer.write_eof()
    assert await broken.expect_eof() == []
    await asyncio.wait_for(serving, TIMEOUT)
    await healthy.request(1, "Connect")
    assert (await healthy.next_response())[1].status.code == Code.OK


@run
async def test_server_survives_garbage_and_serves_the_same_and_new_connections():
    server = TtrpcServer(TaskDouble().registry())
    peer, _ = await _pair(server)
    # Ten bytes of anything form a header: this is "stream 0x41414141, type 0x41, length 0".
    await peer.send(b"\x00\x00\x00\x00AAAAAA")
    await peer.expect_silence()  # odd id, unknown type 0x41: ignored for future compatibility
    await peer.send(b"\x00\x00\x00\x03\x00\x00\x00\x02\x01\x00abc")
    await peer.expect_status(2, Code.INVALID_ARGUMENT, "StreamID must be odd for client initiated streams")
    await peer.request(1, "Connect")
    assert (await peer.next_response())[1].status.code == Code.OK
    fresh = await _connect_fresh(server)
    await fresh.request(1, "Connect")
    assert (await fresh.next_response())[1].status.code == Code.OK


# --- listening socket, client, shutdown ----------------------------------------------------------


def _listening_socket(directory: str) -> tuple[socket.socket, str]:
    path = os.path.join(directory, "shim.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen()
    return sock, path


@run
async def test_serve_on_a_listening_socket_with_the_client():
    task = TaskDouble()
    server = TtrpcServer(task.registry())
    with tempfile.TemporaryDirectory() as directory:
        sock, path = _listening_socket(directory)
        await server.serve(sock)
        async with await TtrpcClient.connect("unix://" + path) as client:
            answer = await client.call(
                TASK, "Connect", shim_pb2.ConnectRequest(id="a"), shim_pb2.ConnectResponse,
                metadata={"containerd-namespace-ttrpc": "default"}, timeout=5,
            )  # fmt: skip
            assert (answer.shim_pid, answer.version) == (4242, "a")
            assert task.contexts[-1].namespace == "default"
            with pytest.raises(RpcError) as info:
                await client.call(TASK, "Kill", shim_pb2.KillRequest(id="c9"), empty_pb2.Empty)
            assert (info.value.code, info.value.message) == (Code.NOT_FOUND, "process c9 already finished")
            with pytest.raises(RpcError) as info:
                await client.call("nope.Svc", "X", empty_pb2.Empty(), empty_pb2.Empty)
            assert info.value.code == Code.UNIMPLEMENTED
        server.close()
        await asyncio.wait_for(server.wait_closed(), TIMEOUT)
        with pytest.raises(OSError):
            await TtrpcClient.connect(path)


@run
async def test_client_call_timeout_is_deadline_exceeded_and_sends_timeout_nano():
    task = TaskDouble()
    server = TtrpcServer(task.registry())
    ours, theirs = socket.socketpair()
    asyncio.create_task(server.serve_connection(ours))
    client = await TtrpcClient.from_socket(theirs)
    with pytest.raises(RpcError) as info:
        await client.call(TASK, "Wait", shim_pb2.WaitRequest(id="c1"), shim_pb2.WaitResponse, timeout=0.1)
    assert info.value.code == Code.DEADLINE_EXCEEDED
    # The connection is still fine for the next call.
    answer = await client.call(TASK, "Connect", shim_pb2.ConnectRequest(id="b"), shim_pb2.ConnectResponse, timeout=2)
    assert answer.version == "b"
    assert 0 < task.contexts[-1].remaining() <= 2
    client.close()
    await client.wait_closed()


@run
async def test_pending_client_calls_fail_with_connection_closed_when_the_server_goes_away():
    task = TaskDouble()
    server = TtrpcServer(task.registry())
    ours, theirs = socket.socketpair()
    asyncio.create_task(server.serve_connection(ours))
    client = await TtrpcClient.from_socket(theirs)
    pending = asyncio.create_task(client.call(TASK, "Wait", shim_pb2.WaitRequest(id="c1"), shim_pb2.WaitResponse))
    await task.wait_started.wait()
    server.close()
    with pytest.raises(TtrpcConnectionClosed):
        await asyncio.wait_for(pending, TIMEOUT)
    assert isinstance(TtrpcConnectionClosed(), ConnectionError)
    assert task.wait_cancelled.is_set()
    with pytest.raises(TtrpcConnectionClosed):
        await client.call(TASK, "Connect", shim_pb2.ConnectRequest(), shim_pb2.ConnectResponse)
    await asyncio.wait_for(server.wait_closed(), TIMEOUT)


@run
async def test_client_refuses_an_oversized_request_without_spending_a_stream_id():
    task = TaskDouble()
    server = TtrpcServer(task.registry())
    ours, theirs = socket.socketpair()
    asyncio.create_task(server.serve_connection(ours))
    client = await TtrpcClient.from_socket(theirs)
    with pytest.raises(codec.OversizedMessage):
        await client.call(TASK, "Connect", shim_pb2.ConnectRequest(id="x" * MAX_MESSAGE_LENGTH), shim_pb2.ConnectResponse)
    await client.call(TASK, "Connect", shim_pb2.ConnectRequest(), shim_pb2.ConnectResponse)
    assert task.contexts[-1].stream_id == 1
    client.close()


@run
async def test_shutdown_lets_the_in_flight_call_answer_before_closing():
    task = TaskDouble()
    server = TtrpcServer(task.registry())
    ours, theirs = socket.socketpair()
    asyncio.create_task(server.serve_connection(ours))
    client = await TtrpcClient.from_socket(theirs)
    pending = asyncio.create_task(client.call(TASK, "Wait", shim_pb2.WaitRequest(id="c1"), shim_pb2.WaitResponse))
    await task.wait_started.wait()
    stopping = asyncio.create_task(server.shutdown())
    await asyncio.sleep(0.05)
    assert not stopping.done()
    task.release_wait.set()
    assert (await asyncio.wait_for(pending, TIMEOUT)).exit_status == 7
    await asyncio.wait_for(stopping, TIMEOUT)
    assert server.connection_count == 0


@run
async def test_peer_with_other_credentials_is_rejected(monkeypatch):
    import shim.ttrpc.server as server_module

    monkeypatch.setattr(server_module.os, "geteuid", lambda: os.getuid() + 1)
    server = TtrpcServer(TaskDouble().registry())
    with tempfile.TemporaryDirectory() as directory:
        sock, path = _listening_socket(directory)
        await server.serve(sock)
        reader, writer = await asyncio.open_unix_connection(path)
        peer = RawPeer(reader, writer)
        await peer.request(1, "Connect")
        assert await peer.expect_eof() == []
        server.close()
        await server.wait_closed()
