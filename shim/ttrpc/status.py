"""gRPC status codes and the one exception family the shim raises to put a status on the wire.

containerd maps a ttrpc `google.rpc.Status` to its own error kinds with `errdefs.FromGRPC`
(errgrpc.ToNative in containerd 2.x), so every failure the shim reports must carry a gRPC code.
Handlers raise an `RpcError` (or a subclass with a class-level `code`, see shim/errors.py); the
ttrpc server turns it into the Response status in one place, and the ttrpc client raises it back
from a non-OK status.

Pure module: no I/O, no asyncio, no protobuf.
"""

from __future__ import annotations

from enum import IntEnum


class Code(IntEnum):
    """gRPC status codes (google.rpc.Code), the numbers containerd and ttrpc put on the wire."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


def to_code(value: int) -> Code | int:
    """The `Code` for a wire value, or the bare int for a code this enum does not know.

    A peer may send any int32; keeping unknown values (rather than raising) lets the client report
    exactly what it received.
    """
    try:
        return Code(value)
    except ValueError:
        return value


class RpcError(Exception):
    """An error with a gRPC status code: raised by handlers, and by the client on a non-OK reply.

    Subclasses fix the code with a class attribute (``class NotFound(RpcError): code =
    Code.NOT_FOUND``) so a call site says what went wrong, not which number to send;
    ``RpcError(message, code=Code.X)`` sets it per instance.
    """

    code: Code | int = Code.UNKNOWN

    def __init__(self, message: str = "", code: Code | int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = to_code(int(code))

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        code = self.code.name if isinstance(self.code, Code) else str(self.code)
        return f"{type(self).__name__}({self.message!r}, code={code})"


__all__ = ["Code", "RpcError", "to_code"]
