"""The HTTP/1.1 front end of Spin's HTTP trigger: asyncio for the sockets, h11 for the framing, guests on threads.

One ``HttpServer`` per worker process. The event loop owns every socket and the h11 state machine of each
connection; guests run on guest threads (runtime.http.dispatch decides when) and talk to the loop only through
the two objects of the contract (runtime.http.contract): ``_BodyPipe`` (RequestBody: the request body, streamed
from the socket while the guest reads it) and ``_ResponseChannel`` (ResponseSink: the response, streamed to the
socket while the guest writes it). Both hand work to the loop with ``call_soon_threadsafe`` and block the guest
thread, never the loop, for flow control:

- request body: the loop pauses reading the socket while more than ``body_buffer_high`` bytes wait for the guest;
- response body: the guest's ``write`` blocks while the socket's send buffer holds more than
  ``write_buffer_high`` bytes (asyncio's pause_writing), up to ``body_timeout`` seconds, then ClientGone.

A response's events (start, data, end, 100-continue, "guest done") queue in the channel and the loop sends them in
one batch, so a small response costs one wakeup of the loop, not three.

Everything else is what an HTTP/1.1 server owes its clients: keep-alive and pipelining (h11 pauses on the next
request until the current response is done), HEAD, HTTP/1.0, ``Expect: 100-continue`` (sent when the guest first
reads the body), a 64 KiB cap on the request head (431), a deadline for the request head against slowloris, an
idle keep-alive timeout, and 400 for malformed requests. Spin's own answers (well-known paths, the empty 404) are
written on the loop without a guest.

Errors: ``GuestFailure`` before the response started is answered with its status and text, and its log line goes
to the container log (fd 2, one write, no logging module: it is cheap and survives a broken logging config);
after the response started, the connection is aborted so the client sees a truncated response rather than a
wrong one. Any other exception from an executor is a 500 plus a log line, and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import email.utils
import http
import math
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import h11

from runtime.http.contract import ClientGone, Executor, GuestFailure, Headers, RequestHead
from runtime.http.dispatch import DispatchPolicy, Dispatcher, Ticket, make_dispatcher
from runtime.http.headers import format_addr, full_url, request_path, spin_request_headers, with_spin_headers
from runtime.http.routing import Router
from runtime.http.wellknown import AppInfo, well_known_response


@dataclass(frozen=True)
class ServerOptions:
    """Limits and settings of one server; the defaults are what the shim runs with unless configured."""

    #: Request URL scheme for ``spin-full-url`` (TLS is terminated in front of the pod, as with SpinKube).
    scheme: str = "http"
    #: Seconds a request may run (``RequestHead.deadline``); None = no limit (Spin's default).
    request_timeout: float | None = None
    #: Bytes of request line plus headers; more is answered 431 (hyper's default buffer is 400 KiB; 64 KiB is
    #: what nginx and most proxies allow in front of it anyway).
    max_header_bytes: int = 64 * 1024
    #: Seconds from a connection's first byte (or the first byte of a keep-alive request) to its complete head;
    #: a client sending headers slower than that is disconnected (slowloris).
    header_timeout: float = 10.0
    #: Seconds an idle keep-alive connection is kept.
    keepalive_timeout: float = 30.0
    #: Seconds without progress while a guest waits to read the body or to write the response: then the guest
    #: gets ClientGone and the connection is closed. Also bounds how long an unread body is drained.
    body_timeout: float = 30.0
    #: Request-body bytes buffered for the guest before the socket stops being read.
    body_buffer_high: int = 256 * 1024
    #: Response bytes queued to the socket before the guest's write blocks.
    write_buffer_high: int = 256 * 1024
    #: Bytes of a request body the guest did not read that are drained to keep the connection; beyond, close.
    max_discard_bytes: int = 1024 * 1024
    #: How guest threads are scheduled (runtime.http.dispatch).
    dispatch: DispatchPolicy = field(default_factory=DispatchPolicy)
    #: What ``/.well-known/spin/info`` reports.
    app_info: AppInfo = field(default_factory=AppInfo)
    #: Where log lines go: the container's stderr.
    log_fd: int = 2
    #: listen() backlog for the sockets ``serve`` is given.
    backlog: int = 1024


def log_line(fd: int, line: str) -> None:
    """One line to the container log in one write(2), so lines of concurrent workers never interleave."""
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode("utf-8", "replace"))
    except OSError:
        pass


_REASONS = {status.value: status.phrase.encode() for status in http.HTTPStatus}
_date_cache: tuple[int, bytes] = (0, b"")


def _date_header() -> bytes:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, usegmt=True).encode())
    return _date_cache[1]


def _response(status: int, headers: Headers) -> h11.Response:
    """An h11 Response with a reason phrase and a Date (as hyper sends); raises h11.LocalProtocolError if bad."""
    if not any(name.lower() == b"date" for name, _ in headers):
        headers = [*headers, (b"date", _date_header())]
    return h11.Response(status_code=status, headers=headers, reason=_REASONS.get(status, b""))


# Events a guest thread queues for the loop, in order.
_START, _DATA, _END, _CONTINUE, _FAIL, _ABORT, _DONE = range(7)


class _BodyPipe:
    """The request body between the loop (feeds it) and the guest thread (reads it): the contract's RequestBody."""

    def __init__(self, conn: _Connection, channel: _ResponseChannel, deadline: float,
                 expect_continue: bool) -> None:
        self._conn = conn
        self._channel = channel
        self._deadline = deadline
        self._cond = threading.Condition(threading.Lock())
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._eof = False
        self._error: str | None = None
        self._reading_paused = False
        self._expect_continue = expect_continue
        self.ticket: Ticket | None = None

    # loop side ------------------------------------------------------------------------------------------

    def feed(self, data: bytes) -> bool:
        """Queue body bytes; True when the loop should stop reading the socket until the guest catches up."""
        with self._cond:
            self._chunks.append(data)
            self._buffered += len(data)
            self._cond.notify()
            if self._buffered > self._conn.options.body_buffer_high and not self._reading_paused:
                self._reading_paused = True
                return True
            return False

    def end(self) -> None:
        with self._cond:
            self._eof = True
            self._cond.notify()

    def fail(self, reason: str) -> None:
        with self._cond:
            if not self._eof and self._error is None:
                self._error = reason
            self._cond.notify()

    def drop(self) -> bool:
        """The guest is done: forget what it did not read; True if the socket was paused for it."""
        with self._cond:
            self._chunks.clear()
            self._buffered = 0
            paused, self._reading_paused = self._reading_paused, False
            return paused

    # guest side -----------------------------------------------------------------------------------------

    def read(self, max_bytes: int) -> bytes:
        if self._expect_continue:
            # The client holds its body back until we say so; say it only when the guest actually wants it.
            self._expect_continue = False
            self._channel.queue_continue()
        with self._cond:
            if not self._chunks and not self._eof and self._error is None:
                self._wait_locked()
            if self._chunks:
                return self._take_locked(max(1, max_bytes))
            if self._error is not None:
                raise ClientGone(self._error)
            return b""

    def _wait_locked(self) -> None:
        ticket = self.ticket
        if ticket is not None:
            ticket.block()
        try:
            stall_at = time.monotonic() + self._conn.options.body_timeout
            while not self._chunks and not self._eof and self._error is None:
                now = time.monotonic()
                if now >= self._deadline:
                    self._error = "the request deadline passed while waiting for the request body"
                elif now >= stall_at:
                    self._error = f"no request body received for {self._conn.options.body_timeout:g} s"
                else:
                    self._cond.wait(min(stall_at, self._deadline) - now)
                    continue
                self._conn.threadsafe(self._conn.close_after_response)
        finally:
            if ticket is not None:
                ticket.unblock()

    def _take_locked(self, max_bytes: int) -> bytes:
        first = self._chunks[0]
        if len(first) <= max_bytes:
            self._chunks.popleft()
            data = first
            # Coalesce small chunks (chunked uploads arrive in pieces) so the guest makes fewer host calls.
            while self._chunks and len(data) + len(self._chunks[0]) <= max_bytes:
                data += self._chunks.popleft()
        else:
            data, self._chunks[0] = first[:max_bytes], first[max_bytes:]
        self._buffered -= len(data)
        if self._reading_paused and self._buffered <= self._conn.options.body_buffer_high // 2:
            self._reading_paused = False
            self._conn.threadsafe(self._conn.resume_reading_for_body)
        return data


class _ResponseChannel:
    """The response from the guest thread to the loop: the contract's ResponseSink, plus the server's own ends."""

    def __init__(self, conn: _Connection, head_only: bool) -> None:
        self._conn = conn
        self._head_only = head_only
        self._cond = threading.Condition(threading.Lock())
        self._pending: list[tuple[Any, ...]] = []
        self._pending_bytes = 0
        self._flush_scheduled = False
        self._started = False
        self._finished = False
        self._gone: str | None = None
        self.ticket: Ticket | None = None

    @property
    def started(self) -> bool:
        return self._started

    @property
    def finished(self) -> bool:
        return self._finished

    def start(self, status: int, headers: Headers) -> None:
        if self._started:
            raise RuntimeError("the response was already started")
        response = _response(status, headers)  # validates names and values before anything is committed
        self._started = True
        self._queue((_START, response), 0)

    def write(self, data: bytes) -> None:
        if not self._started or self._finished:
            raise RuntimeError("write outside a started, unfinished response")
        if not data or self._head_only:
            if self._gone is not None:
                raise ClientGone(self._gone)
            return
        self._queue((_DATA, bytes(data)), len(data))
        self._wait_writable()

    def finish(self, trailers: Headers | None = None) -> None:
        if not self._started or self._finished:
            raise RuntimeError("finish outside a started, unfinished response")
        self._finished = True
        self._queue((_END, trailers or []), 0)

    # the server's side (guest thread) -------------------------------------------------------------------

    def queue_continue(self) -> None:
        try:
            self._queue((_CONTINUE,), 0)
        except ClientGone:
            pass

    def fail(self, status: int, text: str) -> None:
        """Answer with an error the guest did not write (nothing was started)."""
        self._started = self._finished = True
        self._queue((_FAIL, status, text), 0, force=True)

    def abort(self) -> None:
        self._queue((_ABORT,), 0, force=True)

    def done(self) -> None:
        """The guest's job returned: the loop may move the connection on."""
        self._queue((_DONE,), 0, force=True)

    def _queue(self, item: tuple[Any, ...], nbytes: int, force: bool = False) -> None:
        with self._cond:
            if self._gone is not None and not force:
                raise ClientGone(self._gone)
            self._pending.append(item)
            self._pending_bytes += nbytes
            schedule = not self._flush_scheduled
            self._flush_scheduled = True
        if schedule:
            self._conn.threadsafe(self._conn.flush, self)

    def _wait_writable(self) -> None:
        conn = self._conn
        high = conn.options.write_buffer_high
        with self._cond:
            if self._pending_bytes <= high and not conn.writing_paused:
                return
        ticket = self.ticket
        if ticket is not None:
            ticket.block()
        try:
            with self._cond:
                stall_at = time.monotonic() + conn.options.body_timeout
                while (self._pending_bytes > high or conn.writing_paused) and self._gone is None:
                    remaining = stall_at - time.monotonic()
                    if remaining <= 0:
                        self._gone = f"the client read nothing for {conn.options.body_timeout:g} s"
                        self._pending.append((_ABORT,))
                        conn.threadsafe(conn.flush, self)
                        break
                    self._cond.wait(remaining)
                if self._gone is not None:
                    raise ClientGone(self._gone)
        finally:
            if ticket is not None:
                ticket.unblock()

    # loop side ------------------------------------------------------------------------------------------

    def take(self) -> list[tuple[Any, ...]]:
        with self._cond:
            items, self._pending = self._pending, []
            self._pending_bytes = 0
            self._flush_scheduled = False
            self._cond.notify_all()
            return items

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def set_gone(self, reason: str) -> None:
        with self._cond:
            if self._gone is None:
                self._gone = reason
            self._cond.notify_all()


@dataclass
class _Exchange:
    """One request being handled by a guest."""

    head: RequestHead
    body: _BodyPipe
    channel: _ResponseChannel
    executor: Executor
    job_done: bool = False


class _Connection(asyncio.Protocol):
    """One client connection: h11 plus the request in flight; runs on the loop only (except ``threadsafe``)."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.options = server.options
        self.loop = server.loop
        self.writing_paused = False
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self.options.max_header_bytes)
        self._transport: asyncio.Transport | None = None
        self._peer = ""
        self._local = ""
        self._exchange: _Exchange | None = None
        self._discarded = 0
        self._closing = False
        self._in_process = False
        self._pause_reasons: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_kind = ""
        self._chunked = False
        self._lingering = False

    # ------------------------------------------------------------------------------------------- asyncio

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self._peer = format_addr(peer[0], peer[1]) if isinstance(peer, tuple) else str(peer)
        self._local = format_addr(local[0], local[1]) if isinstance(local, tuple) else str(local)
        transport.set_write_buffer_limits(high=self.options.write_buffer_high)
        self.server.connections.add(self)
        if self.server.draining:
            transport.close()
            return
        self._set_timer(self.options.header_timeout, "header")

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        if self._timer_kind == "idle":
            self._set_timer(self.options.header_timeout, "header")
        elif self._timer_kind == "discard":
            self._set_timer(self.options.body_timeout, "discard")
        try:
            self._h11.receive_data(data)
        except RuntimeError:  # data after the client's EOF: nothing sane to do
            self.abort()
            return
        self._process()

    def eof_received(self) -> bool:
        if self._lingering:
            return False
        try:
            self._h11.receive_data(b"")
        except RuntimeError:
            pass
        self._process()
        # Keep our half open: a client may half-close after its request and still read the response.
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._cancel_timer()
        exchange = self._exchange
        if exchange is not None:
            exchange.body.fail("the client disconnected")
            exchange.channel.set_gone("the client disconnected")
        self.server.connection_closed(self)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self._exchange is not None:
            self._exchange.channel.wake()

    # ------------------------------------------------------------------------------------------- helpers

    def threadsafe(self, callback: Any, *args: Any) -> None:
        """Run callback on the loop (from a guest thread)."""
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # loop closed: the worker is exiting
            pass

    def _set_timer(self, delay: float, kind: str) -> None:
        self._cancel_timer()
        self._timer_kind = kind
        self._timer = self.loop.call_later(delay, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_kind = None, ""

    def _on_timer(self) -> None:
        # header: slowloris or a silent new connection; idle: keep-alive expired; discard: an unread body
        # stalled; linger: the client kept sending after our last response.
        kind = self._timer_kind
        self._timer, self._timer_kind = None, ""
        if kind == "discard":
            self.abort()
        else:
            self.close()

    def _pause(self, reason: str) -> None:
        if not self._pause_reasons and self._transport is not None:
            self._transport.pause_reading()
        self._pause_reasons.add(reason)

    def _resume(self, reason: str) -> None:
        if reason in self._pause_reasons:
            self._pause_reasons.discard(reason)
            if not self._pause_reasons and self._transport is not None:
                self._transport.resume_reading()

    def resume_reading_for_body(self) -> None:
        self._resume("body")

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def close_after_response(self) -> None:
        self._closing = True

    def _end_connection(self) -> None:
        """Close after the last response; if the client may still be sending, half-close and drain first.

        Closing a socket with unread input makes the kernel send RST, and a client that is still uploading
        (a 404 or an error answered before the body was read) may then lose the response it has not read yet.
        """
        transport = self._transport
        if transport is None:
            return
        if self._h11.their_state in (h11.IDLE, h11.DONE, h11.MUST_CLOSE, h11.CLOSED) or not transport.can_write_eof():
            transport.close()
            return
        self._lingering = True
        transport.write_eof()
        self._pause_reasons.clear()
        transport.resume_reading()
        self._set_timer(2.0, "linger")

    def _final_headers(self, headers: Headers) -> Headers | None:
        """Extra ``connection: close`` when this response ends the connection; None when nothing to add.

        Also when the client waits for 100-continue that never came: it may never send the body, so the body
        cannot be drained to reuse the connection (RFC 9110 §10.1.1).
        """
        if self._closing or self._h11.they_are_waiting_for_100_continue:
            return [*headers, (b"connection", b"close")]
        return None

    def begin_shutdown(self) -> None:
        """Stop after the request in flight; an idle connection closes now."""
        self._closing = True
        if self._exchange is None and self._h11.their_state is h11.IDLE:
            self.close()

    def _write(self, chunks: list[bytes]) -> None:
        if self._transport is not None and chunks:
            self._transport.writelines(chunks)

    # ------------------------------------------------------------------------------------------- requests

    def _process(self) -> None:
        if self._in_process:
            return
        self._in_process = True
        try:
            while self._transport is not None:
                try:
                    event = self._h11.next_event()
                except h11.RemoteProtocolError as exc:
                    self._protocol_error(exc)
                    return
                if event is h11.NEED_DATA:
                    return
                if event is h11.PAUSED:
                    # A pipelined request waits for the current response; do not let h11 buffer without bound.
                    if len(self._h11.trailing_data[0]) > self.options.max_header_bytes:
                        self._pause("pipeline")
                    return
                kind = type(event)
                if kind is h11.Request:
                    self._on_request(event)
                elif kind is h11.Data:
                    self._on_body(event.data)
                elif kind is h11.EndOfMessage:
                    exchange = self._exchange
                    if exchange is not None and not exchange.job_done:
                        exchange.body.end()
                    self._cycle()
                elif kind is h11.ConnectionClosed:
                    if self._exchange is None:
                        self.close()
                    return
        finally:
            self._in_process = False

    def _on_request(self, request: h11.Request) -> None:
        self._cancel_timer()
        try:
            method = request.method.decode("ascii")
            target = request.target.decode("ascii")
            host_bytes = next((v for n, v in request.headers if n == b"host"), None)
            host = None if host_bytes is None else host_bytes.decode("ascii")
        except UnicodeDecodeError:
            self._closing = True
            self._respond_simple(400, [], b"")
            return
        # h11 enforces max_header_bytes only on a head still incomplete in its buffer; one that arrived whole
        # in a single read is measured here.
        head_size = len(request.target) + sum(len(n) + len(v) + 4 for n, v in request.headers.raw_items())
        if head_size > self.options.max_header_bytes:
            self._closing = True
            self._respond_simple(431, [], b"")
            return
        path = request_path(target)
        special = well_known_response(path, self.options.app_info)
        if special is not None:
            self._respond_simple(special.status, special.headers, special.body)
            return
        match = self.server.router.match(path)
        if match is None:
            self._respond_simple(404, [], b"")
            return
        executor = self.server.executors.get(match.component_id)
        if executor is None:
            log_line(self.options.log_fd, f"spin: no executor for component {match.component_id!r}")
            self._respond_simple(500, [], b"")
            return
        client_headers: Headers = list(request.headers)
        content_length = next((v for n, v in client_headers if n == b"content-length"), None)
        chunked = any(n == b"transfer-encoding" for n, _ in client_headers)
        timeout = self.options.request_timeout
        deadline = time.monotonic() + timeout if timeout is not None else math.inf
        spin_headers = spin_request_headers(scheme=self.options.scheme, host=host, target=target, match=match,
                                            client_addr=self._peer)
        head = RequestHead(
            method=method,
            target=target,
            headers=with_spin_headers(client_headers, spin_headers),
            scheme=self.options.scheme,
            authority=host if host is not None else self._local,
            client_addr=self._peer,
            component_id=match.component_id,
            route=match.info,
            full_url=full_url(self.options.scheme, host, target),
            deadline=deadline,
            content_length=int(content_length) if content_length is not None and not chunked else None,
        )
        channel = _ResponseChannel(self, head_only=method == "HEAD")
        body = _BodyPipe(self, channel, deadline, self._h11.they_are_waiting_for_100_continue)
        exchange = _Exchange(head, body, channel, executor)
        self._exchange = exchange
        self.server.dispatcher.submit(lambda ticket: _run_guest(exchange, ticket, self.options.log_fd))

    def _on_body(self, data: bytes) -> None:
        exchange = self._exchange
        if exchange is not None and not exchange.job_done:
            if exchange.body.feed(data):
                self._pause("body")
            return
        # A body nobody reads (Spin's own answers, or the guest returned without reading): drain it, up to a cap.
        self._discarded += len(data)
        if self._discarded > self.options.max_discard_bytes:
            self.close()

    def _respond_simple(self, status: int, headers: Headers, body: bytes) -> None:
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        headers = self._final_headers(headers) or headers
        try:
            chunks = self._h11.send_with_data_passthrough(_response(status, headers)) or []
            if body and self._h11.our_state is h11.SEND_BODY:
                chunks += self._h11.send_with_data_passthrough(h11.Data(data=body)) or []
            chunks += self._h11.send_with_data_passthrough(h11.EndOfMessage()) or []
        except h11.LocalProtocolError:
            self.abort()
            return
        self._write(chunks)
        self._cycle()

    def _protocol_error(self, exc: h11.RemoteProtocolError) -> None:
        exchange = self._exchange
        if exchange is not None:
            # Bad framing in a body the guest is reading: it gets ClientGone, the connection ends after the answer.
            exchange.body.fail(f"malformed request body: {exc}")
            self._closing = True
            return
        self._closing = True
        if self._h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            self._respond_simple(exc.error_status_hint, [], b"")
        self._end_connection()

    def _cycle(self) -> None:
        """After a response or the end of a request body: start the next request, keep draining, or close."""
        h = self._h11
        exchange = self._exchange
        if h.our_state is h11.DONE and (exchange is None or exchange.job_done):
            if h.their_state is h11.DONE and not self._closing:
                h.start_next_cycle()
                self._exchange = None
                self._discarded = 0
                self._resume("pipeline")
                self._set_timer(self.options.keepalive_timeout, "idle")
                self._process()
                return
            if h.their_state is h11.SEND_BODY and not self._closing and not h.they_are_waiting_for_100_continue:
                if self._timer_kind != "discard":
                    self._set_timer(self.options.body_timeout, "discard")
                return
            self._end_connection()
        elif h.our_state in (h11.MUST_CLOSE, h11.CLOSED, h11.ERROR) and (exchange is None or exchange.job_done):
            self._end_connection()

    # ------------------------------------------------------------------------------------------- responses

    def flush(self, channel: _ResponseChannel) -> None:
        """Send what the guest thread queued (loop thread)."""
        exchange = self._exchange
        items = channel.take()
        if exchange is None or exchange.channel is not channel:
            return
        h = self._h11
        out: list[bytes] = []
        component = exchange.head.component_id
        try:
            for item in items:
                kind = item[0]
                if kind is _DATA:
                    out += h.send_with_data_passthrough(h11.Data(data=item[1])) or []
                elif kind is _START:
                    response = item[1]
                    extra = self._final_headers(list(response.headers))
                    if extra is not None:
                        response = _response(response.status_code, extra)
                    self._chunked = self._is_chunked(response)
                    out += h.send_with_data_passthrough(response) or []
                elif kind is _END:
                    trailers = item[1] if self._chunked else []
                    out += h.send_with_data_passthrough(h11.EndOfMessage(headers=trailers)) or []
                elif kind is _CONTINUE:
                    if h.they_are_waiting_for_100_continue and h.our_state is h11.SEND_RESPONSE:
                        out += h.send_with_data_passthrough(
                            h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")) or []
                elif kind is _FAIL:
                    status, text = item[1], item[2]
                    body = text.encode()
                    headers: Headers = [(b"content-type", b"text/plain; charset=utf-8"),
                                        (b"content-length", str(len(body)).encode())]
                    headers = self._final_headers(headers) or headers
                    out += h.send_with_data_passthrough(_response(status, headers)) or []
                    if body and h.our_state is h11.SEND_BODY:
                        out += h.send_with_data_passthrough(h11.Data(data=body)) or []
                    out += h.send_with_data_passthrough(h11.EndOfMessage()) or []
                elif kind is _ABORT:
                    self._write(out)
                    out = []
                    self.abort()
                elif kind is _DONE:
                    exchange.job_done = True
                    if exchange.body.drop():
                        self._resume("body")
        except h11.LocalProtocolError as exc:
            # The guest broke its own framing (more or fewer bytes than its Content-Length, ...).
            log_line(self.options.log_fd, f"spin: {component}: invalid response: {exc}")
            channel.set_gone(f"invalid response: {exc}")
            self._write(out)
            self.abort()
            return
        self._write(out)
        if exchange.job_done:
            self._cycle()

    def _is_chunked(self, response: h11.Response) -> bool:
        if self._exchange is None or self._exchange.head.method == "HEAD":
            return False
        if response.status_code in (204, 304) or self._h11.their_http_version != b"1.1":
            return False
        names = {name for name, _ in response.headers}
        return b"transfer-encoding" in names or b"content-length" not in names


def _run_guest(exchange: _Exchange, ticket: Ticket, log_fd: int) -> None:
    """One request on a guest thread: the executor, then whatever the contract says its outcome means."""
    channel, head = exchange.channel, exchange.head
    exchange.body.ticket = channel.ticket = ticket
    try:
        exchange.executor.handle(head, exchange.body, channel)
    except GuestFailure as failure:
        if failure.log_line:
            log_line(log_fd, failure.log_line)
        if channel.started:
            channel.abort()
        else:
            channel.fail(failure.status, failure.public_message)
    except ClientGone:
        channel.abort()
    except Exception as exc:  # noqa: BLE001 - an executor bug must cost one request, not the worker
        log_line(log_fd, f"spin: {head.component_id}: internal error handling {head.method} {head.target}: "
                         f"{type(exc).__name__}: {exc}")
        if channel.started:
            channel.abort()
        else:
            channel.fail(500, "")
    else:
        if not channel.started:
            log_line(log_fd, f"spin: {head.component_id}: the guest returned without a response")
            channel.fail(500, "")
        elif not channel.finished:
            try:
                channel.finish()
            except ClientGone:
                pass
    finally:
        channel.done()


class HttpServer:
    """Serves one app's routes on given listening sockets, in the current event loop."""

    def __init__(self, router: Router, executors: Mapping[str, Executor],
                 options: ServerOptions | None = None) -> None:
        self.router = router
        self.executors = executors
        self.options = options or ServerOptions()
        self.connections: set[_Connection] = set()
        self.draining = False
        self._servers: list[asyncio.base_events.Server] = []
        self._all_closed: asyncio.Event | None = None
        self._stopped: asyncio.Future[None] | None = None
        self.loop: asyncio.AbstractEventLoop
        self.dispatcher: Dispatcher

    async def serve(self, sockets: Sequence[socket.socket]) -> None:
        """Accept on ``sockets`` (bound; listening or not) until ``shutdown`` has finished."""
        self.loop = asyncio.get_running_loop()
        self.dispatcher = make_dispatcher(self.loop, self.options.dispatch)
        self._stopped = self.loop.create_future()
        self._all_closed = asyncio.Event()
        for sock in sockets:
            sock.setblocking(False)
            server = await self.loop.create_server(lambda: _Connection(self), sock=sock,
                                                   backlog=self.options.backlog)
            self._servers.append(server)
        await self._stopped

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, let requests in flight finish for up to ``grace`` seconds, then close everything."""
        if self._stopped is None or self._stopped.done():
            return
        self.draining = True
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.begin_shutdown()
        assert self._all_closed is not None
        if self.connections:
            self._all_closed.clear()
            try:
                await asyncio.wait_for(self._all_closed.wait(), grace)
            except asyncio.TimeoutError:
                pass
        for conn in list(self.connections):
            conn.abort()
        await asyncio.sleep(0)  # let connection_lost run for the aborted ones
        self.dispatcher.close()
        self._stopped.set_result(None)

    def connection_closed(self, conn: _Connection) -> None:
        self.connections.discard(conn)
        if not self.connections and self._all_closed is not None:
            self._all_closed.set()
