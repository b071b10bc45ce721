"""Property tests: no byte sequence breaks the decoder, and no client input breaks the server.

The live-server properties run against ONE server (in a background event loop thread) for all
examples, so "the server keeps serving" is checked across hundreds of hostile connections.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import tempfile
import threading
from unittest import mock

import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proto.containerd.task.v2 import shim_pb2
from shim.ttrpc import codec
from shim.ttrpc.codec import MAX_MESSAGE_LENGTH, MESSAGE_TYPE_REQUEST, MESSAGE_TYPE_RESPONSE, Frame, FrameDecoder, OversizedFrame
from shim.ttrpc.server import Method, TtrpcServer
from shim.ttrpc.status import Code

TASK = "containerd.task.v2.Task"
IO_TIMEOUT = 10.0
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- decoder -------------------------------------------------------------------------------------


def _reference_parse(data: bytes, max_length: int) -> list[Frame | OversizedFrame]:
    """Obviously-correct whole-buffer parse used as the oracle for the incremental decoder."""
    out: list[Frame | OversizedFrame] = []
    offset = 0
    while len(data) - offset >= 10:
        length, stream_id, type_, flags = struct.unpack_from(">IIBB", data, offset)
        body_end = offset + 10 + length
        if body_end > len(data):
            break
        if length > max_length:
            out.append(OversizedFrame(stream_id, type_, flags, length))
        else:
            out.append(Frame(stream_id, type_, flags, data[offset + 10 : body_end]))
        offset = body_end
    return out


def _feed_in_chunks(decoder: FrameDecoder, data: bytes, cuts: list[int]) -> list[Frame | OversizedFrame]:
    out: list[Frame | OversizedFrame] = []
    previous = 0
    for cut in sorted({c % (len(data) + 1) for c in cuts}) + [len(data)]:
        out += decoder.feed(data[previous:cut])
        previous = cut
    return out


@FUZZ
@given(data=st.binary(max_size=3000), cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=20))
def test_decoder_never_raises_and_chunking_never_changes_the_frames(data, cuts):
    whole = FrameDecoder().feed(data)
    assert _feed_in_chunks(FrameDecoder(), data, cuts) == whole
    assert whole == _reference_parse(data, MAX_MESSAGE_LENGTH)


_frame = st.tuples(
    st.integers(min_value=0, max_value=2**32 - 1),
    st.integers(min_value=0, max_value=255),
    st.integers(min_value=0, max_value=255),
    st.binary(max_size=300),
)


@FUZZ
@given(
    frames=st.lists(_frame, max_size=8),
    oversized=st.lists(st.tuples(st.integers(0, 7), st.integers(65, 400)), max_size=3),
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=30),
)
def test_oversized_frames_are_skipped_exactly_under_any_chunking(frames, oversized, cuts):
    # A small limit makes discarding cheap to exercise; the decoder reads the module constant.
    limit = 64
    parts = [codec.encode_header(len(p), s, t, f) + p for s, t, f, p in frames if len(p) <= limit]
    for position, length in oversized:
        parts.insert(min(position, len(parts)), codec.encode_header(length, 1, 1, 0) + os.urandom(length))
    data = b"".join(parts)
    with mock.patch.object(codec, "MAX_MESSAGE_LENGTH", limit):
        got = _feed_in_chunks(FrameDecoder(), data, cuts)
    assert got == _reference_parse(data, limit)
    assert sum(isinstance(item, OversizedFrame) for item in got) == len(oversized)


@FUZZ
@given(frames=st.lists(_frame, min_size=1, max_size=10), cuts=st.lists(st.integers(0, 4000), max_size=30))
def test_encoded_frames_round_trip_under_any_chunking(frames, cuts):
    data = b"".join(codec.encode_frame(s, t, f, p) for s, t, f, p in frames)
    decoder = FrameDecoder()
    assert _feed_in_chunks(decoder, data, cuts) == [Frame(s, t, f, p) for s, t, f, p in frames]
    assert decoder.at_frame_boundary


# --- live server ---------------------------------------------------------------------------------


async def _connect(request: shim_pb2.ConnectRequest, ctx) -> shim_pb2.ConnectResponse:
    return shim_pb2.ConnectResponse(shim_pid=99, version=request.id)


class _LiveServer:
    """A TtrpcServer on a unix socket, run by an event loop in a background thread."""

    def __init__(self) -> None:
        self.directory = tempfile.TemporaryDirectory()
        self.path = os.path.join(self.directory.name, "fuzz.sock")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: TtrpcServer | None = None

    def start(self) -> None:
        self.thread.start()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.path)
        sock.listen()

        async def begin() -> None:
            self.server = TtrpcServer({TASK: {"Connect": Method(shim_pb2.ConnectRequest, _connect)}})
            await self.server.serve(sock)

        asyncio.run_coroutine_threadsafe(begin(), self.loop).result(IO_TIMEOUT)

    def stop(self) -> None:
        async def end() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(end(), self.loop).result(IO_TIMEOUT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(IO_TIMEOUT)
        self.loop.close()
        self.directory.cleanup()

    def exchange(self, data: bytes, wait_for_responses: int = 0) -> tuple[list[Frame | OversizedFrame], bool]:
        """Send `data`, read `wait_for_responses` frames, half-close, then read to the end.

        Returns the frames received and whether the server closed the connection. A sender thread
        keeps writing while we read, so the server is never blocked on a full socket buffer.
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(IO_TIMEOUT)
        sock.connect(self.path)
        enough_read = threading.Event()
        if wait_for_responses == 0:
            enough_read.set()

        def send() -> None:
            try:
                sock.sendall(data)
                enough_read.wait(IO_TIMEOUT)
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the server may close on us mid-send

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        decoder = FrameDecoder()
        frames: list[Frame | OversizedFrame] = []
        closed = False
        try:
            while True:
                try:
                    chunk = sock.recv(1 << 16)
                except ConnectionResetError:
                    closed = True
                    break
                except TimeoutError:
                    break  # the server neither answered nor closed: reported as not closed
                if not chunk:
                    closed = True
                    break
                frames += decoder.feed(chunk)
                if len(frames) >= wait_for_responses:
                    enough_read.set()
        finally:
            enough_read.set()
            sender.join(IO_TIMEOUT)
            sock.close()
        return frames, closed

    def healthy(self) -> bool:
        """A fresh connection still gets a correct answer."""
        request = shim_pb2.ConnectRequest(id="still-alive").SerializeToString()
        frames, _ = self.exchange(codec.request_frame(1, TASK, "Connect", request), wait_for_responses=1)
        if len(frames) != 1 or frames[0].stream_id != 1 or frames[0].type != MESSAGE_TYPE_RESPONSE:
            return False
        response = codec.decode_response(frames[0].payload)
        answer = shim_pb2.ConnectResponse.FromString(response.payload)
        return response.status.code == Code.OK and answer.version == "still-alive" and answer.shim_pid == 99


@pytest.fixture(scope="module")
def live_server():
    server = _LiveServer()
    server.start()
    yield server
    server.stop()


def _responses(frames: list[Frame | OversizedFrame]) -> list[tuple[int, codec.Response]]:
    out = []
    for frame in frames:
        assert isinstance(frame, Frame) and frame.type == MESSAGE_TYPE_RESPONSE and frame.flags == 0
        response = codec.decode_response(frame.payload)
        assert response.HasField("status")
        out.append((frame.stream_id, response))
    return out


@FUZZ
@given(data=st.binary(min_size=1, max_size=2000))
def test_random_bytes_get_only_error_statuses_then_a_closed_connection(live_server, data):
    frames, closed = live_server.exchange(data)
    assert closed
    responses = _responses(frames)
    assert all(response.status.code != Code.OK for _, response in responses)
    assert len(responses) <= len(_reference_parse(data, MAX_MESSAGE_LENGTH))
    assert live_server.healthy()


_truncated_or_oversized = st.one_of(
    # A frame cut short: the server waits for the rest, then sees EOF and closes.
    st.binary(min_size=11, max_size=400).map(lambda p: codec.encode_header(len(p) + 5, 1, 1, 0) + p),
    # A header announcing more than 4 MiB, with part of the payload: discarded until EOF.
    st.integers(MAX_MESSAGE_LENGTH + 1, 2**32 - 1).map(lambda n: codec.encode_header(n, 3, 1, 0) + bytes(100)),
    # A complete oversized frame: answered RESOURCE_EXHAUSTED on its stream.
    st.integers(MAX_MESSAGE_LENGTH + 1, MAX_MESSAGE_LENGTH + 8).map(lambda n: codec.encode_header(n, 5, 1, 0) + bytes(n)),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_truncated_or_oversized)
def test_truncated_and_oversized_frames_never_hurt_the_server(live_server, data):
    frames, closed = live_server.exchange(data)
    assert closed
    expected = [item for item in _reference_parse(data, MAX_MESSAGE_LENGTH) if isinstance(item, OversizedFrame)]
    responses = _responses(frames)
    assert [(sid, r.status.code) for sid, r in responses] == [(o.stream_id, Code.RESOURCE_EXHAUSTED) for o in expected]
    assert live_server.healthy()


_envelope = st.one_of(
    st.binary(max_size=200),
    st.builds(
        lambda service, method, payload, timeout, metadata: codec.encode_request(
            service, method, payload, timeout_nano=timeout, metadata=metadata
        ),
        service=st.sampled_from([TASK, "containerd.task.v3.Task", "", "x" * 300]),
        method=st.sampled_from(["Connect", "Wait", "", "connect"]),
        payload=st.one_of(st.binary(max_size=64), st.text(max_size=20).map(lambda s: shim_pb2.ConnectRequest(id=s).SerializeToString())),
        timeout=st.integers(-(2**63), 2**63 - 1),
        metadata=st.lists(st.tuples(st.text(max_size=10), st.text(max_size=10)), max_size=3),
    ),
)


def _expected_code(envelope: bytes) -> Code:
    """What ttrpc-go answers for a Request frame with this envelope on a fresh, odd, increasing id."""
    try:
        request = codec.Request.FromString(envelope)
    except DecodeError:
        return Code.INVALID_ARGUMENT
    if request.service != TASK or request.method != "Connect":
        return Code.UNIMPLEMENTED
    try:
        shim_pb2.ConnectRequest.FromString(request.payload)
    except DecodeError:
        return Code.INTERNAL
    return Code.OK


@FUZZ
@given(envelopes=st.lists(_envelope, min_size=1, max_size=6), flags=st.integers(0, 255))
def test_every_request_frame_gets_exactly_one_answer_with_the_expected_code(live_server, envelopes, flags):
    data = b"".join(
        codec.encode_frame(2 * index + 1, MESSAGE_TYPE_REQUEST, flags, envelope) for index, envelope in enumerate(envelopes)
    )
    frames, closed = live_server.exchange(data, wait_for_responses=len(envelopes))
    assert closed
    got = {sid: response.status.code for sid, response in _responses(frames)}
    assert len(frames) == len(envelopes)
    assert got == {2 * index + 1: _expected_code(envelope) for index, envelope in enumerate(envelopes)}
    assert live_server.healthy()
