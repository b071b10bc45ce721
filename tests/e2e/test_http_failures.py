"""A guest that loops, eats memory or traps; hostile clients; bad apps: errors in bounded time, server keeps serving.

py-spin runs with SPIN_SHIM_REQUEST_TIMEOUT=3 (seconds per request) and SPIN_MAX_INSTANCE_MEMORY=256 MiB; js-echo
(StarlingMonkey) has routes whose handler throws.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from typing import Iterator

import h11
import pytest

from tests.e2e.http_support import HttpTask, TaskGroup, task_group, wait_for_log

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def started(containerd_21) -> Iterator[TaskGroup]:
    with task_group(containerd_21) as group:
        yield group


@pytest.fixture(scope="module")
def app(containerd_21, images_21, http_apps, started) -> HttpTask:
    image = images_21.wasm_image("py-spin", {"/": http_apps["py-spin"]}, ["/"])
    return started.run(HttpTask(containerd_21, image, "http-failures", env={
        "SPIN_VARIABLE_API_TOKEN": "x", "SPIN_SHIM_REQUEST_TIMEOUT": "3",
        "SPIN_MAX_INSTANCE_MEMORY": str(256 * 1024 * 1024),
    }))


@pytest.fixture(scope="module")
def js_app(containerd_21, images_21, http_apps, started) -> HttpTask:
    image = images_21.wasm_image("js-echo", {"/": http_apps["js-echo"]}, ["/"])
    return started.run(HttpTask(containerd_21, image, "http-failures-js"))


class _KeepAliveClient:
    """One connection, requests parsed by h11's client side: every byte of each response is accounted for."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.h11 = h11.Connection(h11.CLIENT)

    def get(self, target: str) -> tuple[int, dict[bytes, bytes], bytes]:
        if self.h11.our_state is h11.DONE:
            self.h11.start_next_cycle()
        self.sock.sendall(self.h11.send(h11.Request(method="GET", target=target, headers=[("host", "x")])))
        self.sock.sendall(self.h11.send(h11.EndOfMessage()))
        response, body = None, b""
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(self.sock.recv(65536))  # b"" before the end: h11 raises (truncated)
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                return response.status_code, dict(response.headers), body

    def close(self) -> None:
        self.sock.close()


def test_js_handler_that_throws_gets_a_complete_500_on_a_connection_that_stays_usable(js_app):
    # StarlingMonkey starts a chunked 500 and never finishes its body; `wasmtime serve` answers that as a clean
    # empty 500, and so must we (it used to be a 500 and then a cut connection: curl's error 18).
    client = _KeepAliveClient(js_app.port)
    try:
        status, headers, body = client.get("/throw")
        assert (status, body) == (500, b"")
        assert headers.get(b"connection") != b"close"
        status, _, body = client.get("/hello")
        assert (status, body) == (200, b"Hello from JS!")
        assert client.get("/throw")[0] == 500  # again, on the same connection
    finally:
        client.close()
    assert js_app.get("/throw").status == 500  # curl: a complete response, no error 18
    # The guest's own message and the shim's line naming the request, with a timestamp.
    assert wait_for_log(js_app, "js-echo was asked to throw"), js_app.log()
    assert re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z spin: js-echo: .*\[GET /throw\]$", js_app.log(),
                     re.M), js_app.log()


def test_js_body_stream_that_fails_after_the_head_ends_the_response_as_the_guest_left_it(js_app):
    # StarlingMonkey finishes the body itself when its ReadableStream errors (it warns on stderr); the client gets
    # what was written, complete, on a connection that goes on (as with `wasmtime serve`).
    client = _KeepAliveClient(js_app.port)
    try:
        status, _, body = client.get("/throw-after-head")
        assert (status, body) == (200, b"partial ")
        assert client.get("/hello")[2] == b"Hello from JS!"
    finally:
        client.close()


def _in_background(fn) -> tuple[threading.Thread, list]:
    results: list = []
    thread = threading.Thread(target=lambda: results.append(fn()), daemon=True)
    thread.start()
    return thread, results


def test_infinite_loop_gets_504_while_other_routes_answer(app):
    thread, results = _in_background(lambda: app.get("/loop", timeout=60))
    time.sleep(0.5)  # the loop is running now
    for _ in range(3):
        assert app.get("/hello").status == 200
    thread.join(timeout=60)
    assert results and results[0].status == 504, results
    assert app.get("/hello").status == 200


def test_unbounded_allocation_gets_an_error_answer(app):
    response = app.get("/alloc", timeout=60)
    assert response.status == 500, (response.status, response.text)
    assert app.get("/hello").status == 200


def test_trap_gets_500_and_a_line_in_the_container_log(app):
    response = app.get("/raise")
    assert response.status == 500
    assert wait_for_log(app, "spin: py-spin: "), app.log()
    assert app.get("/hello").status == 200


def test_oversized_headers_get_431_and_the_server_keeps_serving(app):
    response = app.get("/hello", "-H", "x-big: " + "a" * 100_000)
    assert response.status == 431
    assert app.get("/hello").status == 200


def test_slow_clients_do_not_take_the_server_down(app):
    stalled = []
    for _ in range(8):  # more slow clients than worker processes
        conn = socket.create_connection(("127.0.0.1", app.port))
        conn.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\npartial")
        stalled.append(conn)
    half_headers = socket.create_connection(("127.0.0.1", app.port))
    half_headers.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    stalled.append(half_headers)
    try:
        for _ in range(3):
            assert app.get("/hello", timeout=20).status == 200
    finally:
        for conn in stalled:
            conn.close()
    assert app.get("/hello").status == 200


def test_malformed_request_gets_400(app):
    with socket.create_connection(("127.0.0.1", app.port), timeout=10) as conn:
        conn.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        assert conn.recv(64).startswith(b"HTTP/1.1 400")
    assert app.get("/hello").status == 200

