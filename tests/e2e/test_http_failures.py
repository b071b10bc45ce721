"""A guest that loops, eats memory or traps; hostile clients; bad apps: errors in bounded time, server keeps serving.

py-spin runs with SPIN_SHIM_REQUEST_TIMEOUT=3 (seconds per request) and SPIN_MAX_INSTANCE_MEMORY=256 MiB.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Iterator

import pytest

from tests.e2e.http_support import HttpTask, serving, wait_for_log

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def app(containerd_21, images_21, http_apps) -> Iterator[HttpTask]:
    image = images_21.wasm_image("py-spin", {"/": http_apps["py-spin"]}, ["/"])
    with serving(containerd_21, image, "http-failures", {
        "SPIN_VARIABLE_API_TOKEN": "x", "SPIN_SHIM_REQUEST_TIMEOUT": "3",
        "SPIN_MAX_INSTANCE_MEMORY": str(256 * 1024 * 1024),
    }) as task:
        yield task


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

