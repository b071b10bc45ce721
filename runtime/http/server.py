"""The HTTP/1.1 front end of Spin's HTTP trigger: asyncio for the sockets, h11 for the framing, guests on threads.

One ``HttpServer`` per worker process. The event loop owns every socket and the h11 state machine of each
connection; guests run on guest threads (runtime.http.dispatch decides when) and talk to the loop only through
the contract's RequestBody and ResponseSink, implemented in runtime.http.streams with flow control that blocks the
guest thread, never the loop.

Everything else is what an HTTP/1.1 server owes its clients: keep-alive and pipelining (h11 pauses on the next
request until the current response is done), HEAD, HTTP/1.0, ``Expect: 100-continue`` (sent when the guest first
reads the body), a cap on the request head (431), a deadline for the request head against slowloris, an idle
keep-alive timeout, 400 for malformed requests, and a lingering close so a client still uploading reads our
answer instead of a reset. Spin's own answers (well-known paths, the empty 404) are written on the loop without
a guest.

Errors: ``GuestFailure`` before the response started is answered with its status and text, and its log line goes
to the container log (fd 2, one write, no logging module: it is cheap and survives a broken logging config),
with a timestamp and the request it failed (runtime.http.console). After the guest started its response, the
exchange ends as cleanly as the bytes already sent allow (``_Connection._fail_started``): a head still queued is
replaced by the failure's answer; a 5xx head with no body yet gets its end (a JS handler that throws: StarlingMonkey
starts a chunked 500 and never finishes it; ``wasmtime serve`` answers that as a complete empty 500, and so do we);
otherwise the connection is closed after what was sent, so the client sees a truncated response rather than a
wrong one. Any other exception from an executor is a 500 plus a log line, and the server keeps serving.

With ``ServerOptions.access_log`` (``SPIN_SHIM_ACCESS_LOG``) each request gets a line on the container's stderr
when its guest job ends (or when the server answers it itself); without it the request path pays one attribute
test per request for it.

Accepting (``_Acceptor``): every worker accepts on the one listening socket it inherited (runtime.http.workers
says why there is no SO_REUSEPORT, and watches it with EPOLLEXCLUSIVE). asyncio's ``create_server`` is not
used, for two reasons:

- it accepts up to ``backlog`` (1024) connections per wakeup, so on a shared socket whichever worker wakes first
  takes a whole burst, and keep-alive connections stay where they landed (measured, wrk's 16 connections over
  2 workers, 10 runs: 0/16 in 6, 1/15 in 2, 3/13 and 5/11 once). ``_Acceptor`` takes
  ``ServerOptions.accept_batch`` (1) per wakeup, ends a wakeup quietly on BlockingIOError (another worker took
  the connection) and then goes to the back of the listener's wait queue (``_Acceptor._rotate``): 16 runs gave
  5/11 once, 6/10 three times, 7/9 or 8/8 otherwise (the SO_REUSEPORT hash before: 2/14 and 3/13 once each,
  5/11 twice);
- on EMFILE/ENFILE/ENOBUFS/ENOMEM it goes on through its 1024 tries, logging and arming a 1 s retry timer for
  each: a worker at its fd limit used 0.51 s of CPU per second, wrote 36000 log lines in 2 s, and served again
  4 s after connections closed. ``_Acceptor`` stops polling the listener instead, for
  ``ServerOptions.accept_backoff`` or until one of its connections closes, with one log line per episode, while
  the other workers keep accepting (measured: 0.00-0.01 s of CPU per second, serving again within 20 ms).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import math
import os
import resource
import socket
import struct
import termios
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import h11

from runtime import telemetry
from runtime.http import streams
from runtime.http.console import access_line, request_failure_line, utc_timestamp
from runtime.http.contract import ClientGone, Executor, GuestFailure, Headers, RequestHead
from runtime.http.dispatch import DispatchPolicy, Dispatcher, Ticket, make_dispatcher
from runtime.http.headers import format_addr, full_url, request_path, spin_request_headers, with_spin_headers
from runtime.http.routing import Router
from runtime.http.streams import BodyPipe, ResponseChannel, build_response
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
    #: Connections a worker accepts per wakeup of the listener. More lets the worker that wakes first take a
    #: burst that the others would have shared (measured, wrk's 16 connections over 2 workers: with 4, 12 runs
    #: gave 2/14 to 4/12 in 8; with 1, 16 runs gave 5/11 once and 6/10 to 8/8 otherwise).
    accept_batch: int = 1
    #: Seconds a worker out of file descriptors (or socket memory) stops accepting, unless one of its connections
    #: closes first.
    accept_backoff: float = 0.1
    #: A line per request on ``log_fd`` (``SPIN_SHIM_ACCESS_LOG``, runtime.http.console).
    access_log: bool = False


def log_line(fd: int, line: str) -> None:
    """One line to the container log in one write(2), so lines of concurrent workers never interleave."""
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode("utf-8", "replace"))
    except OSError:
        pass


@dataclass
class _Exchange:
    """One request being handled by a guest."""

    head: RequestHead
    body: BodyPipe
    channel: ResponseChannel
    executor: Executor
    #: The guest's job returned (``ResponseChannel.done`` reached the loop).
    job_done: bool = False
    #: The whole response was sent and the whole request received: the connection may go on to the next request
    #: while the guest thread is still cleaning up (``_Exchange.settled``).
    response_done: bool = False
    #: Body bytes of the response went to the socket (a late failure can then only close the connection).
    body_sent: bool = False
    #: time.monotonic() when the request arrived, set only with the access log on.
    arrived: float = 0.0

    @property
    def settled(self) -> bool:
        """Nothing of this exchange is left for the connection to do.

        Not waiting for ``job_done`` once the response is complete saves the tail of each request (the guest
        returning, the executor's cleanup: table, Store close; then a loop wakeup for DONE) on the path to the
        next keep-alive or pipelined request: measured 300-550 us of a 4 ms cycle at one connection (js-echo,
        /tmp harness). The guest can no longer reach the client (its channel is not the connection's any more,
        so whatever it queues is dropped), and the dispatcher still counts its thread until the job returns, so
        the next request waits for that thread (or for ``spill_after``) as before: still one guest at a time.
        """
        return self.job_done or self.response_done


class _Connection(asyncio.Protocol):
    """One client connection: h11 plus the request in flight; runs on the loop only (except ``threadsafe``)."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.options = server.options
        self.loop = server.loop
        self.writing_paused = False
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self.options.max_header_bytes)
        self._transport: asyncio.Transport | None = None
        self._sock: Any = None
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
        #: The request in this cycle is a HEAD: h11 frames its response as empty, so no body may be sent.
        self._head_only = False
        #: The request in this cycle declared a body larger than ``max_discard_bytes``.
        self._too_big_to_drain = False

    # ------------------------------------------------------------------------------------------- asyncio

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = self._sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # asyncio sets TCP_NODELAY only on sockets created with proto=IPPROTO_TCP, and a listener made with
            # socket.socket(family, SOCK_STREAM) hands out proto-0 sockets. Without it, a response whose head and
            # body leave in two writes waits for the client's delayed ACK: 40 ms per request (measured: c=1 went
            # from 7000 to 100 req/s).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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

    # ------------------------------------------------------------------------------------------- streams.ConnectionPort

    @property
    def body_buffer_high(self) -> int:
        return self.options.body_buffer_high

    @property
    def write_buffer_high(self) -> int:
        return self.options.write_buffer_high

    @property
    def body_timeout(self) -> float:
        return self.options.body_timeout

    def unsent_bytes(self) -> int:
        transport, sock = self._transport, self._sock
        if transport is None or sock is None:
            return -1
        try:
            # SIOCOUTQ (= TIOCOUTQ): bytes in the socket's send queue, not yet acknowledged by the peer.
            kernel = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        except (OSError, ValueError):
            kernel = 0
        return transport.get_write_buffer_size() + kernel

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
        body_left = self._h11.their_state is h11.SEND_BODY
        if self._closing or self._h11.they_are_waiting_for_100_continue or (body_left and self._too_big_to_drain):
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
        self._head_only = request.method == b"HEAD"
        self._too_big_to_drain = False
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
        client_headers: Headers = list(request.headers)
        content_length = next((v for n, v in client_headers if n == b"content-length"), None)
        chunked = any(n == b"transfer-encoding" for n, _ in client_headers)
        declared = int(content_length) if content_length is not None and not chunked else None
        if declared is not None and declared > self.options.max_discard_bytes:
            # Should the answer not need the body (Spin's own answers, a guest that does not read it), the body
            # is too big to drain: say now that the connection ends with this response.
            self._too_big_to_drain = True
        path = request_path(target)
        special = well_known_response(path, self.options.app_info)
        if special is not None:
            self._respond_simple(special.status, special.headers, special.body)
            if self.options.access_log:
                log_line(self.options.log_fd, access_line(time.time(), method, path, special.status, 0.0, "-"))
            return
        match = self.server.router.match(path)
        if match is None:
            self._respond_simple(404, [], b"")
            if self.options.access_log:
                log_line(self.options.log_fd, access_line(time.time(), method, path, 404, 0.0, "-"))
            return
        executor = self.server.executors.get(match.component_id)
        if executor is None:
            log_line(self.options.log_fd, f"spin: no executor for component {match.component_id!r}")
            self._respond_simple(500, [], b"")
            return
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
            content_length=declared,
        )
        channel = ResponseChannel(self, head_only=method == "HEAD")
        body = BodyPipe(self, channel, deadline, self._h11.they_are_waiting_for_100_continue)
        exchange = _Exchange(head, body, channel, executor)
        if self.options.access_log:
            exchange.arrived = time.monotonic()
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
        if self._discarded > self.options.max_discard_bytes and not self._lingering:
            self._closing = True
            self._end_connection()

    def _respond_simple(self, status: int, headers: Headers, body: bytes) -> None:
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        headers = self._final_headers(headers) or headers
        try:
            chunks = self._h11.send_with_data_passthrough(build_response(status, headers)) or []
            if body and self._h11.our_state is h11.SEND_BODY and not self._head_only:
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
            self._pause("error")
            return
        self._closing = True
        if self._h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            self._respond_simple(exc.error_status_hint, [], b"")
        self._end_connection()

    def _cycle(self) -> None:
        """After a response or the end of a request body: start the next request, keep draining, or close."""
        h = self._h11
        exchange = self._exchange
        if h.our_state is h11.DONE and (exchange is None or exchange.settled):
            if h.their_state is h11.DONE and not self._closing:
                h.start_next_cycle()
                if exchange is not None and not exchange.job_done:
                    exchange.channel.detach()
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
        elif h.our_state in (h11.MUST_CLOSE, h11.CLOSED, h11.ERROR) and (exchange is None or exchange.settled):
            self._end_connection()

    # ------------------------------------------------------------------------------------------- responses

    def flush(self, channel: ResponseChannel) -> None:
        """Send what the guest thread queued (loop thread)."""
        exchange = self._exchange
        items = channel.take()
        if exchange is None or exchange.channel is not channel:
            return
        h = self._h11
        out: list[bytes] = []
        component = exchange.head.component_id
        if channel.failed_late and h.our_state is h11.SEND_RESPONSE:
            items = _unsent_failure(items)
        try:
            for item in items:
                kind = item[0]
                if kind is streams.DATA:
                    exchange.body_sent = True
                    out += h.send_with_data_passthrough(h11.Data(data=item[1])) or []
                elif kind is streams.START:
                    response = item[1]
                    extra = self._final_headers(list(response.headers))
                    if extra is not None:
                        response = build_response(response.status_code, extra)
                    self._chunked = self._is_chunked(response)
                    out += h.send_with_data_passthrough(response) or []
                elif kind is streams.END:
                    trailers = item[1] if self._chunked else []
                    out += h.send_with_data_passthrough(h11.EndOfMessage(headers=trailers)) or []
                    # A body still arriving, or one that paused the socket, stays the job's (DONE resumes it).
                    exchange.response_done = h.their_state is h11.DONE and "body" not in self._pause_reasons
                elif kind is streams.CONTINUE:
                    if h.they_are_waiting_for_100_continue and h.our_state is h11.SEND_RESPONSE:
                        out += h.send_with_data_passthrough(
                            h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")) or []
                elif kind is streams.FAIL:
                    status, text = item[1], item[2]
                    body = text.encode()
                    headers: Headers = [(b"content-type", b"text/plain; charset=utf-8"),
                                        (b"content-length", str(len(body)).encode())]
                    headers = self._final_headers(headers) or headers
                    out += h.send_with_data_passthrough(build_response(status, headers)) or []
                    if body and h.our_state is h11.SEND_BODY and not self._head_only:
                        out += h.send_with_data_passthrough(h11.Data(data=body)) or []
                    out += h.send_with_data_passthrough(h11.EndOfMessage()) or []
                elif kind is streams.ABORT:
                    self._write(out)
                    out = []
                    self.abort()
                elif kind is streams.FAIL_STARTED:
                    if self._fail_started(exchange, out):
                        out += h.send_with_data_passthrough(h11.EndOfMessage()) or []
                        exchange.response_done = h.their_state is h11.DONE and "body" not in self._pause_reasons
                    else:
                        self._write(out)
                        out = []
                        self._closing = True
                        self.close()
                elif kind is streams.DONE:
                    exchange.job_done = True
                    if exchange.body.drop():
                        self._resume("body")
        except h11.LocalProtocolError as exc:
            # The guest broke its own framing (more or fewer bytes than its Content-Length, ...).
            log_line(self.options.log_fd, request_failure_line(
                time.time(), f"spin: {component}: invalid response: {exc}", exchange.head.method,
                request_path(exchange.head.target)))
            channel.set_gone(f"invalid response: {exc}")
            self._write(out)
            self.abort()
            return
        self._write(out)
        if exchange.settled:
            self._cycle()

    def _fail_started(self, exchange: _Exchange, out: list[bytes]) -> bool:
        """The guest failed after its head went out: True when ending the body now gives a complete, truthful
        answer (a 5xx head, nothing of its body sent, chunked or body-less), False when only a close is left.

        The close is graceful (asyncio's ``close`` sends what is queued, then FIN), not an abort: the client gets
        every byte the guest wrote and then the end of the connection, which it reads as a truncated response.
        """
        status = exchange.channel.status or 0
        if status < 500 or exchange.body_sent:
            return False
        return self._head_only or self._chunked

    def _is_chunked(self, response: h11.Response) -> bool:
        if self._exchange is None or self._exchange.head.method == "HEAD":
            return False
        if response.status_code in (204, 304) or self._h11.their_http_version != b"1.1":
            return False
        names = {name for name, _ in response.headers}
        return b"transfer-encoding" in names or b"content-length" not in names


def _unsent_failure(items: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """A batch whose response head never reached the wire, ending in ``fail_started``: the failure's own answer
    instead of the head and body the guest queued before it failed (a fixed-length head waits for its body, so a
    guest failing before it wrote its body is still "nothing sent").

    Except a streamed 5xx head with no body queued (what StarlingMonkey queues when a JS handler throws): that
    head is the guest's own answer and ends empty, as when it went out in a batch of its own. Whether it did is a
    race between the loop's flush and the guest's failure, and the client saw either an empty 500 or the failure's
    text, run to run."""
    for index, item in enumerate(items):
        if item[0] is streams.FAIL_STARTED:
            if _streamed_5xx_head_alone(items[:index]):
                return items
            return [(streams.FAIL, item[1], item[2]), *items[index + 1:]]
    return items


def _streamed_5xx_head_alone(items: list[tuple[Any, ...]]) -> bool:
    heads = [item[1] for item in items if item[0] is streams.START]
    if len(heads) != 1 or any(item[0] is streams.DATA for item in items):
        return False
    head: h11.Response = heads[0]
    return head.status_code >= 500 and all(name.lower() != b"content-length" for name, _ in head.headers)


def _run_guest(exchange: _Exchange, ticket: Ticket, log_fd: int) -> None:
    """One request on a guest thread: the executor, then whatever the contract says its outcome means."""
    channel, head = exchange.channel, exchange.head
    exchange.body.ticket = channel.ticket = ticket
    if channel.gone is not None:  # the client left while the request waited for a thread: nobody to answer
        channel.done()
        return
    # OpenTelemetry on (runtime.telemetry): the request's spans, and a sink that notes the status it answers.
    request_trace = None if telemetry.active is None else telemetry.active.begin_request(head, channel)
    sink = channel if request_trace is None else request_trace.sink
    outcome = ""
    try:
        exchange.executor.handle(head, exchange.body, sink)
    except GuestFailure as failure:
        if failure.log_line:
            log_line(log_fd, request_failure_line(time.time(), failure.log_line,
                                                  head.method, request_path(head.target)))
        if sink.started:
            channel.fail_started(failure.status, failure.public_message)
            outcome = "guest failed"
        else:
            sink.fail(failure.status, failure.public_message)
    except ClientGone:
        sink.abort()
        outcome = "client gone"
    except Exception as exc:  # noqa: BLE001 - an executor bug must cost one request, not the worker
        log_line(log_fd, request_failure_line(
            time.time(), f"spin: {head.component_id}: internal error: {type(exc).__name__}: {exc}", head.method,
            request_path(head.target)))
        if sink.started:
            channel.fail_started(500, "")
            outcome = "guest failed"
        else:
            sink.fail(500, "")
    else:
        if not sink.started:
            log_line(log_fd, request_failure_line(
                time.time(), f"spin: {head.component_id}: the guest returned without a response", head.method,
                request_path(head.target)))
            sink.fail(500, "")
        elif not sink.finished:
            try:
                sink.finish()
            except ClientGone:
                outcome = "client gone"
    finally:
        channel.done()
        if request_trace is not None:
            # A failure after the response started is an error of the server span however cleanly it ended
            # (runtime.telemetry.request: ``aborted``), as when such a response was always aborted.
            request_trace.aborted = request_trace.aborted or channel.failed_late
            request_trace.end()
        if exchange.arrived:
            log_line(log_fd, access_line(time.time(), head.method, request_path(head.target), channel.status,
                                         time.monotonic() - exchange.arrived, head.component_id, outcome))


#: accept(2) errors about the one pending connection (accept(2): "treat them like EAGAIN by retrying"). Every
#: other error (EMFILE, ENFILE, ENOBUFS, ENOMEM: this process or the system is out of a resource) fails again if
#: retried at once, as the listener stays readable, so the worker backs off instead (``_Acceptor._starve``).
_CONNECTION_ERRORS = frozenset({errno.ENETDOWN, errno.EPROTO, errno.ENOPROTOOPT, errno.EHOSTDOWN, errno.ENONET,
                                errno.EHOSTUNREACH, errno.EOPNOTSUPP, errno.ENETUNREACH, errno.EPERM})


class _Acceptor:
    """Accepts connections from one listening socket, which other worker processes may be accepting on too."""

    def __init__(self, server: HttpServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.loop = server.loop
        self.batch = max(1, server.options.accept_batch)
        self.backoff = server.options.accept_backoff
        self.polling = False
        self.closed = False
        #: In a backoff episode (out of fds or memory), from the failed accept to the next empty queue.
        self._starved = False
        self._resume_timer: asyncio.TimerHandle | None = None
        self._attaching: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        if not self.closed and not self.polling:
            self.loop.add_reader(self.fd, self._on_readable)
            self.polling = True

    def close(self) -> None:
        """Stop accepting and close this process's descriptor of the socket, as asyncio's ``Server.close`` did
        (other workers' descriptors of a shared listener are theirs: they keep accepting until they stop too)."""
        self.closed = True
        self._stop_polling()
        if self._resume_timer is not None:
            self._resume_timer.cancel()
            self._resume_timer = None
        self.sock.close()

    def connection_closed(self) -> None:
        """One of this worker's connections closed: an fd is free again, so a starved acceptor resumes now."""
        if self._starved and not self.polling:
            self._resume()

    def _stop_polling(self) -> None:
        if self.polling:
            self.loop.remove_reader(self.fd)
            self.polling = False

    def _on_readable(self) -> None:
        # ``batch`` per wakeup, not the whole queue: with a shared listener, whoever wakes first would otherwise take
        # a whole burst of connections, and they stay with it for their keep-alive life.
        if self._accept_some() and self.polling:
            self._rotate()

    def _rotate(self) -> None:
        """Watch the listener anew, after the other workers.

        With EPOLLEXCLUSIVE (runtime.http.workers.ListenerSelector) the kernel wakes the first worker in the
        listener's wait queue that is waiting in epoll_wait, and the queue is in registration order: the first
        worker would get every connection whenever it is idle (measured: all 16 of wrk's connections in one of
        2 workers in 2 runs of 10). Registering again puts this worker at the back, so idle workers take turns.
        Costs two epoll_ctl calls per wakeup that accepted something.
        """
        self.loop.remove_reader(self.fd)
        self.loop.add_reader(self.fd, self._on_readable)

    def _accept_some(self) -> int:
        """Up to ``batch`` connections handed to the loop; returns how many."""
        accepted = 0
        for _ in range(self.batch):
            try:
                conn, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                # The queue is empty, or another worker took the connection: nothing to report. A starved worker
                # has caught up (its next EMFILE is a new episode, worth a new log line).
                self._starved = False
                break
            except ConnectionAbortedError:
                continue  # the client reset before we accepted
            except OSError as exc:
                if exc.errno in _CONNECTION_ERRORS:
                    continue
                # Out of fds or memory, or something unforeseen: either way retrying at once would spin.
                self._starve(exc)
                break
            try:
                conn.setblocking(False)
            except OSError:
                conn.close()
                continue
            task = self.loop.create_task(self._attach(conn))
            self._attaching.add(task)  # the loop itself keeps only a weak reference to a task
            task.add_done_callback(self._attaching.discard)
            accepted += 1
        return accepted

    async def _attach(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(lambda: _Connection(self.server), conn)
        except OSError:  # the peer went away before the transport was set up (getpeername: ENOTCONN)
            conn.close()

    def _starve(self, exc: OSError) -> None:
        """Out of fds or memory: stop polling the listener (it stays readable, so polling would spin) for a short
        backoff or until a connection of ours closes; the connection stays queued for another worker. One log
        line per episode; the episode ends when the worker finds the queue empty."""
        self._stop_polling()
        if not self._starved:
            self._starved = True
            name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            log_line(self.server.options.log_fd,
                     f"{utc_timestamp(time.time())} spin: http worker (pid {os.getpid()}) cannot accept connections: "
                     f"{exc.strerror} ({name}; "
                     f"open files limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}); accepting again when "
                     f"one closes or every {self.backoff * 1000:.0f} ms; other workers keep accepting")
        if self._resume_timer is None:
            self._resume_timer = self.loop.call_later(self.backoff, self._resume)

    def _resume(self) -> None:
        if self._resume_timer is not None:
            self._resume_timer.cancel()
            self._resume_timer = None
        self.start()


class HttpServer:
    """Serves one app's routes on given listening sockets, in the current event loop."""

    def __init__(self, router: Router, executors: Mapping[str, Executor],
                 options: ServerOptions | None = None) -> None:
        self.router = router
        self.executors = executors
        self.options = options or ServerOptions()
        self.connections: set[_Connection] = set()
        self.draining = False
        self._acceptors: list[_Acceptor] = []
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
            sock.listen(self.options.backlog)
            acceptor = _Acceptor(self, sock)
            acceptor.start()
            self._acceptors.append(acceptor)
        await self._stopped

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, let requests in flight finish for up to ``grace`` seconds, then close everything."""
        if self._stopped is None or self._stopped.done():
            return
        self.draining = True
        for acceptor in self._acceptors:
            acceptor.close()
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
        for acceptor in self._acceptors:
            acceptor.connection_closed()
        if not self.connections and self._all_closed is not None:
            self._all_closed.set()
