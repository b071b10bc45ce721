"""wasi:http/outgoing-handler against real servers on loopback, driven through the host functions as a guest calls
them: keep-alive reuse, streamed request bodies, connections dropped after an unfinished body or a server close,
Spin's error-codes, HTTPS with the default roots and with ``[[client_tls]]``."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from runtime.host.context import ComponentHost, RequestContext
from runtime.host.registry import REGISTRY
from runtime.host.values import OK_EMPTY, Err, Ok, Variant
from runtime.host.wasi.http import MAX_PENDING_REQUEST_BODY
from runtime.host.wasi.outgoing_pool import POOL
from runtime.http.contract import ComponentConfig
from runtime.spin.client_tls import parse_client_tls
from tests.outbound_support import counting_server, make_pki, server_tls, wait_for

HTTP = "wasi:http/types@0.2.0"
STREAMS = "wasi:io/streams@0.2.0"
HANDLER = "wasi:http/outgoing-handler@0.2.0"


def impl(interface: str, name: str) -> Any:
    iface = REGISTRY.find(interface)
    assert iface is not None, interface
    return iface.functions[name]


def make_ctx(allowed: tuple[str, ...] = ("*://127.0.0.1:*", "*://localhost:*", "http://no-such-host.invalid"),
             client_tls: tuple = ()) -> RequestContext:
    services = None
    if client_tls:
        from runtime.spin.outbound import OutboundPolicy

        policy = OutboundPolicy.parse(allowed)
        services = SimpleNamespace(outbound_policy=lambda _id: policy,
                                   runtime_config=SimpleNamespace(client_tls=client_tls))
    config = ComponentConfig(id="web", wasm_path=Path("/dev/null"), executor="component", environment={},
                             allowed_outbound_hosts=allowed, services=services)
    return RequestContext(ComponentHost(config), deadline=time.monotonic() + 20)


def end_request(ctx: RequestContext) -> None:
    ctx.table.clear()
    for cleanup in ctx.cleanups:
        cleanup()
    ctx.cleanups.clear()


class Guest:
    """The calls a guest makes for one outbound request."""

    def __init__(self, ctx: RequestContext) -> None:
        self.ctx = ctx

    def request(self, method: str, url_scheme: str, authority: str, path: str,
                headers: list[tuple[str, bytes]] = ()) -> tuple[int, int | None]:  # type: ignore[assignment]
        ctx = self.ctx
        fields = impl(HTTP, "[static]fields.from-list")(ctx, list(headers)).value.rep
        request = impl(HTTP, "[constructor]outgoing-request")(ctx, fields).rep
        impl(HTTP, "[method]outgoing-request.set-method")(ctx, request, Variant(method.lower()))
        impl(HTTP, "[method]outgoing-request.set-scheme")(ctx, request, Variant(url_scheme.upper()))
        impl(HTTP, "[method]outgoing-request.set-authority")(ctx, request, authority)
        impl(HTTP, "[method]outgoing-request.set-path-with-query")(ctx, request, path)
        body = None
        if method in ("POST", "PUT"):
            body = impl(HTTP, "[method]outgoing-request.body")(ctx, request).value.rep
        return request, body

    def handle(self, request: int) -> Any:
        return impl(HANDLER, "handle")(self.ctx, request, None)

    def body_stream(self, body: int) -> int:
        return impl(HTTP, "[method]outgoing-body.write")(self.ctx, body).value.rep

    def write(self, stream: int, data: bytes) -> Any:
        return impl(STREAMS, "[method]output-stream.blocking-write-and-flush")(self.ctx, stream, data)

    def finish(self, body: int) -> Any:
        return impl(HTTP, "[static]outgoing-body.finish")(self.ctx, body, None)

    def response(self, future: int) -> Any:
        return impl(HTTP, "[method]future-incoming-response.get")(self.ctx, future)

    def read_all(self, response: int) -> bytes:
        ctx = self.ctx
        body = impl(HTTP, "[method]incoming-response.consume")(ctx, response).value.rep
        stream = impl(HTTP, "[method]incoming-body.stream")(ctx, body).value.rep
        chunks = []
        while True:
            result = impl(STREAMS, "[method]input-stream.blocking-read")(ctx, stream, 65536)
            if not isinstance(result, Ok):
                return b"".join(chunks)
            chunks.append(result.value)

    def get(self, port: int, path: str = "/ping", scheme: str = "http", host: str = "127.0.0.1") -> tuple[int, bytes]:
        request, _ = self.request("GET", scheme, f"{host}:{port}", path)
        future = self.handle(request).value.rep
        outcome = self.response(future)
        assert isinstance(outcome, Ok) and isinstance(outcome.value, Ok), outcome
        response = outcome.value.value.rep
        return impl(HTTP, "[method]incoming-response.status")(self.ctx, response), self.read_all(response)

    def error_of(self, port: int, path: str = "/ping", scheme: str = "http", host: str = "127.0.0.1") -> Variant:
        request, _ = self.request("GET", scheme, f"{host}:{port}", path)
        handled = self.handle(request)
        if isinstance(handled, Err):
            return handled.value
        outcome = self.response(handled.value.rep)
        assert isinstance(outcome, Ok) and isinstance(outcome.value, Err), outcome
        return outcome.value.value


@pytest.fixture(autouse=True)
def empty_pool():
    POOL.clear()
    yield
    POOL.clear()


def test_sequential_requests_of_one_guest_request_share_one_connection() -> None:
    with counting_server() as server:
        ctx = make_ctx()
        guest = Guest(ctx)
        for _ in range(100):
            assert guest.get(server.port) == (200, b"pong")
        end_request(ctx)
        assert server.accepted == 1


def test_requests_of_successive_guest_requests_share_the_pooled_connection() -> None:
    with counting_server() as server:
        for _ in range(20):
            ctx = make_ctx()
            assert Guest(ctx).get(server.port) == (200, b"pong")
            end_request(ctx)
        assert server.accepted == 1
        assert POOL.idle_count() == 1


def test_a_response_left_unread_closes_its_connection_instead_of_pooling_it() -> None:
    with counting_server() as server:
        ctx = make_ctx()
        guest = Guest(ctx)
        request, _ = guest.request("GET", "http", f"127.0.0.1:{server.port}", "/seen")  # body after a wait
        server.first_upload_bytes.set()
        future = guest.handle(request).value.rep
        assert isinstance(guest.response(future).value, Ok)  # head read, body never read
        end_request(ctx)
        assert POOL.idle_count() == 0
        ctx = make_ctx()
        assert Guest(ctx).get(server.port) == (200, b"pong")
        end_request(ctx)
        assert server.accepted == 2


def test_connection_close_from_the_server_is_honoured_and_an_idle_close_is_survived() -> None:
    with counting_server() as server:
        ctx = make_ctx()
        guest = Guest(ctx)
        assert guest.get(server.port, "/close") == (200, b"bye")
        assert POOL.idle_count() == 0
        assert guest.get(server.port) == (200, b"pong")
        assert POOL.idle_count() == 1
        # The pooled connection goes dead while idle (as when the server closes it): the next request must not
        # fail, and must not use it.
        idle = POOL.take(("http", "127.0.0.1", server.port, None))
        assert idle is not None
        idle.sock.shutdown(2)  # readable (EOF) from now on
        POOL.give(("http", "127.0.0.1", server.port, None), idle)
        assert guest.get(server.port) == (200, b"pong")
        end_request(ctx)
        assert server.accepted == 3


def test_a_streamed_body_reaches_the_server_before_the_guest_finished_writing_it() -> None:
    with counting_server() as server:
        ctx = make_ctx()
        guest = Guest(ctx)
        request, body = guest.request("POST", "http", f"127.0.0.1:{server.port}", "/upload")
        future = guest.handle(request).value.rep
        stream = guest.body_stream(body)
        chunk = bytes(range(256)) * 256  # 64 KiB
        sent = 0
        seen_mid_upload = False
        for index in range(160):  # 10 MiB
            assert guest.write(stream, chunk) is OK_EMPTY
            sent += len(chunk)
            if index == 16:
                # 1 MiB written of 10: the server must have some of it already, or the host is buffering.
                seen_mid_upload = wait_for(lambda: server.uploaded > 0, timeout=5)
        assert seen_mid_upload
        assert guest.finish(body) is OK_EMPTY
        outcome = guest.response(future)
        response = outcome.value.value.rep
        answer = json.loads(guest.read_all(response))
        assert answer == {"bytes": sent, "sha256": hashlib.sha256(chunk * 160).hexdigest(), "chunked": True}
        end_request(ctx)


def test_a_body_with_content_length_is_sent_with_it_and_a_short_one_fails() -> None:
    with counting_server() as server:
        ctx = make_ctx()
        guest = Guest(ctx)
        request, body = guest.request("POST", "http", f"127.0.0.1:{server.port}", "/upload",
                                      [("content-length", b"6")])
        future = guest.handle(request).value.rep
        stream = guest.body_stream(body)
        assert guest.write(stream, b"abcdef") is OK_EMPTY
        assert guest.finish(body) is OK_EMPTY
        answer = json.loads(guest.read_all(guest.response(future).value.value.rep))
        assert answer["bytes"] == 6 and answer["chunked"] is False

        request, body = guest.request("POST", "http", f"127.0.0.1:{server.port}", "/upload",
                                      [("content-length", b"10")])
        future = guest.handle(request).value.rep
        guest.write(guest.body_stream(body), b"abc")
        finished = guest.finish(body)
        assert isinstance(finished, Err) and finished.value.tag == "HTTP-request-body-size"
        end_request(ctx)


def test_body_written_before_handle_is_bounded() -> None:
    ctx = make_ctx()
    guest = Guest(ctx)
    _, body = guest.request("POST", "http", "127.0.0.1:9", "/upload")
    stream = guest.body_stream(body)
    chunk = b"x" * 65536
    results = [guest.write(stream, chunk) for _ in range(MAX_PENDING_REQUEST_BODY // len(chunk) + 1)]
    assert all(r is OK_EMPTY for r in results[:-1])
    assert isinstance(results[-1], Err) and results[-1].value.tag == "last-operation-failed"
    end_request(ctx)


def test_spins_error_codes_for_refused_unresolvable_and_denied_destinations() -> None:
    ctx = make_ctx()
    guest = Guest(ctx)
    assert guest.error_of(9).tag == "connection-refused"
    dns = guest.error_of(80, host="no-such-host.invalid")
    assert dns.tag == "DNS-error"
    assert guest.error_of(80, host="10.1.2.3").tag == "HTTP-request-denied"
    assert any("10.1.2.3" in note for note in ctx.notes)
    end_request(ctx)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_https_with_the_default_roots_refuses_an_unknown_ca_with_tls_protocol_error(pki) -> None:
    with counting_server(server_tls(pki)) as server:
        ctx = make_ctx()
        code = Guest(ctx).error_of(server.port, scheme="https", host="localhost")
        assert code.tag == "TLS-protocol-error"  # Spin maps every failed handshake to it
        assert any("CERTIFICATE_VERIFY_FAILED" in note or "certificate verify failed" in note for note in ctx.notes)
        end_request(ctx)


def _tls_specs(pki, tmp_path: Path, **extra: str) -> tuple:
    table = {"component_ids": ["web"], "hosts": ["localhost"], "ca_roots_file": str(pki.ca_crt), **extra}
    return parse_client_tls([table], "runtime-config.toml", lambda written: Path(written))


def test_client_tls_roots_and_client_certificate_reach_a_server_that_requires_one(pki, tmp_path: Path) -> None:
    with counting_server(server_tls(pki, require_client_cert=True)) as server:
        without_cert = _tls_specs(pki, tmp_path)
        ctx = make_ctx(client_tls=without_cert)
        refused = Guest(ctx).error_of(server.port, "/whoami", scheme="https", host="localhost")
        assert refused.tag in ("TLS-protocol-error", "connection-terminated", "HTTP-protocol-error")
        end_request(ctx)
        with_cert = _tls_specs(pki, tmp_path, client_cert_file=str(pki.client_crt),
                               client_private_key_file=str(pki.client_key))
        ctx = make_ctx(client_tls=with_cert)
        guest = Guest(ctx)
        assert guest.get(server.port, "/whoami", scheme="https", host="localhost") == (200, b"client")
        assert guest.get(server.port, "/whoami", scheme="https", host="localhost") == (200, b"client")
        end_request(ctx)
        # Another component is not matched by the table: default roots, so the test CA is unknown to it.
        other = make_ctx(client_tls=with_cert)
        other.config = other.component.config = ComponentConfig(
            id="other", wasm_path=Path("/dev/null"), executor="component", environment={},
            allowed_outbound_hosts=("*://localhost:*",), services=ctx.config.services)
        assert Guest(other).error_of(server.port, "/whoami", scheme="https", host="localhost").tag == \
            "TLS-protocol-error"
        end_request(other)


class ScriptedServer:
    """A raw TCP server that answers each connection with the replies given, one per request read, then closes:
    for what a well-behaved server never does (closing a kept-alive connection as a request arrives, garbage)."""

    def __init__(self, replies_per_connection: list[list[bytes]]) -> None:
        import socket

        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.scripts = list(replies_per_connection)
        self.accepted = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.scripts:
            conn, _ = self.listener.accept()
            self.accepted += 1
            replies = self.scripts.pop(0)
            with conn:
                for reply in replies:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        piece = conn.recv(65536)
                        if not piece:
                            return
                        data += piece
                    conn.sendall(reply)

    def close(self) -> None:
        self.listener.close()


PONG = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\npong"


def test_a_pooled_connection_closed_as_the_next_request_arrives_is_retried_on_a_new_one() -> None:
    # First connection: one answer, then the server closes it when the second request arrives (no reply).
    server = ScriptedServer([[PONG, b""], [PONG]])
    try:
        ctx = make_ctx()
        guest = Guest(ctx)
        assert guest.get(server.port) == (200, b"pong")
        assert POOL.idle_count() == 1
        assert guest.get(server.port) == (200, b"pong")
        assert server.accepted == 2
        end_request(ctx)
    finally:
        server.close()


def test_a_connection_that_failed_is_never_pooled() -> None:
    server = ScriptedServer([[b"HTTP/1.1 200 OK\r\ncontent-length: nonsense\r\n\r\n"]])
    try:
        ctx = make_ctx()
        assert Guest(ctx).error_of(server.port).tag == "HTTP-protocol-error"
        end_request(ctx)
        assert POOL.idle_count() == 0
    finally:
        server.close()


def test_a_large_response_is_read_as_the_guest_reads_it_and_the_connection_kept() -> None:
    with counting_server() as server:
        ctx = make_ctx()
        guest = Guest(ctx)
        request, _ = guest.request("GET", "http", f"127.0.0.1:{server.port}", f"/big?bytes={8 << 20}")
        response = guest.response(guest.handle(request).value.rep).value.value.rep
        body = impl(HTTP, "[method]incoming-response.consume")(ctx, response).value.rep
        stream = impl(HTTP, "[method]incoming-body.stream")(ctx, body).value.rep
        sizes = []
        while isinstance(result := impl(STREAMS, "[method]input-stream.blocking-read")(ctx, stream, 65536), Ok):
            sizes.append(len(result.value))
        assert sum(sizes) == 8 << 20 and max(sizes) <= 65536
        assert POOL.idle_count() == 1  # read to the end: back in the pool
        assert guest.get(server.port) == (200, b"pong")
        end_request(ctx)
        assert server.accepted == 1
