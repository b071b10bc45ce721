"""``wasi:io/{error,poll,streams}@0.2.x``: the stream and pollable resources every other interface hands out.

Streams are Python objects with a small protocol (``InputSource.read`` / ``OutputTarget.write``); the request
body, the response body, stdout/stderr, files and outbound HTTP bodies each implement it in their own module.
All "blocking" here means blocking the guest thread, which is how a guest thread serves its request
(contract.py); every wait is bounded by the request's deadline (``ctx.remaining()``), because the epoch deadline
only interrupts wasm code, never a Python call that sleeps.

Pollables: most sources are ready at once (their read blocks instead, which a guest cannot tell from a
ready-then-read); only timers and outbound responses can be pending, and ``poll`` sleeps until the earliest
one can be ready.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from runtime.host.registry import REGISTRY
from runtime.host.traps import HostTrap
from runtime.host.values import OK_EMPTY, Err, Ok, Variant

if TYPE_CHECKING:
    from runtime.host.context import RequestContext

VERSIONS = ("0.2.*",)
#: The most one read returns and the most one write may carry (check-write's permit). Each byte of a list<u8>
#: costs a 32-byte element of a C array in the wasmtime C API (runtime.host.marshal). Measured, 1 MiB echo through
#: the componentize-py proxy app: 16-256 KiB chunks 64-69 ms, 1 MiB chunks 102 ms (32 MiB fresh mmaps per call).
MAX_CHUNK = 1 << 16


class DeadlineExceeded(HostTrap):
    """A host call waited past the request's deadline: the executor answers 504, like an epoch interrupt."""


class StreamFailure(Exception):
    """A read or write failed (not a clean end): the guest gets ``last-operation-failed(error)``."""

    def __init__(self, message: str, http_error: Variant | None = None) -> None:
        super().__init__(message)
        #: The wasi:http error-code behind it, for ``wasi:http/types#http-error-code``.
        self.http_error = http_error


class IoError:
    """The object behind a ``wasi:io/error.error`` handle."""

    __slots__ = ("message", "http_error")

    def __init__(self, message: str, http_error: Variant | None = None) -> None:
        self.message = message
        self.http_error = http_error


# ------------------------------------------------------------------------------------------------ pollables


class Pollable:
    """Ready by default. ``ready_at`` is a monotonic time when readiness comes from a clock, else None."""

    def ready(self) -> bool:
        return True

    def ready_at(self) -> float | None:
        return None


READY = Pollable()


class TimerPollable(Pollable):
    __slots__ = ("deadline",)

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def ready(self) -> bool:
        return time.monotonic() >= self.deadline

    def ready_at(self) -> float | None:
        return self.deadline


def wait_until_any_ready(ctx: RequestContext, pollables: list[Pollable]) -> list[int]:
    """Indices of the ready pollables, sleeping until at least one is (bounded by the request deadline)."""
    while True:
        ready = [i for i, p in enumerate(pollables) if p.ready()]
        if ready:
            return ready
        wakeups = [t for p in pollables if (t := p.ready_at()) is not None]
        if not wakeups:
            raise HostTrap("poll on pollables that can never become ready (would wait forever)")
        wake = min(wakeups)
        now = time.monotonic()
        if wake > ctx.deadline:
            time.sleep(max(0.0, ctx.deadline - now))
            raise DeadlineExceeded("request deadline passed while the guest was waiting")
        time.sleep(max(0.0, wake - now))


# ------------------------------------------------------------------------------------------------ streams


class InputSource:
    """What sits behind an input-stream. ``read`` returns b"" only at the end (the stream is then closed)."""

    def read(self, ctx: RequestContext, max_bytes: int) -> bytes:
        return b""

    def pollable(self) -> Pollable:
        return READY


class OutputTarget:
    """What sits behind an output-stream. ``write`` takes at most ``check_write()`` bytes."""

    def check_write(self, ctx: RequestContext) -> int:
        return MAX_CHUNK

    def write(self, ctx: RequestContext, data: bytes) -> None:
        raise StreamFailure("this stream cannot be written")

    def flush(self, ctx: RequestContext) -> None:
        pass

    def pollable(self) -> Pollable:
        return READY


class InputStream:
    """An input-stream handle: its source, and whether it ended (then every read is ``closed``)."""

    __slots__ = ("source", "closed")

    def __init__(self, source: InputSource) -> None:
        self.source = source
        self.closed = False


class OutputStream:
    __slots__ = ("target", "failed")

    def __init__(self, target: OutputTarget) -> None:
        self.target = target
        self.failed: str | None = None


error_iface = REGISTRY.interface("wasi:io/error", VERSIONS)
ERROR = error_iface.resource("error")
poll_iface = REGISTRY.interface("wasi:io/poll", VERSIONS)
POLLABLE = poll_iface.resource("pollable")
streams = REGISTRY.interface("wasi:io/streams", VERSIONS)
INPUT_STREAM = streams.resource("input-stream")
OUTPUT_STREAM = streams.resource("output-stream")

CLOSED = Err(Variant("closed"))


def stream_failed(ctx: RequestContext, failure: StreamFailure) -> Err[Variant]:
    return Err(Variant("last-operation-failed", ctx.new(ERROR, IoError(str(failure), failure.http_error))))


@error_iface.func("[method]error.to-debug-string")
def _error_debug(ctx: RequestContext, error: int) -> str:
    return ctx.table.get(error, IoError).message


@poll_iface.func("[method]pollable.ready")
def _pollable_ready(ctx: RequestContext, pollable: int) -> bool:
    return ctx.table.get(pollable, Pollable).ready()


@poll_iface.func("[method]pollable.block")
def _pollable_block(ctx: RequestContext, pollable: int) -> None:
    wait_until_any_ready(ctx, [ctx.table.get(pollable, Pollable)])


@poll_iface.func("poll")
def _poll(ctx: RequestContext, pollables: list[int]) -> list[int]:
    if not pollables:
        raise HostTrap("poll called with an empty list")
    return wait_until_any_ready(ctx, [ctx.table.get(p, Pollable) for p in pollables])


def _read(ctx: RequestContext, stream_rep: int, length: int) -> Any:
    stream = ctx.table.get(stream_rep, InputStream)
    if stream.closed:
        return CLOSED
    try:
        data = stream.source.read(ctx, min(length, MAX_CHUNK)) if length else b""
    except StreamFailure as failure:
        stream.closed = True
        return stream_failed(ctx, failure)
    if not data and length:
        stream.closed = True
        return CLOSED
    return Ok(data)


def _skip(ctx: RequestContext, stream_rep: int, length: int) -> Any:
    result = _read(ctx, stream_rep, length)
    return Ok(len(result.value)) if isinstance(result, Ok) else result


streams.define("[method]input-stream.read", _read)
streams.define("[method]input-stream.blocking-read", _read)
streams.define("[method]input-stream.skip", _skip)
streams.define("[method]input-stream.blocking-skip", _skip)


@streams.func("[method]input-stream.subscribe")
def _input_subscribe(ctx: RequestContext, stream_rep: int) -> Any:
    return ctx.new(POLLABLE, ctx.table.get(stream_rep, InputStream).source.pollable())


def _output(ctx: RequestContext, stream_rep: int) -> OutputStream:
    return ctx.table.get(stream_rep, OutputStream)


@streams.func("[method]output-stream.check-write")
def _check_write(ctx: RequestContext, stream_rep: int) -> Any:
    stream = _output(ctx, stream_rep)
    if stream.failed is not None:
        return stream_failed(ctx, StreamFailure(stream.failed))
    return Ok(stream.target.check_write(ctx))


def _write(ctx: RequestContext, stream_rep: int, contents: bytes) -> Any:
    stream = _output(ctx, stream_rep)
    if stream.failed is not None:
        return stream_failed(ctx, StreamFailure(stream.failed))
    try:
        if contents:
            stream.target.write(ctx, contents)
    except StreamFailure as failure:
        stream.failed = str(failure)
        return stream_failed(ctx, failure)
    return OK_EMPTY


def _write_and_flush(ctx: RequestContext, stream_rep: int, contents: bytes) -> Any:
    result = _write(ctx, stream_rep, contents)
    if result is OK_EMPTY:
        return _flush(ctx, stream_rep)
    return result


def _flush(ctx: RequestContext, stream_rep: int) -> Any:
    stream = _output(ctx, stream_rep)
    if stream.failed is not None:
        return stream_failed(ctx, StreamFailure(stream.failed))
    try:
        stream.target.flush(ctx)
    except StreamFailure as failure:
        stream.failed = str(failure)
        return stream_failed(ctx, failure)
    return OK_EMPTY


streams.define("[method]output-stream.write", _write)
streams.define("[method]output-stream.blocking-write-and-flush", _write_and_flush)
streams.define("[method]output-stream.flush", _flush)
streams.define("[method]output-stream.blocking-flush", _flush)
def _zeroes(length: int) -> bytes:
    if length > MAX_CHUNK:  # more than check-write ever permits: a guest bug, not a reason to allocate it
        raise HostTrap(f"write-zeroes of {length} bytes exceeds the {MAX_CHUNK} bytes check-write permits")
    return bytes(length)


streams.define("[method]output-stream.write-zeroes", lambda ctx, s, n: _write(ctx, s, _zeroes(n)))
streams.define(
    "[method]output-stream.blocking-write-zeroes-and-flush", lambda ctx, s, n: _write_and_flush(ctx, s, _zeroes(n))
)


@streams.func("[method]output-stream.subscribe")
def _output_subscribe(ctx: RequestContext, stream_rep: int) -> Any:
    return ctx.new(POLLABLE, _output(ctx, stream_rep).target.pollable())


def _splice(ctx: RequestContext, out_rep: int, in_rep: int, length: int) -> Any:
    out = _output(ctx, out_rep)
    length = min(length, out.target.check_write(ctx))
    result = _read(ctx, in_rep, length)
    if not isinstance(result, Ok):
        return result
    written = _write(ctx, out_rep, result.value)
    return Ok(len(result.value)) if written is OK_EMPTY else written


streams.define("[method]output-stream.splice", _splice)
streams.define("[method]output-stream.blocking-splice", _splice)
