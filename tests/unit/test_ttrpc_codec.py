"""The pure ttrpc codec: frame bytes, incremental decoding, envelopes, status errors. No sockets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from proto.containerd.task.v2 import shim_pb2
from shim.ttrpc import codec
from shim.ttrpc.codec import (
    MAX_MESSAGE_LENGTH,
    MESSAGE_TYPE_DATA,
    MESSAGE_TYPE_REQUEST,
    MESSAGE_TYPE_RESPONSE,
    Frame,
    FrameDecoder,
    OversizedFrame,
    OversizedMessage,
)
from shim.ttrpc.status import Code, RpcError

REPO_ROOT = Path(__file__).resolve().parents[2]

# A worked example encoded by hand from ttrpc's PROTOCOL.md (10-byte frame header) and request.proto (Request,
# Response, KeyValue): Connect{id:"abc"} on stream 1 with namespace "default".
CONNECT_ABC_FRAME = bytes.fromhex(
    "00000050 00000001 01 00"
    "0a17" + b"containerd.task.v2.Task".hex() + "1207" + b"Connect".hex() + "1a050a03" + b"abc".hex()
    + "2a250a1a" + b"containerd-namespace-ttrpc".hex() + "1207" + b"default".hex()
)
CONNECT_RESPONSE_FRAME = bytes.fromhex("0000000a 00000001 02 00 0a00 1206 08d209 10ae2c")
NOT_FOUND_FRAME = bytes.fromhex("00000014 00000001 02 00 0a12 0805 120e" + b"not found: abc".hex())


# --- encoding ------------------------------------------------------------------------------------


def test_request_frame_matches_reference_worked_example():
    payload = shim_pb2.ConnectRequest(id="abc").SerializeToString()
    frame = codec.request_frame(
        1, "containerd.task.v2.Task", "Connect", payload, metadata={"containerd-namespace-ttrpc": "default"}
    )
    assert frame == CONNECT_ABC_FRAME


def test_ok_response_frame_always_carries_an_empty_status():
    payload = shim_pb2.ConnectResponse(shim_pid=1234, task_pid=5678).SerializeToString()
    assert codec.response_frame(1, payload) == CONNECT_RESPONSE_FRAME


def test_error_response_frame_matches_reference_worked_example():
    assert codec.response_frame(1, b"", Code.NOT_FOUND, "not found: abc") == NOT_FOUND_FRAME
    assert codec.error_frame(1, RpcError("not found: abc", code=Code.NOT_FOUND)) == NOT_FOUND_FRAME


def test_empty_response_payload_is_just_the_status():
    # google.protobuf.Empty answers (Kill, Shutdown, ...) serialize to zero payload bytes.
    assert codec.response_frame(7, b"") == bytes.fromhex("00000002 00000007 02 00 0a00")


def test_header_is_big_endian_length_stream_type_flags():
    frame = codec.encode_frame(0x01020304, MESSAGE_TYPE_DATA, codec.FLAG_REMOTE_CLOSED, b"xyz")
    assert frame == bytes.fromhex("00000003 01020304 03 01") + b"xyz"


def test_payload_of_exactly_max_length_is_allowed_and_first_byte_stays_zero():
    frame = codec.encode_frame(1, MESSAGE_TYPE_REQUEST, 0, bytes(MAX_MESSAGE_LENGTH))
    assert frame[:4] == (4 << 20).to_bytes(4, "big")
    assert frame[0] == 0
    assert len(frame) == codec.MESSAGE_HEADER_LENGTH + MAX_MESSAGE_LENGTH


def test_oversized_payload_is_refused_like_ttrpc_go():
    with pytest.raises(OversizedMessage) as info:
        codec.encode_frame(1, MESSAGE_TYPE_REQUEST, 0, bytes(MAX_MESSAGE_LENGTH + 1))
    assert info.value.code == Code.RESOURCE_EXHAUSTED
    assert info.value.length == MAX_MESSAGE_LENGTH + 1
    assert str(info.value) == "message length 4194305 exceed maximum message size of 4194304"
    assert isinstance(info.value, RpcError)


@pytest.mark.parametrize(
    ("stream_id", "type_", "flags"), [(-1, 1, 0), (1 << 32, 1, 0), (1, 256, 0), (1, 1, -1), (1, 1, 256)]
)
def test_header_fields_out_of_range_are_rejected(stream_id, type_, flags):
    with pytest.raises(ValueError):
        codec.encode_frame(stream_id, type_, flags, b"")


# --- decoding ------------------------------------------------------------------------------------


def test_decoder_returns_every_frame_of_one_feed_in_order():
    frames = [Frame(1, 1, 0, b"a"), Frame(3, 2, 0, b""), Frame(5, 3, 4, b"xyz" * 100)]
    data = b"".join(codec.encode_frame(f.stream_id, f.type, f.flags, f.payload) for f in frames)
    decoder = FrameDecoder()
    assert decoder.feed(data) == frames
    assert decoder.at_frame_boundary
    assert decoder.buffered == 0


def test_decoder_reassembles_frames_fed_byte_by_byte():
    data = CONNECT_ABC_FRAME + CONNECT_RESPONSE_FRAME + codec.encode_frame(9, 1, 0, b"")
    decoder = FrameDecoder()
    got = []
    for index in range(len(data)):
        got += decoder.feed(data[index : index + 1])
        # Mid-frame the decoder knows a frame is pending; at each frame end it does not.
        ends = {len(CONNECT_ABC_FRAME), len(CONNECT_ABC_FRAME) + len(CONNECT_RESPONSE_FRAME), len(data)}
        assert decoder.at_frame_boundary == ((index + 1) in ends)
    assert [f.stream_id for f in got] == [1, 1, 9]
    assert got[0].payload == CONNECT_ABC_FRAME[10:]
    assert got[1] == Frame(1, MESSAGE_TYPE_RESPONSE, 0, CONNECT_RESPONSE_FRAME[10:])
    assert got[2] == Frame(9, MESSAGE_TYPE_REQUEST, 0, b"")


def test_decoder_accepts_memoryview_and_bytearray():
    decoder = FrameDecoder()
    assert decoder.feed(memoryview(CONNECT_RESPONSE_FRAME[:5])) == []
    assert decoder.feed(bytearray(CONNECT_RESPONSE_FRAME[5:])) == [
        Frame(1, MESSAGE_TYPE_RESPONSE, 0, CONNECT_RESPONSE_FRAME[10:])
    ]


def test_oversized_frame_is_discarded_across_feeds_without_buffering():
    length = MAX_MESSAGE_LENGTH + 100_000
    after = codec.encode_frame(5, MESSAGE_TYPE_REQUEST, 0, b"next")
    decoder = FrameDecoder()
    assert decoder.feed(codec.encode_header(length, 3, MESSAGE_TYPE_REQUEST, 0)) == []
    chunk = b"\xff" * 65_536
    sent = 0
    while length - sent > len(chunk):
        assert decoder.feed(chunk) == []
        sent += len(chunk)
        assert decoder.buffered == 0
        assert not decoder.at_frame_boundary
    # The last discarded byte and the next frame arrive together.
    out = decoder.feed(b"\xff" * (length - sent) + after)
    assert out == [OversizedFrame(3, MESSAGE_TYPE_REQUEST, 0, length), Frame(5, MESSAGE_TYPE_REQUEST, 0, b"next")]
    assert decoder.at_frame_boundary


def test_oversized_frame_notice_comes_only_after_exactly_length_bytes():
    length = MAX_MESSAGE_LENGTH + 1
    decoder = FrameDecoder()
    data = codec.encode_header(length, 7, MESSAGE_TYPE_DATA, 2) + bytes(length - 1)
    assert decoder.feed(data) == []
    assert decoder.feed(b"\x00") == [OversizedFrame(7, MESSAGE_TYPE_DATA, 2, length)]
    # The byte after the discarded payload starts a new header, it is not swallowed.
    assert decoder.feed(codec.encode_frame(9, 1, 0, b"")) == [Frame(9, 1, 0, b"")]


def test_oversized_frame_in_a_single_feed():
    length = MAX_MESSAGE_LENGTH + 3
    data = codec.encode_header(length, 1, 1, 0) + bytes(length) + codec.encode_frame(3, 1, 0, b"z")
    assert FrameDecoder().feed(data) == [OversizedFrame(1, 1, 0, length), Frame(3, 1, 0, b"z")]


def test_largest_declared_length_leaves_the_decoder_discarding_not_buffering():
    decoder = FrameDecoder()
    assert decoder.feed(b"\xff\xff\xff\xff\x00\x00\x00\x01\x01\x00" + bytes(1000)) == []
    assert decoder.buffered == 0
    assert not decoder.at_frame_boundary


def test_truncated_frame_is_held_until_completed():
    decoder = FrameDecoder()
    assert decoder.feed(CONNECT_ABC_FRAME[:-1]) == []
    assert decoder.buffered == len(CONNECT_ABC_FRAME) - 1
    assert not decoder.at_frame_boundary
    assert len(decoder.feed(CONNECT_ABC_FRAME[-1:])) == 1


# --- envelopes -----------------------------------------------------------------------------------


def test_request_envelope_round_trip_with_repeated_metadata_keys():
    body = codec.encode_request(
        "svc.S", "M", b"\x01\x02", timeout_nano=5_000_000_000, metadata={"k": ["a", "b"], "ns": "default"}
    )
    request = codec.decode_request(body)
    assert (request.service, request.method, request.payload, request.timeout_nano) == ("svc.S", "M", b"\x01\x02", 5 * 10**9)
    assert codec.metadata_dict(request) == {"k": ["a", "b"], "ns": ["default"]}


def test_metadata_pairs_keep_wire_order_when_given_as_tuples():
    body = codec.encode_request("s", "m", b"", metadata=[("k", "1"), ("x", "y"), ("k", "2")])
    assert codec.metadata_dict(codec.decode_request(body)) == {"k": ["1", "2"], "x": ["y"]}


def test_bad_envelope_bytes_raise_decode_error():
    with pytest.raises(codec.DecodeError):
        codec.decode_request(b"\xff\xff\xff")
    with pytest.raises(codec.DecodeError):
        codec.decode_response(b"\x0a\x05\x08")


def test_response_error_treats_only_a_nonzero_status_as_failure():
    assert codec.response_error(codec.decode_response(CONNECT_RESPONSE_FRAME[10:])) is None
    assert codec.response_error(codec.decode_response(b"")) is None  # no status at all: ttrpc-go says success
    error = codec.response_error(codec.decode_response(NOT_FOUND_FRAME[10:]))
    assert isinstance(error, RpcError)
    assert (error.code, error.message) == (Code.NOT_FOUND, "not found: abc")


# --- status --------------------------------------------------------------------------------------


class _NotFound(RpcError):
    code = Code.NOT_FOUND


def test_rpc_error_default_code_is_unknown_and_can_be_set_per_instance():
    assert RpcError("x").code == Code.UNKNOWN
    assert RpcError("x", code=Code.ALREADY_EXISTS).code is Code.ALREADY_EXISTS
    assert RpcError("x", code=9).code is Code.FAILED_PRECONDITION


def test_rpc_error_subclass_carries_its_class_code_and_message():
    error = _NotFound("container c1 not found")
    assert error.code is Code.NOT_FOUND
    assert error.message == str(error) == "container c1 not found"
    assert _NotFound("y", code=Code.INTERNAL).code is Code.INTERNAL
    assert _NotFound.code is Code.NOT_FOUND  # an instance override does not leak into the class
    assert "NOT_FOUND" in repr(error)


def test_rpc_error_keeps_a_code_outside_the_enum():
    error = codec.response_error(codec.decode_response(codec.encode_response(b"", 99, "odd")))
    assert error is not None and error.code == 99 and not isinstance(error.code, Code)


def test_codec_import_does_not_pull_in_asyncio():
    script = "import sys, shim.ttrpc.codec, shim.ttrpc.status; sys.exit('asyncio' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr or "codec imported asyncio"
