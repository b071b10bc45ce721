"""The HTTP server over real sockets on 127.0.0.1, with small Python executors standing in for guests.

Each test starts an HttpServer on its own event loop thread (as a worker runs it) and talks to it with raw
sockets parsed by h11's client side, so the bytes on the wire are what is checked.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import http.client
import os
import re
import socket
import threading
import time

import h11
import pytest

from runtime.http.contract import ClientGone, GuestFailure
from runtime.http.dispatch import AdaptiveDispatcher, DispatchPolicy
from runtime.http.listen import ListenError, bind_listener, parse_listen_addr
from runtime.http.routing import Router
from runtime.http.server import HttpServer, ServerOptions
from runtime.http.wellknown import AppInfo

# ------------------------------------------------------------------------------------------------ executors


def _read_all(body) -> bytes:
    parts = []
    while chunk := body.read(65536):
        parts.append(chunk)
    return b"".join(parts)


class Echo:
    """Answers with the request body (Content-Length), and what the server told it in response headers."""

    component_id = "echo"

    def __init__(self):
        self.heads = []

    def handle(self, head, body, sink):
        self.heads.append(head)
        data = _read_all(body)
        headers = dict(head.headers)
        sink.start(200, [(b"content-length", str(len(data)).encode()),
                         (b"x-client-addr", headers[b"spin-client-addr"]),
                         (b"x-path-info", headers[b"spin-path-info"])])
        sink.write(data)
        sink.finish()


class StreamEcho:
    """Chunked both ways: writes each piece as it reads it, no Content-Length."""

    component_id = "stream"

    def handle(self, head, body, sink):
        sink.start(200, [(b"content-type", b"application/octet-stream")])
        while chunk := body.read(65536):
            assert type(chunk) is bytes and len(chunk) <= 65536  # not h11's bytearrays: guests keep them
            sink.write(chunk)
        sink.finish([(b"x-trailer", b"done")])


class Big:
    """Writes ``size`` bytes in 64 KiB pieces, recording how far it got (for backpressure)."""

    component_id = "big"

    def __init__(self, size):
        self.size = size
        self.written = 0
        self.error = None

    def handle(self, head, body, sink):
        sink.start(200, [(b"content-length", str(self.size).encode())])
        self.written = 0
        piece = b"x" * 65536
        try:
            while self.written < self.size:
                sink.write(piece[: self.size - self.written])
                self.written += min(65536, self.size - self.written)
        except ClientGone as exc:
            self.error = exc
            raise
        sink.finish()


class Slow:
    component_id = "slow"

    def __init__(self, seconds):
        self.seconds = seconds

    def handle(self, head, body, sink):
        time.sleep(self.seconds)
        sink.start(200, [(b"content-length", b"4")])
        sink.write(b"slow")
        sink.finish()


class Stuck:
    """A guest that never answers: sleeps (GIL released, like wasm) or spins (GIL held) until its deadline.

    ``release`` ends it early, silently: a test whose server outlives the guest's deadline sets it, so the guest's
    thread does not log into a later test's captured stderr.
    """

    component_id = "stuck"

    def __init__(self, spin=False):
        self.spin = spin
        self.release = threading.Event()

    def handle(self, head, body, sink):
        assert head.deadline < float("inf")
        while time.monotonic() < head.deadline:
            if self.release.is_set():
                raise GuestFailure(504, "released by the test")
            if not self.spin:
                time.sleep(0.01)
        raise GuestFailure(504, "timed out", "spin: stuck: request deadline exceeded")


class Fails:
    component_id = "fails"

    def __init__(self, after_start=False):
        self.after_start = after_start

    def handle(self, head, body, sink):
        if self.after_start:
            sink.start(200, [(b"content-length", b"100")])
            sink.write(b"partial")
        raise GuestFailure(503, "guest unavailable", "spin: fails: trap: unreachable")


class FailsAfterHead:
    """Starts a response, writes ``body`` once the test has seen the head (``head_seen``), then fails."""

    component_id = "fails"

    def __init__(self, status=200, headers=(), body=b"", wait_for_client=True):
        self.status, self.headers, self.body = status, list(headers), body
        self.wait_for_client = wait_for_client
        self.head_seen = threading.Event()

    def handle(self, head, body, sink):
        sink.start(self.status, self.headers)
        if self.body:
            sink.write(self.body)
        if self.wait_for_client:
            assert self.head_seen.wait(5)
        raise GuestFailure(500, "Internal Server Error", "spin: fails: trap: unreachable (after the response started)")


class Raises:
    component_id = "raises"

    def handle(self, head, body, sink):
        raise ValueError("executor bug")


class RecordsClientGone:
    component_id = "reader"

    def __init__(self):
        self.outcome = None
        self.done = threading.Event()

    def handle(self, head, body, sink):
        try:
            _read_all(body)
            self.outcome = "complete"
        except ClientGone as exc:
            self.outcome = exc
        finally:
            self.done.set()
        raise GuestFailure(408, "body stalled")


class Ignores:
    """Answers without reading the body."""

    component_id = "ignores"

    def handle(self, head, body, sink):
        sink.start(200, [(b"content-length", b"2")])
        sink.write(b"ok")
        sink.finish()


# ------------------------------------------------------------------------------------------------ harness


class Running:
    def __init__(self, routes, executors, **options):
        router, _ = Router.build(routes)
        self.server = HttpServer(router, executors, ServerOptions(**options))
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete,
                                       args=(self.server.serve([self.sock]),), daemon=True)
        self.thread.start()
        while not getattr(self.server, "_acceptors", None):
            time.sleep(0.005)

    def shutdown(self, grace=1.0):
        asyncio.run_coroutine_threadsafe(self.server.shutdown(grace), self.loop).result(grace + 5)
        self.thread.join(5)

    def connect(self):
        return Client(self.port)

    def http(self):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)


class Client:
    """A raw connection with h11 parsing the responses."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.h11 = h11.Connection(h11.CLIENT)

    def send(self, data: bytes):
        self.sock.sendall(data)

    def request(self, method, target, headers=(), body=None):
        headers = [(b"host", b"test"), *headers]
        if body is not None:
            headers.append((b"content-length", str(len(body)).encode()))
        self.send(self.h11.send(h11.Request(method=method, target=target, headers=headers)))
        if body:
            self.send(self.h11.send(h11.Data(data=body)))
        self.send(self.h11.send(h11.EndOfMessage()))

    def next_event(self):
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(self.sock.recv(1 << 20))
                continue
            return event

    def response(self):
        """(status, headers dict, body, trailers dict) of the next final response."""
        event = self.next_event()
        while isinstance(event, h11.InformationalResponse):
            event = self.next_event()
        assert isinstance(event, h11.Response), event
        body = []
        while True:
            part = self.next_event()
            if isinstance(part, h11.Data):
                body.append(part.data)
            elif isinstance(part, h11.EndOfMessage):
                return event.status_code, dict(event.headers), b"".join(body), dict(part.headers)

    def next_cycle(self):
        self.h11.start_next_cycle()

    def closed_within(self, seconds) -> bool:
        """True if the server closes (EOF or RST) within ``seconds``."""
        self.sock.settimeout(seconds)
        try:
            while self.sock.recv(65536):
                pass
            return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def close(self):
        self.sock.close()


@pytest.fixture
def running():
    servers = []

    def start(routes, executors, **options):
        server = Running(routes, executors, **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        if server.thread.is_alive():
            server.shutdown(0.5)


def _raw_response(sock) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    return data


# ------------------------------------------------------------------------------------------------ basics


def test_keep_alive_reuses_one_connection(running):
    echo = Echo()
    srv = running([("/...", "echo")], {"echo": echo})
    client = srv.connect()
    addrs = set()
    for i in range(3):
        client.request(b"POST", f"/r{i}".encode(), body=b"hello %d" % i)
        status, headers, body, _ = client.response()
        assert (status, body) == (200, b"hello %d" % i)
        addrs.add(headers[b"x-client-addr"])
        client.next_cycle()
    assert len(addrs) == 1 and addrs.pop() == f"127.0.0.1:{client.sock.getsockname()[1]}".encode()
    assert [h.target for h in echo.heads] == ["/r0", "/r1", "/r2"]


class Lingers:
    """Answers in full, then keeps its job busy (the executor's cleanup, a Store close) and tries to write more."""

    component_id = "lingers"

    def __init__(self, seconds):
        self.seconds = seconds
        self.late_write_failed = threading.Event()

    def handle(self, head, body, sink):
        data = head.target.encode()
        sink.start(200, [(b"content-length", str(len(data)).encode())])
        sink.write(data)
        sink.finish()
        time.sleep(self.seconds)
        try:
            sink.write(b"late bytes for a finished response")
        except Exception:  # noqa: BLE001 - what a finished response must refuse
            self.late_write_failed.set()


def test_the_next_keep_alive_request_goes_on_while_a_finished_job_lingers_and_its_late_bytes_go_nowhere(running):
    lingers = Lingers(0.5)
    srv = running([("/...", "lingers")], {"lingers": lingers})
    client = srv.connect()
    client.request(b"GET", b"/first")
    assert client.response()[:3:2] == (200, b"/first")
    client.next_cycle()
    client.request(b"GET", b"/second")  # parsed at once; run once the first job's thread is free
    status, headers, body, _ = client.response()
    assert (status, body, headers[b"content-length"]) == (200, b"/second", b"7")
    assert lingers.late_write_failed.wait(5)
    client.sock.settimeout(1.0)  # nothing of the first job's late write ever reaches the wire
    with pytest.raises(TimeoutError):
        client.sock.recv(1)


def test_a_content_length_head_goes_out_with_its_body(running):
    class HeadThenBody:
        component_id = "late-body"

        def handle(self, head, body, sink):
            sink.start(200, [(b"content-length", b"4")])
            time.sleep(0.3)  # the guest computes its body
            sink.write(b"body")
            sink.finish()

    srv = running([("/...", "late-body")], {"late-body": HeadThenBody()})
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    first = sock.recv(65536)
    while b"\r\n\r\n" not in first:
        first += sock.recv(65536)
    # One write: when the head arrives its body is there too (or follows at once, not 0.3 s later).
    rest = first.partition(b"\r\n\r\n")[2]
    sock.settimeout(0.1)
    while len(rest) < 4:
        rest += sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 200") and rest == b"body"


def test_a_small_content_length_response_wakes_the_loop_once(running, monkeypatch):
    """The write that completes a Content-Length body waits for the finish right after it: the loop takes the
    head, body and end in one batch (one wakeup of the loop per small response, not two)."""
    from runtime.http import streams
    from runtime.http.server import _Connection

    batches = []
    take = streams.ResponseChannel.take

    def recording_take(channel):
        items = take(channel)
        kinds = {item[0] for item in items} & {streams.START, streams.DATA, streams.END}
        if kinds:
            batches.append(kinds)
        return items

    monkeypatch.setattr(streams.ResponseChannel, "take", recording_take)
    flushes = []
    threadsafe = _Connection.threadsafe
    monkeypatch.setattr(_Connection, "threadsafe",
                        lambda conn, callback, *args: (flushes.append(callback.__name__),
                                                       threadsafe(conn, callback, *args))[1])
    srv = running([("/...", "echo")], {"echo": Echo()})
    client = srv.connect()
    for i in range(20):
        client.request(b"POST", b"/", body=b"hello %d" % i)
        assert client.response()[2] == b"hello %d" % i
        client.next_cycle()
    assert batches == [{streams.START, streams.DATA, streams.END}] * 20
    # What is left is the job's own end, when it comes before the connection has moved on (a race).
    assert 20 <= flushes.count("flush") < 40


def test_bytes_left_waiting_for_a_finish_that_does_not_come_go_out_at_the_next_epoch_tick(running):
    """A guest that keeps working after writing its whole answer: the client has it at the next tick, not when
    the guest ends (the ticker runs while any guest call is in flight, as ComponentExecutor holds it)."""
    from runtime.epoch import EpochTicker

    class Engine:
        def increment_epoch(self):
            pass

    ticker = EpochTicker(Engine())  # type: ignore[arg-type]

    class WorksAfterItsAnswer:
        component_id = "after"

        def handle(self, head, body, sink):
            with ticker.running():
                sink.start(200, [(b"content-length", b"6")])
                sink.write(b"answer")
                time.sleep(2.0)  # e.g. an outbound call whose result the answer does not need
                sink.finish()

    srv = running([("/...", "after")], {"after": WorksAfterItsAnswer()})
    client = srv.connect()
    sent = time.monotonic()
    client.request(b"GET", b"/")
    status, _, body, _ = client.response()
    assert (status, body) == (200, b"answer")
    assert time.monotonic() - sent < 1.0  # a tick is 10 ms; the guest finishes after 2 s


def test_request_head_carries_spin_headers_and_route(running):
    echo = Echo()
    srv = running([("/api/...", "echo")], {"echo": echo}, request_timeout=30)
    client = srv.connect()
    client.request(b"GET", b"/api/users/1?x=y", headers=[(b"spin-path-info", b"/forged")])
    status, headers, _, _ = client.response()
    assert status == 200 and headers[b"x-path-info"] == b"/users/1"
    head = echo.heads[0]
    spin = {k: v for k, v in head.headers if k.startswith(b"spin-")}
    assert spin[b"spin-full-url"] == b"http://test/api/users/1?x=y"
    assert spin[b"spin-matched-route"] == b"/api/..." and spin[b"spin-component-route"] == b"/api"
    assert (head.method, head.target, head.authority, head.component_id) == ("GET", "/api/users/1?x=y", "test",
                                                                            "echo")
    assert head.route.path_info == "/users/1"
    assert 29 < head.deadline - time.monotonic() <= 30


def test_pipelined_requests_are_answered_in_order(running):
    srv = running([("/...", "echo")], {"echo": Echo()})
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    sock.sendall(b"".join(b"GET /p%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5)))
    data = b""
    while data.count(b"x-path-info") < 5:
        data += sock.recv(65536)
    assert re.findall(rb"x-path-info: (/p\d)", data) == [b"/p%d" % i for i in range(5)]


def test_no_route_is_an_empty_404(running):
    srv = running([("/only", "echo")], {"echo": Echo()})
    client = srv.connect()
    client.request(b"GET", b"/other")
    status, headers, body, _ = client.response()
    assert (status, body, headers[b"content-length"]) == (404, b"", b"0")
    client.next_cycle()
    client.request(b"GET", b"/only")  # still usable
    assert client.response()[0] == 200


def test_health_answers_even_under_a_catch_all_route_without_a_guest(running):
    echo = Echo()
    srv = running([("/...", "echo")], {"echo": echo}, app_info=AppInfo(name="demo", version="1.2.3"))
    client = srv.connect()
    client.request(b"GET", b"/.well-known/spin/health")
    assert client.response()[:3:2] == (200, b"OK")
    client.next_cycle()
    client.request(b"GET", b"/.well-known/spin/info")
    status, headers, body, _ = client.response()
    assert status == 200 and b'"name": "demo"' in body and headers[b"content-type"] == b"application/json"
    assert echo.heads == []


def test_head_gets_the_headers_of_get_and_no_body(running):
    srv = running([("/...", "big")], {"big": Big(1000)})
    client = srv.connect()
    client.request(b"HEAD", b"/x")
    status, headers, body, _ = client.response()
    assert (status, headers[b"content-length"], body) == (200, b"1000", b"")
    client.next_cycle()
    client.request(b"GET", b"/x")
    assert len(client.response()[2]) == 1000


@pytest.mark.parametrize("target, status", [("/.well-known/spin/health", 200), ("/nowhere", 404), ("/fails", 503)])
def test_head_of_server_and_error_answers_has_no_body(running, target, status):
    srv = running([("/fails", "fails")], {"fails": Fails()})
    client = srv.connect()
    for _ in range(2):  # the connection stays usable: no stray body bytes
        client.request(b"HEAD", target.encode())
        got, headers, body, _ = client.response()
        assert (got, body) == (status, b"")
        client.next_cycle()


def test_client_that_half_closes_after_its_request_still_gets_the_response(running):
    srv = running([("/...", "slow")], {"slow": Slow(0.1)})
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.shutdown(socket.SHUT_WR)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"slow")


def test_http_1_0_gets_a_close_delimited_response(running):
    srv = running([("/...", "stream")], {"stream": StreamEcho()})
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    sock.sendall(b"POST / HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello")
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" not in head.lower() and body == b"hello"


def test_malformed_request_is_400_and_closed(running):
    srv = running([("/...", "echo")], {"echo": Echo()})
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
    assert _raw_response(sock).startswith(b"HTTP/1.1 400 ")


def test_non_ascii_target_is_400(running):
    srv = running([("/...", "echo")], {"echo": Echo()})
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    sock.sendall(b"GET /\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _raw_response(sock).startswith(b"HTTP/1.1 400 ")


# ------------------------------------------------------------------------------------------------ bodies


def test_chunked_request_and_chunked_response_with_trailers(running):
    srv = running([("/...", "stream")], {"stream": StreamEcho()})
    client = srv.connect()
    client.send(client.h11.send(h11.Request(method=b"POST", target=b"/",
                                            headers=[(b"host", b"x"), (b"transfer-encoding", b"chunked")])))
    for piece in (b"one ", b"two ", b"three"):
        client.send(client.h11.send(h11.Data(data=piece)))
    client.send(client.h11.send(h11.EndOfMessage()))
    status, headers, body, trailers = client.response()
    assert (status, body) == (200, b"one two three")
    assert headers[b"transfer-encoding"] == b"chunked"
    assert trailers == {b"x-trailer": b"done"}


def test_ten_mib_both_ways(running):
    srv = running([("/...", "stream")], {"stream": StreamEcho()})
    payload = os.urandom(10 * 1024 * 1024)
    client = srv.connect()
    head = client.h11.send(h11.Request(method=b"POST", target=b"/", headers=[
        (b"host", b"x"), (b"content-length", str(len(payload)).encode())]))
    # A streaming echo answers while the upload is still going: send and receive at once, as real clients do.
    sender = threading.Thread(target=client.send, args=(head + payload,))
    sender.start()
    client.h11.send(h11.Data(data=payload))
    client.h11.send(h11.EndOfMessage())
    status, headers, data, _ = client.response()
    sender.join(10)
    assert status == 200 and headers[b"transfer-encoding"] == b"chunked"
    assert hashlib.sha256(data).digest() == hashlib.sha256(payload).digest()


def test_ten_mib_echo_with_content_length(running):
    srv = running([("/...", "echo")], {"echo": Echo()}, body_buffer_high=64 * 1024)
    payload = os.urandom(10 * 1024 * 1024)
    conn = srv.http()
    conn.request("PUT", "/", body=payload)
    response = conn.getresponse()
    assert response.getheader("content-length") == str(len(payload))
    assert response.read() == payload


def test_guest_write_blocks_while_the_client_does_not_read(running):
    big = Big(64 * 1024 * 1024)
    srv = running([("/...", "big")], {"big": big}, write_buffer_high=64 * 1024)
    client = srv.connect()
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    client.request(b"GET", b"/")
    time.sleep(0.5)
    stalled_at = big.written
    assert stalled_at < 16 * 1024 * 1024
    time.sleep(0.2)
    assert big.written - stalled_at <= 128 * 1024  # blocked, not buffering
    assert len(client.response()[2]) == big.size


class OneBigWrite:
    component_id = "one"

    def __init__(self, size):
        self.size = size

    def handle(self, head, body, sink):
        sink.start(200, [(b"content-length", str(self.size).encode())])
        sink.write(b"y" * self.size)
        sink.finish()


def test_a_slow_reader_of_one_large_write_is_not_taken_for_a_stalled_one(running):
    srv = running([("/...", "one")], {"one": OneBigWrite(8 * 1024 * 1024)}, body_timeout=0.5,
                  write_buffer_high=64 * 1024)
    client = srv.connect()
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    client.request(b"GET", b"/")
    received = 0
    start = time.monotonic()
    while received < 8 * 1024 * 1024:  # about 2 s at this pace: four body timeouts
        chunk = client.sock.recv(256 * 1024)
        assert chunk, "the server gave up on a client that was reading"
        received += len(chunk)
        time.sleep(0.05)
    assert time.monotonic() - start > 1.0


def test_client_that_stops_reading_is_gone_after_the_body_timeout(running):
    big = Big(256 * 1024 * 1024)
    srv = running([("/...", "big")], {"big": big}, body_timeout=0.5)
    client = srv.connect()
    client.request(b"GET", b"/")
    deadline = time.monotonic() + 10
    while big.error is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert isinstance(big.error, ClientGone)


def test_stalled_upload_gives_the_guest_client_gone_and_closes(running):
    reader = RecordsClientGone()
    srv = running([("/...", "reader")], {"reader": reader}, body_timeout=0.5)
    client = srv.connect()
    client.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly part")
    assert reader.done.wait(5)
    assert isinstance(reader.outcome, ClientGone)
    status, headers, body, _ = client.response()
    assert (status, headers.get(b"connection")) == (408, b"close")
    assert client.closed_within(3)


def test_unread_small_body_is_drained_and_the_connection_kept(running):
    srv = running([("/...", "ignores")], {"ignores": Ignores()})
    client = srv.connect()
    for _ in range(2):
        client.request(b"POST", b"/", body=b"x" * 10000)
        assert client.response()[:3:2] == (200, b"ok")
        client.next_cycle()


def test_large_upload_to_no_route_still_reads_its_404(running):
    srv = running([("/only", "echo")], {"echo": Echo()}, max_discard_bytes=64 * 1024)
    client = srv.connect()
    payload = b"x" * (8 * 1024 * 1024)
    head = client.h11.send(h11.Request(method=b"POST", target=b"/elsewhere", headers=[
        (b"host", b"x"), (b"content-length", str(len(payload)).encode())]))

    def upload():
        try:
            client.send(head + payload)
        except OSError:  # the server stops reading after its cap; that is the point
            pass

    sender = threading.Thread(target=upload)
    sender.start()
    client.h11.send(h11.Data(data=payload))
    client.h11.send(h11.EndOfMessage())
    status, headers, _, _ = client.response()
    assert (status, headers[b"connection"]) == (404, b"close")
    sender.join(10)


def test_expect_100_continue_is_sent_when_the_guest_reads(running):
    srv = running([("/...", "echo")], {"echo": Echo()})
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    assert _raw_response(sock).startswith(b"HTTP/1.1 100 Continue\r\n")
    sock.sendall(b"hello")
    final = _raw_response(sock)
    while not final.endswith(b"hello"):
        final += sock.recv(100)
    assert final.startswith(b"HTTP/1.1 200 ")


def test_expect_100_continue_not_sent_when_the_guest_answers_without_reading(running):
    srv = running([("/...", "ignores")], {"ignores": Ignores()})
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    response = _raw_response(sock)
    assert response.startswith(b"HTTP/1.1 200 ") and b"connection: close" in response


# ------------------------------------------------------------------------------------------------ limits


def test_huge_header_block_is_431(running):
    srv = running([("/...", "echo")], {"echo": Echo()}, max_header_bytes=64 * 1024)
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (70 * 1024) + b"\r\n\r\n")
    assert _raw_response(sock).startswith(b"HTTP/1.1 431 ")


def test_slowloris_is_disconnected_after_the_header_timeout(running):
    srv = running([("/...", "echo")], {"echo": Echo()}, header_timeout=1.0)
    client = srv.connect()
    start = time.monotonic()
    client.send(b"GET / HTTP/1.1\r\n")
    closed = False
    for i in range(40):  # one header byte every 0.1 s would take 4 s
        try:
            client.send(b"X"[:1] if i % 2 else b"-")
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        time.sleep(0.1)
        client.sock.settimeout(0.001)
        try:
            if client.sock.recv(1) == b"":
                closed = True
                break
        except (TimeoutError, BlockingIOError):
            pass
        except ConnectionResetError:
            closed = True
            break
    assert closed and time.monotonic() - start < 2.5


def test_idle_keep_alive_connection_is_closed(running):
    srv = running([("/...", "echo")], {"echo": Echo()}, keepalive_timeout=0.3)
    client = srv.connect()
    client.request(b"GET", b"/")
    client.response()
    assert client.closed_within(2)


# ------------------------------------------------------------------------------------------------ failures


def test_guest_failure_before_start_is_its_status_and_text_and_a_log_line(running, capfd):
    srv = running([("/...", "fails")], {"fails": Fails()})
    client = srv.connect()
    client.request(b"GET", b"/")
    status, headers, body, _ = client.response()
    assert (status, body) == (503, b"guest unavailable")
    assert headers[b"content-type"].startswith(b"text/plain")
    time.sleep(0.05)
    err = capfd.readouterr().err
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z spin: fails: trap: unreachable \[GET /\]\n", err), err


@pytest.mark.parametrize("body", [b"more than four", b"two"])
def test_a_body_that_breaks_its_content_length_aborts_with_a_timestamped_line_naming_the_request(running, capfd,
                                                                                                body):
    class WrongLength:
        component_id = "wrong"

        def handle(self, head, _body, sink):
            sink.start(200, [(b"content-length", b"4")])
            sink.write(body)
            sink.finish()

    srv = running([("/...", "wrong")], {"wrong": WrongLength()})
    client = srv.connect()
    client.request(b"GET", b"/wrong?x=1")
    assert client.closed_within(5)
    time.sleep(0.05)
    err = capfd.readouterr().err
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z spin: wrong: invalid response: .+ "
                        r"\[GET /wrong\]\n", err), err


def test_guest_failure_after_body_bytes_were_sent_closes_cleanly_after_them(running, capfd):
    guest = FailsAfterHead(200, [(b"content-length", b"100")], b"partial")
    srv = running([("/...", "fails")], {"fails": guest})
    client = srv.connect()
    client.request(b"GET", b"/")
    response = client.next_event()
    assert isinstance(response, h11.Response) and response.status_code == 200
    data = client.next_event()
    assert isinstance(data, h11.Data) and data.data == b"partial"
    guest.head_seen.set()
    # A FIN after every byte the guest wrote (no RST, nothing lost): h11 sees the body end early.
    client.sock.settimeout(5)
    assert client.sock.recv(65536) == b""
    time.sleep(0.05)
    err = capfd.readouterr().err
    assert "spin: fails: trap: unreachable (after the response started) [GET /]" in err, err


def test_throw_after_a_chunked_5xx_head_is_a_complete_empty_500_on_a_reusable_connection(running):
    # What StarlingMonkey does when a JS handler throws: a chunked 500 head, then the guest fails.
    guest = FailsAfterHead(500, [(b"content-type", b"text/plain")])
    srv = running([("/fail", "fails"), ("/...", "echo")], {"fails": guest, "echo": Echo()})
    client = srv.connect()
    client.request(b"GET", b"/fail")
    response = client.next_event()
    assert isinstance(response, h11.Response) and response.status_code == 500
    guest.head_seen.set()
    assert isinstance(client.next_event(), h11.EndOfMessage)
    client.next_cycle()
    client.request(b"POST", b"/x", body=b"again")
    assert client.response()[:3:2] == (200, b"again")


def test_throw_after_a_chunked_5xx_head_still_queued_is_the_same_empty_500(running):
    # The same guest without waiting for the client: its head and its failure meet in one batch (or not, as the
    # loop's flush falls); the answer is the same either way.
    for _ in range(20):
        guest = FailsAfterHead(500, [(b"content-type", b"text/plain")], wait_for_client=False)
        srv = running([("/fail", "fails"), ("/...", "echo")], {"fails": guest, "echo": Echo()})
        client = srv.connect()
        client.request(b"GET", b"/fail")
        status, headers, body, _ = client.response()
        assert (status, body) == (500, b"") and headers[b"content-type"] == b"text/plain"
        client.next_cycle()
        client.request(b"POST", b"/x", body=b"again")
        assert client.response()[:3:2] == (200, b"again")


def test_failure_before_a_queued_head_went_out_is_the_failures_own_answer(running):
    # A fixed-length head waits for its body, so a guest that fails before writing any is "nothing sent".
    guest = FailsAfterHead(200, [(b"content-length", b"10")], wait_for_client=False)
    srv = running([("/fail", "fails"), ("/...", "echo")], {"fails": guest, "echo": Echo()})
    client = srv.connect()
    client.request(b"GET", b"/fail")
    status, headers, body, _ = client.response()
    assert (status, body) == (500, b"Internal Server Error")
    client.next_cycle()
    client.request(b"POST", b"/x", body=b"again")
    assert client.response()[:3:2] == (200, b"again")


def test_a_200_head_then_a_failure_is_not_made_to_look_complete(running):
    guest = FailsAfterHead(200, [(b"content-type", b"text/plain")])
    srv = running([("/...", "fails")], {"fails": guest})
    client = srv.connect()
    client.request(b"GET", b"/")
    response = client.next_event()
    assert isinstance(response, h11.Response) and response.status_code == 200
    guest.head_seen.set()
    with pytest.raises(h11.RemoteProtocolError):  # the chunked body never ends: a truncated response
        client.next_event()


def test_access_log_has_a_line_per_request_when_on(running, capfd):
    srv = running([("/fail", "fails"), ("/...", "echo")],
                  {"fails": Fails(), "echo": Echo()}, access_log=True, app_info=AppInfo())
    client = srv.connect()
    for target in (b"/hello?token=secret", b"/fail", b"/.well-known/spin/health"):
        client.request(b"GET", target)
        client.response()
        client.next_cycle()
    time.sleep(0.05)
    lines = capfd.readouterr().err.splitlines()
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    access = [line for line in lines if " spin: " not in line]
    assert len(access) == 3, lines
    assert re.fullmatch(stamp + r" GET /hello 200 \d+\.\d\dms echo", access[0]), access
    assert re.fullmatch(stamp + r" GET /fail 503 \d+\.\d\dms fails", access[1]), access
    assert re.fullmatch(stamp + r" GET /\.well-known/spin/health 200 0\.00ms -", access[2]), access
    assert "secret" not in "\n".join(lines)


def test_access_log_is_silent_when_off(running, capfd):
    srv = running([("/...", "echo")], {"echo": Echo()})
    client = srv.connect()
    client.request(b"GET", b"/hello")
    assert client.response()[0] == 200
    time.sleep(0.05)
    assert capfd.readouterr().err == ""


def test_executor_bug_is_a_500_and_the_server_keeps_serving(running, capfd):
    srv = running([("/bug", "raises"), ("/...", "echo")], {"raises": Raises(), "echo": Echo()})
    client = srv.connect()
    client.request(b"GET", b"/bug")
    assert client.response()[0] == 500
    client.next_cycle()
    client.request(b"GET", b"/fine")
    assert client.response()[0] == 200
    err = capfd.readouterr().err
    assert "spin: raises: internal error: ValueError: executor bug [GET /bug]" in err


def test_stuck_guest_times_out_with_its_deadline(running):
    srv = running([("/...", "stuck")], {"stuck": Stuck()}, request_timeout=0.3)
    client = srv.connect()
    start = time.monotonic()
    client.request(b"GET", b"/")
    assert client.response()[0] == 504
    assert 0.25 < time.monotonic() - start < 2


@pytest.mark.parametrize("spin", [False, True], ids=["sleeping", "spinning"])
def test_stuck_guest_does_not_block_other_requests(running, spin):
    srv = running([("/stuck", "stuck"), ("/...", "echo")], {"stuck": Stuck(spin=spin), "echo": Echo()},
                  request_timeout=3.0)
    stuck = srv.connect()
    stuck.request(b"GET", b"/stuck")
    time.sleep(0.1)
    other = srv.connect()
    start = time.monotonic()
    for _ in range(5):
        other.request(b"GET", b"/x")
        assert other.response()[0] == 200
        other.next_cycle()
    assert time.monotonic() - start < 1.0
    assert stuck.response()[0] == 504


def test_slow_upload_does_not_block_other_requests(running):
    reader = RecordsClientGone()
    srv = running([("/upload", "reader"), ("/...", "echo")], {"reader": reader, "echo": Echo()})
    upload = srv.connect()
    upload.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nsome")
    time.sleep(0.1)
    other = srv.connect()
    other.request(b"GET", b"/x")
    assert other.response()[0] == 200
    assert not reader.done.is_set()
    upload.send(b"x" * 996)
    assert reader.done.wait(5) and reader.outcome == "complete"


# ------------------------------------------------------------------------------------------------ shutdown


def test_shutdown_drains_an_in_flight_request_and_stops_accepting(running):
    srv = running([("/...", "slow")], {"slow": Slow(0.5)})
    idle = srv.connect()
    client = srv.connect()
    client.request(b"GET", b"/")
    time.sleep(0.1)
    done = threading.Thread(target=srv.shutdown, args=(5.0,))
    done.start()
    status, headers, body, _ = client.response()
    assert (status, body, headers.get(b"connection")) == (200, b"slow", b"close")
    assert idle.closed_within(2)
    done.join(5)
    assert not srv.thread.is_alive()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=1)


def test_shutdown_grace_bounds_a_stuck_request(running):
    stuck = Stuck()
    srv = running([("/...", "stuck")], {"stuck": stuck}, request_timeout=30)
    client = srv.connect()
    client.request(b"GET", b"/")
    time.sleep(0.1)
    start = time.monotonic()
    try:
        srv.shutdown(0.3)
        assert time.monotonic() - start < 2
        assert client.closed_within(1)
    finally:
        stuck.release.set()


# ------------------------------------------------------------------------------------------------ dispatch


def _concurrency(policy, jobs, job_seconds):
    """Max guests running at once, and each job's (start, end), for ``jobs`` submitted together."""
    loop = asyncio.new_event_loop()
    state = {"now": 0, "max": 0}
    lock = threading.Lock()
    spans = []
    all_done = threading.Event()

    def job(ticket):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        start = time.monotonic()
        time.sleep(job_seconds)
        with lock:
            state["now"] -= 1
            spans.append((start, time.monotonic()))
            if len(spans) == jobs:
                all_done.set()

    async def main():
        dispatcher = AdaptiveDispatcher(asyncio.get_running_loop(), spill_after=policy.spill_after,
                                        fresh_limit=policy.fresh_limit)
        for _ in range(jobs):
            dispatcher.submit(job)
        while not all_done.is_set():
            await asyncio.sleep(0.005)
        dispatcher.close()
        return dispatcher

    dispatcher = loop.run_until_complete(main())
    loop.close()
    return state["max"], dispatcher.spilled


def test_adaptive_dispatch_runs_short_jobs_one_at_a_time():
    most, spilled = _concurrency(DispatchPolicy(spill_after=0.05), jobs=8, job_seconds=0.002)
    assert (most, spilled) == (1, 0)


def test_adaptive_dispatch_spills_when_the_running_job_takes_long():
    most, spilled = _concurrency(DispatchPolicy(spill_after=0.005), jobs=4, job_seconds=0.2)
    assert most == 4 and spilled == 3


def test_a_guest_blocked_on_the_client_lets_the_next_one_start_at_once():
    loop = asyncio.new_event_loop()
    started = []
    release = threading.Event()

    def blocked_job(ticket):
        ticket.block()
        started.append(("blocked", time.monotonic()))
        release.wait(5)
        ticket.unblock()

    def quick_job(ticket):
        started.append(("quick", time.monotonic()))
        release.set()

    async def main():
        dispatcher = AdaptiveDispatcher(asyncio.get_running_loop(), spill_after=10.0)
        dispatcher.submit(blocked_job)
        dispatcher.submit(quick_job)
        while not release.is_set():
            await asyncio.sleep(0.005)
        dispatcher.close()

    start = time.monotonic()
    loop.run_until_complete(asyncio.wait_for(main(), 5))
    loop.close()
    assert time.monotonic() - start < 1.0 and [name for name, _ in started] == ["blocked", "quick"]


# ------------------------------------------------------------------------------------------------ listen address


@pytest.mark.parametrize("text, expected", [
    ("0.0.0.0:80", (socket.AF_INET, "0.0.0.0", 80)),
    ("127.0.0.1:3000", (socket.AF_INET, "127.0.0.1", 3000)),
    ("[::]:80", (socket.AF_INET6, "::", 80)),
    ("[::1]:8080", (socket.AF_INET6, "::1", 8080)),
    (":8080", (socket.AF_INET, "0.0.0.0", 8080)),
    # Host names, resolved as Spin's parse_listen_addr does (127.0.0.1 preferred among the answers).
    ("localhost:3131", (socket.AF_INET, "127.0.0.1", 3131)),
    ("app.localhost:3131", (socket.AF_INET, "127.0.0.1", 3131)),
])
def test_listen_address_forms(text, expected):
    assert parse_listen_addr(text) == expected


@pytest.mark.parametrize("text, message", [
    ("80", "expected host:port"),
    ("http://x:80", "neither an IP address nor a host name"),
    ("no-such-host.invalid:80", "cannot resolve 'no-such-host.invalid' in the container"),
    ("0.0.0.0:http", "not a port number"),
    ("0.0.0.0:70000", "not a port number"),
    ("::1:80", "in brackets"),
    ("[1.2.3.4]:80", "not an IPv6 address"),
])
def test_bad_listen_address_is_a_clear_error(text, message):
    with pytest.raises(ListenError) as info:
        parse_listen_addr(text)
    assert str(info.value).startswith(f"SPIN_HTTP_LISTEN_ADDR={text!r}: ") and message in str(info.value)


def test_ipv6_wildcard_listener_serves_ipv4_and_ipv6_clients(running):
    echo = Echo()
    router, _ = Router.build([("/...", "echo")])
    server = HttpServer(router, {"echo": echo})
    try:
        listener = bind_listener("[::]:0")
    except ListenError:
        pytest.skip("no IPv6 here")
    port = listener.getsockname()[1]
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve([listener]),), daemon=True)
    thread.start()
    try:
        for host in ("127.0.0.1", "::1"):
            with socket.create_connection((host, port), timeout=5) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert _raw_response(sock).startswith(b"HTTP/1.1 200 ")
        addrs = [dict(head.headers)[b"spin-client-addr"] for head in echo.heads]
        assert addrs[0].startswith(b"[::ffff:127.0.0.1]:") and addrs[1].startswith(b"[::1]:")
    finally:
        asyncio.run_coroutine_threadsafe(server.shutdown(0.5), loop).result(5)
        thread.join(5)
        listener.close()


def test_address_in_use_is_a_clear_error():
    first = bind_listener("127.0.0.1:0")
    port = first.getsockname()[1]
    try:
        with pytest.raises(ListenError) as info:
            bind_listener(f"127.0.0.1:{port}")
        assert str(info.value) == f"SPIN_HTTP_LISTEN_ADDR=127.0.0.1:{port}: address already in use"
    finally:
        first.close()


def _reuseport_socket(family: socket.AddressFamily) -> socket.socket:
    """What an intruder would bind to share a port: SO_REUSEADDR and SO_REUSEPORT, as root like the shim."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


@pytest.mark.parametrize("addr, host", [("127.0.0.1:0", "127.0.0.1"), ("[::]:0", "::")])
def test_no_reuseport_socket_can_join_the_app_port_while_it_serves(addr, host):
    # Finding 8: a listener with SO_REUSEPORT could be joined by any process of the same uid (root, for the
    # shim) in the network namespace, which then took a share of the app's connections.
    router, _ = Router.build([("/...", "echo")])
    server = HttpServer(router, {"echo": Echo()})
    try:
        listener = bind_listener(addr)
    except ListenError:
        pytest.skip("no IPv6 here")
    assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
    port = listener.getsockname()[1]
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve([listener]),), daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert _raw_response(sock).startswith(b"HTTP/1.1 200 ")
        for intruder_host in {host, "127.0.0.1"}:
            intruder_family = socket.AF_INET6 if ":" in intruder_host else socket.AF_INET
            with _reuseport_socket(intruder_family) as intruder, pytest.raises(OSError) as info:
                intruder.bind((intruder_host, port))
            assert info.value.errno == errno.EADDRINUSE
    finally:
        asyncio.run_coroutine_threadsafe(server.shutdown(0.5), loop).result(5)
        thread.join(5)
        listener.close()


def test_a_static_response_route_is_answered_without_a_guest_get_and_head(running):
    from runtime.http.static_response import StaticResponder, StaticResponse

    responder = StaticResponder("static-response:t", StaticResponse(201, ((b"x-static", b"yes"),), b"fixed\n"))
    srv = running([("/...", "echo"), ("/s/...", "static-response:t")], {"echo": Echo(), "static-response:t": responder})
    client = srv.connect()
    client.request(b"POST", b"/s/x", body=b"ignored body")
    status, headers, body, _ = client.response()
    assert (status, headers[b"x-static"], headers[b"content-length"], body) == (201, b"yes", b"6", b"fixed\n")
    client.next_cycle()
    client.request(b"HEAD", b"/s/y")
    status, headers, body, _ = client.response()
    assert (status, headers[b"content-length"], body) == (201, b"6", b"")
    client.next_cycle()
    client.request(b"POST", b"/elsewhere", body=b"to the guest")  # the connection is still good
    assert client.response()[0] == 200
