"""ttrpc wire codec: frames <-> bytes, and the Request/Response envelopes. No I/O.

Everything that decides what bytes go on a ttrpc connection lives here, so every protocol corner
(partial reads, oversized frames, bad envelopes) is testable without sockets; server.py and
client.py are thin asyncio loops around it (the h11 model, see STYLE.md).

Frame layout [containerd/ttrpc PROTOCOL.md, channel.go]:

    | length u32 BE | stream id u32 BE | type u8 | flags u8 | payload (length bytes) |

Envelopes [containerd/ttrpc request.proto]: a Request frame carries a serialized
`ttrpc.Request`, the server answers on the same stream id with a Response frame carrying a
`ttrpc.Response` whose `status` is always set (code 0 => empty sub-message, as ttrpc-go does).

This module must stay cheap to import (the short-lived `start` command may use it): stdlib,
protobuf and the generated envelope only; never asyncio.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from proto.google.rpc import status_pb2
from proto.ttrpc import request_pb2
from shim.ttrpc.status import Code, RpcError

MESSAGE_HEADER_LENGTH = 10
# [containerd/ttrpc channel.go messageLengthMax]; the same limit in ttrpc-rust
# [containerd/ttrpc-rust src/proto.rs].
MAX_MESSAGE_LENGTH = 4 << 20

MESSAGE_TYPE_REQUEST = 0x1
MESSAGE_TYPE_RESPONSE = 0x2
MESSAGE_TYPE_DATA = 0x3

# Request: REMOTE_CLOSED / REMOTE_OPEN (streaming only); Data: REMOTE_CLOSED, NO_DATA. Unary
# Task and Events calls use flags 0 [containerd/ttrpc channel.go].
FLAG_REMOTE_CLOSED = 0x1
FLAG_REMOTE_OPEN = 0x2
FLAG_NO_DATA = 0x4

_HEADER = struct.Struct(">IIBB")
_MAX_U32 = 0xFFFFFFFF

Request = request_pb2.Request
Response = request_pb2.Response
KeyValue = request_pb2.KeyValue
Status = status_pb2.Status


class OversizedMessage(RpcError):
    """A payload over MAX_MESSAGE_LENGTH: refused by the sender, as ttrpc-go's OversizedMessageError.

    Its code is what ttrpc-go reports for it (it implements GRPCStatus as RESOURCE_EXHAUSTED).
    """

    code = Code.RESOURCE_EXHAUSTED

    def __init__(self, length: int) -> None:
        super().__init__(oversized_message_text(length))
        self.length = length


def oversized_message_text(length: int) -> str:
    """The exact status message ttrpc-go sends for an oversized frame [containerd/ttrpc channel.go recv]."""
    return f"message length {length} exceed maximum message size of {MAX_MESSAGE_LENGTH}"


@dataclass(frozen=True, slots=True)
class Frame:
    """One complete frame as read off the wire."""

    stream_id: int
    type: int
    flags: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class OversizedFrame:
    """A frame whose declared length exceeded MAX_MESSAGE_LENGTH; its payload was discarded unread.

    Emitted once all `length` payload bytes have been skipped, like ttrpc-go (which discards and
    then answers RESOURCE_EXHAUSTED on `stream_id`, keeping the connection open)
    [containerd/ttrpc channel.go recv; server.go run].
    """

    stream_id: int
    type: int
    flags: int
    length: int


def encode_header(length: int, stream_id: int, type: int, flags: int) -> bytes:
    """The 10-byte frame header; raises ValueError for values that do not fit their field."""
    if not 0 <= length <= _MAX_U32 or not 0 <= stream_id <= _MAX_U32:
        raise ValueError(f"length {length} / stream id {stream_id} out of uint32 range")
    if not 0 <= type <= 0xFF or not 0 <= flags <= 0xFF:
        raise ValueError(f"type {type} / flags {flags} out of uint8 range")
    return _HEADER.pack(length, stream_id, type, flags)


def encode_frame(stream_id: int, type: int, flags: int, payload: bytes = b"") -> bytes:
    """Header plus payload; raises OversizedMessage past 4 MiB, which ttrpc-go peers would refuse."""
    if len(payload) > MAX_MESSAGE_LENGTH:
        raise OversizedMessage(len(payload))
    return encode_header(len(payload), stream_id, type, flags) + bytes(payload)


class FrameDecoder:
    """Incremental frame parser: feed it whatever the socket returned, get complete frames back.

    Never raises on input: any 10 bytes are a valid header, so every byte string is a (possibly
    incomplete) frame sequence. A frame longer than MAX_MESSAGE_LENGTH is skipped without being
    buffered (its bytes may arrive over many feeds) and reported as an OversizedFrame.
    """

    __slots__ = ("_buffer", "_discard_remaining", "_oversized")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._discard_remaining = 0
        self._oversized: OversizedFrame | None = None

    @property
    def at_frame_boundary(self) -> bool:
        """True when no partial header, payload or discard is pending.

        At EOF, False means the peer stopped mid-frame (ttrpc-go: ErrUnexpectedEOF, connection closed).
        """
        return not self._buffer and self._oversized is None

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame (never more than one frame's header + 4 MiB)."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame | OversizedFrame]:
        """Consume `data`; return the frames (and oversized notices) it completed, in wire order."""
        out: list[Frame | OversizedFrame] = []
        view = memoryview(data).cast("B")
        buffer = self._buffer
        while True:
            if self._oversized is not None:
                taken = min(len(view), self._discard_remaining)
                self._discard_remaining -= taken
                view = view[taken:]
                if self._discard_remaining:
                    break
                out.append(self._oversized)
                self._oversized = None
            if not view:
                break
            if not buffer and len(view) >= MESSAGE_HEADER_LENGTH:
                # Fast path: parse straight from the input, copying only each payload once.
                length, stream_id, type_, flags = _HEADER.unpack_from(view)
                if length <= MAX_MESSAGE_LENGTH and len(view) >= MESSAGE_HEADER_LENGTH + length:
                    end = MESSAGE_HEADER_LENGTH + length
                    out.append(Frame(stream_id, type_, flags, bytes(view[MESSAGE_HEADER_LENGTH:end])))
                    view = view[end:]
                    continue
            if len(buffer) < MESSAGE_HEADER_LENGTH:
                need = MESSAGE_HEADER_LENGTH - len(buffer)
                buffer += view[:need]
                view = view[need:]
                if len(buffer) < MESSAGE_HEADER_LENGTH:
                    break
            length, stream_id, type_, flags = _HEADER.unpack_from(buffer)
            if length > MAX_MESSAGE_LENGTH:
                # Skip the payload as it arrives, never holding it.
                buffer.clear()
                self._oversized = OversizedFrame(stream_id, type_, flags, length)
                self._discard_remaining = length
                continue
            need = MESSAGE_HEADER_LENGTH + length - len(buffer)
            buffer += view[:need]
            view = view[need:]
            if len(buffer) < MESSAGE_HEADER_LENGTH + length:
                break
            out.append(Frame(stream_id, type_, flags, bytes(buffer[MESSAGE_HEADER_LENGTH:])))
            buffer.clear()
        return out


# --- envelopes -------------------------------------------------------------------------------


def encode_request(
    service: str,
    method: str,
    payload: bytes,
    *,
    timeout_nano: int = 0,
    metadata: Mapping[str, str | Iterable[str]] | Iterable[tuple[str, str]] | None = None,
) -> bytes:
    """A serialized ttrpc.Request. `metadata` values may be lists (ttrpc allows repeated keys)."""
    request = Request(service=service, method=method, payload=payload, timeout_nano=timeout_nano)
    for key, value in _metadata_pairs(metadata):
        request.metadata.add(key=key, value=value)
    return request.SerializeToString()


def _metadata_pairs(
    metadata: Mapping[str, str | Iterable[str]] | Iterable[tuple[str, str]] | None,
) -> list[tuple[str, str]]:
    if metadata is None:
        return []
    items = metadata.items() if isinstance(metadata, Mapping) else metadata
    pairs = []
    for key, value in items:
        if isinstance(value, str):
            pairs.append((key, value))
        else:
            pairs.extend((key, v) for v in value)
    return pairs


def decode_request(data: bytes) -> request_pb2.Request:
    """Parse a Request envelope; raises google.protobuf.message.DecodeError on bad bytes."""
    return Request.FromString(data)


def metadata_dict(request: request_pb2.Request) -> dict[str, list[str]]:
    """Request metadata as key -> values in wire order, like ttrpc-go's MD.fromRequest
    [containerd/ttrpc metadata.go]."""
    result: dict[str, list[str]] = {}
    for pair in request.metadata:
        result.setdefault(pair.key, []).append(pair.value)
    return result


def encode_response(payload: bytes = b"", code: int = Code.OK, message: str = "") -> bytes:
    """A serialized ttrpc.Response; `status` is always present, as ttrpc-go's server sends it."""
    response = Response(payload=payload)
    response.status.SetInParent()
    response.status.code = int(code)
    response.status.message = message
    return response.SerializeToString()


def decode_response(data: bytes) -> request_pb2.Response:
    """Parse a Response envelope; raises google.protobuf.message.DecodeError on bad bytes."""
    return Response.FromString(data)


def request_frame(
    stream_id: int,
    service: str,
    method: str,
    payload: bytes,
    *,
    timeout_nano: int = 0,
    metadata: Mapping[str, str | Iterable[str]] | Iterable[tuple[str, str]] | None = None,
) -> bytes:
    """A whole Request frame (flags 0: unary)."""
    body = encode_request(service, method, payload, timeout_nano=timeout_nano, metadata=metadata)
    return encode_frame(stream_id, MESSAGE_TYPE_REQUEST, 0, body)


def response_frame(stream_id: int, payload: bytes = b"", code: int = Code.OK, message: str = "") -> bytes:
    """A whole Response frame (flags 0)."""
    return encode_frame(stream_id, MESSAGE_TYPE_RESPONSE, 0, encode_response(payload, code, message))


def error_frame(stream_id: int, error: RpcError) -> bytes:
    """The Response frame reporting `error` on `stream_id`."""
    return response_frame(stream_id, b"", error.code, error.message)


def response_error(response: request_pb2.Response) -> RpcError | None:
    """The RpcError a Response carries, or None for success.

    ttrpc-go's client treats only `status != nil && code != 0` as an error [containerd/ttrpc client.go Call].
    """
    if response.HasField("status") and response.status.code != Code.OK:
        return RpcError(response.status.message, code=response.status.code)
    return None


__all__ = [
    "FLAG_NO_DATA",
    "FLAG_REMOTE_CLOSED",
    "FLAG_REMOTE_OPEN",
    "MAX_MESSAGE_LENGTH",
    "MESSAGE_HEADER_LENGTH",
    "MESSAGE_TYPE_DATA",
    "MESSAGE_TYPE_REQUEST",
    "MESSAGE_TYPE_RESPONSE",
    "DecodeError",
    "Frame",
    "FrameDecoder",
    "KeyValue",
    "OversizedFrame",
    "OversizedMessage",
    "Request",
    "Response",
    "Status",
    "decode_request",
    "decode_response",
    "encode_frame",
    "encode_header",
    "encode_request",
    "encode_response",
    "error_frame",
    "metadata_dict",
    "oversized_message_text",
    "request_frame",
    "response_error",
    "response_frame",
]
