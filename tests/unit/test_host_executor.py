"""ComponentExecutor serving real Spin apps (tests/apps/build: py-spin, py-proxy, js-echo) without HTTP.

The tests are the contract's other side: an in-memory RequestBody and ResponseSink. They pin what the server
relies on: status, headers and body (10 MiB echoed intact), guest stdout/stderr on fds 1/2, read-only files,
outbound HTTP through allowed_outbound_hosts, a trap -> GuestFailure(500) with the log line, a busy loop ->
GuestFailure(504) in bounded time, a failure after the response started -> GuestFailure, missing imports named
at load, concurrent requests on two guest threads, and no file descriptors left behind.
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.errors import MissingImportError, WasmLoadError
from runtime.files import Preopen
from runtime.host.context import RequestContext
from runtime.host.executor import ComponentExecutor
from runtime.host.linking import check_imports
from runtime.host.registry import REGISTRY, Registry
from runtime.host.values import Variant
from runtime.host.wasi.http import IncomingExchange, OutgoingBody, OutgoingResponse, ResponseBodyTarget, Fields
from runtime.http.contract import ClientGone, ComponentConfig, GuestFailure, RequestHead, RouteInfo
from tests.unit.test_host_marshal import BUILD_DIR, app_wasm, load_component
from tests.upstream_support import answering_upstream


class MemoryBody:
    def __init__(self, data: bytes = b"", fail_after: int | None = None, stall_after: int | None = None,
                 stall: float = 0.0) -> None:
        self.data = io.BytesIO(data)
        self.reads = 0
        self.fail_after = fail_after
        self.stall_after = stall_after
        self.stall = stall

    def read(self, max_bytes: int) -> bytes:
        self.reads += 1
        if self.fail_after is not None and self.reads > self.fail_after:
            raise ClientGone("client reset")
        if self.stall_after is not None and self.reads > self.stall_after:
            time.sleep(self.stall)  # a slow client: the guest runs past its deadline meanwhile
        return self.data.read(max_bytes)


class MemorySink:
    def __init__(self) -> None:
        self.started = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.parts: list[bytes] = []
        self.finished = False

    def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        assert not self.started, "start called twice"
        self.started, self.status, self.headers = True, status, headers

    def write(self, data: bytes) -> None:
        assert self.started, "body before start"
        self.parts.append(bytes(data))

    def finish(self, trailers: Any = None) -> None:
        self.finished = True

    @property
    def body(self) -> bytes:
        return b"".join(self.parts)

    def header(self, name: bytes) -> bytes | None:
        return next((value for key, value in self.headers if key == name), None)


def make_head(target: str, method: str = "GET", headers: list[tuple[bytes, bytes]] | None = None,
              timeout: float = 30.0, component: str = "app") -> RequestHead:
    return RequestHead(
        method=method, target=target, headers=headers or [], scheme="http", authority="localhost:3000",
        client_addr="127.0.0.1:40000", component_id=component, route=RouteInfo("/...", "", "/...", target),
        full_url=f"http://localhost:3000{target}", deadline=time.monotonic() + timeout,
    )


def serve(executor: ComponentExecutor, target: str, method: str = "GET", body: bytes = b"",
          headers: list[tuple[bytes, bytes]] | None = None, timeout: float = 30.0) -> MemorySink:
    sink = MemorySink()
    executor.handle(make_head(target, method, headers, timeout), MemoryBody(body), sink)
    return sink


def make_executor(app: str, **config: Any) -> ComponentExecutor:
    settings: dict[str, Any] = {"environment": {}}
    settings.update(config)
    cfg = ComponentConfig(id=app, wasm_path=app_wasm(app), executor="component", **settings)
    from runtime.engine import shared_engine

    return ComponentExecutor(cfg, load_component(app), shared_engine())


@pytest.fixture(scope="module")
def py_spin() -> ComponentExecutor:
    return make_executor(
        "py-spin",
        environment={"APP_MODE": "test"},
        preopens=(Preopen(BUILD_DIR / "py-spin" / "static", "/static"),),
        allowed_outbound_hosts=("http://127.0.0.1:*",),
    )


@pytest.fixture(scope="module")
def py_proxy() -> ComponentExecutor:
    return make_executor("py-proxy")


@pytest.fixture(scope="module")
def js_echo() -> ComponentExecutor:
    return make_executor("js-echo", environment={"WHO": "tester"})


# ------------------------------------------------------------------------------------------------ responses


def test_spin_sdk_hello(py_spin: ComponentExecutor) -> None:
    sink = serve(py_spin, "/hello")
    assert (sink.status, sink.body, sink.finished) == (200, b"Hello from Python!", True)
    assert sink.header(b"content-type") == b"text/plain"


def test_spin_sdk_echo_keeps_method_headers_and_body(py_spin: ComponentExecutor) -> None:
    sink = serve(py_spin, "/echo", "PUT", b"payload", [(b"x-echo-one", b"1"), (b"content-type", b"text/x")])
    assert sink.status == 200 and sink.body == b"payload"
    assert sink.header(b"x-method") == b"PUT" and sink.header(b"x-echo-one") == b"1"
    assert sink.header(b"content-type") == b"text/x"


def test_status_codes_come_through(py_spin: ComponentExecutor, js_echo: ComponentExecutor) -> None:
    assert serve(py_spin, "/status/418").status == 418
    assert serve(js_echo, "/status/503").status == 503


def test_ten_mib_echo_is_intact(py_proxy: ComponentExecutor) -> None:
    data = os.urandom(10 << 20)
    sink = serve(py_proxy, "/echo", "POST", data)
    assert sink.status == 200 and sink.finished
    assert len(sink.body) == len(data) and sink.body == data


def test_js_streams_the_request_body_into_the_response(js_echo: ComponentExecutor) -> None:
    data = os.urandom(300_000)
    sink = serve(js_echo, "/echo-stream", "POST", data)
    assert (sink.status, sink.body, sink.finished) == (200, data, True)
    assert sink.header(b"x-who") == b"tester"


def test_js_sees_the_request_headers_and_its_environment(js_echo: ComponentExecutor) -> None:
    sink = serve(js_echo, "/headers", headers=[(b"spin-full-url", b"http://localhost:3000/headers"), (b"x-a", b"b")])
    assert b'"x-a":"b"' in sink.body and b'"spin-full-url"' in sink.body
    assert serve(js_echo, "/env?name=WHO").body == b"tester"


def test_a_large_generated_body_has_the_right_bytes(js_echo: ComponentExecutor, py_spin: ComponentExecutor) -> None:
    expected = (b"0123456789abcdef" * 20000)[:300_001]
    assert serve(js_echo, "/big?bytes=300001").body == expected
    assert serve(py_spin, "/big?bytes=300001").body == expected


def test_environment_is_exactly_the_configured_one(py_spin: ComponentExecutor) -> None:
    assert serve(py_spin, "/env?name=APP_MODE").body == b"test"
    assert serve(py_spin, "/env?name=PATH").status == 404


def test_guest_output_goes_to_fds_1_and_2(py_spin: ComponentExecutor, capfd: pytest.CaptureFixture[str]) -> None:
    assert serve(py_spin, "/log").body == b"logged"
    out, err = capfd.readouterr()
    assert "py-spin stdout marker" in out and "py-spin stderr marker" in err


def test_files_are_readable_and_nothing_outside_the_preopens(py_spin: ComponentExecutor) -> None:
    sink = serve(py_spin, "/file?path=/static/hello.txt")
    assert (sink.status, sink.body) == (200, b"Hello from a static file!\n")
    for path in ("/static/../../etc/passwd", "/etc/passwd", "/static/missing.txt"):
        assert serve(py_spin, f"/file?path={path}").status == 404


# ------------------------------------------------------------------------------------------------ outbound


@pytest.fixture
def upstream() -> Iterator[str]:
    with answering_upstream() as server:
        yield server.url


def test_outbound_http_to_an_allowed_host(py_spin: ComponentExecutor, upstream: str) -> None:
    sink = serve(py_spin, f"/outbound?url={upstream}/x?y=1")
    assert sink.status == 200, sink.body
    assert sink.header(b"x-upstream-status") == b"203"
    assert sink.body == b"203\nupstream saw /x?y=1"


def test_outbound_http_to_a_host_not_allowed_is_denied(py_spin: ComponentExecutor, capfd: pytest.CaptureFixture[str]) -> None:
    sink = serve(py_spin, "/outbound?url=http://example.com/")
    assert sink.status == 502 and b"HttpRequestDenied" in sink.body
    assert "Destination not allowed: http://example.com/" in capfd.readouterr().err


def test_outbound_connection_refused_is_an_error_code(py_spin: ComponentExecutor) -> None:
    sink = serve(py_spin, "/outbound?url=http://127.0.0.1:9/")
    assert sink.status == 502 and b"ConnectionRefused" in sink.body


# ------------------------------------------------------------------------------------------------ failures


def test_a_trap_before_the_response_is_a_500_with_the_log_line(py_spin: ComponentExecutor) -> None:
    with pytest.raises(GuestFailure) as failure:
        serve(py_spin, "/raise")
    assert failure.value.status == 500
    assert failure.value.log_line.startswith("spin: py-spin: trap: ")


def test_a_busy_loop_is_stopped_at_the_deadline_with_504(py_spin: ComponentExecutor) -> None:
    started = time.monotonic()
    with pytest.raises(GuestFailure) as failure:
        serve(py_spin, "/loop", timeout=0.3)
    elapsed = time.monotonic() - started
    assert failure.value.status == 504 and "deadline" in failure.value.log_line
    assert 0.25 < elapsed < 1.5
    assert serve(py_spin, "/hello").status == 200  # the executor serves on


def test_a_request_whose_deadline_passed_is_not_started(py_spin: ComponentExecutor) -> None:
    with pytest.raises(GuestFailure) as failure:
        serve(py_spin, "/hello", timeout=-1)
    assert failure.value.status == 504


def test_instance_memory_is_limited_at_run_time() -> None:
    executor = make_executor("py-spin", max_instance_memory=48 << 20)
    assert serve(executor, "/hello").status == 200
    sink = serve(executor, "/alloc")  # the guest gets MemoryError; the Spin SDK answers 500 itself
    assert sink.status == 500
    assert serve(executor, "/hello").status == 200  # a fresh instance per request: nothing carried over


def test_an_instance_that_cannot_fit_its_memory_limit_fails_at_load() -> None:
    with pytest.raises(WasmLoadError, match="per-instance limit of 8388608 bytes"):
        make_executor("py-spin", max_instance_memory=8 << 20)


def test_a_failure_after_the_response_started_is_raised_for_an_abort(js_echo: ComponentExecutor) -> None:
    sink = MemorySink()
    body = MemoryBody(b"x" * 200_000, stall_after=1, stall=0.4)
    with pytest.raises(GuestFailure) as failure:
        js_echo.handle(make_head("/echo-stream", "POST", timeout=0.2), body, sink)
    assert sink.started and not sink.finished
    assert failure.value.status == 504 and "(after the response started)" in failure.value.log_line


def test_a_client_gone_mid_request_body_leaves_the_choice_to_the_guest(js_echo: ComponentExecutor) -> None:
    sink = MemorySink()
    js_echo.handle(make_head("/echo-stream", "POST"), MemoryBody(b"x" * 200_000, fail_after=1), sink)
    assert sink.started and sink.finished  # StarlingMonkey ends its response body at the read error


def test_handler_returning_without_a_response_is_a_500(py_spin: ComponentExecutor) -> None:
    ctx = RequestContext(py_spin.host)
    ctx.state["wasi:http/incoming-exchange"] = IncomingExchange(MemorySink())
    with pytest.raises(GuestFailure, match="without setting a response") as failure:
        py_spin._outcome(ctx, None)
    assert failure.value.status == 500


def test_a_response_body_never_finished_aborts_but_one_never_asked_for_is_empty(py_spin: ComponentExecutor) -> None:
    for asked_for_body, outcome in ((True, "without finishing"), (False, None)):
        sink = MemorySink()
        ctx = RequestContext(py_spin.host)
        exchange = ctx.state["wasi:http/incoming-exchange"] = IncomingExchange(sink)
        response = OutgoingResponse(Fields())
        if asked_for_body:
            response.body = OutgoingBody(ResponseBodyTarget())
        exchange.set_response(ctx, response)
        if outcome is None:
            py_spin._outcome(ctx, None)
            assert sink.finished and sink.body == b""
        else:
            with pytest.raises(GuestFailure, match=outcome):
                py_spin._outcome(ctx, None)


def test_a_trap_after_a_complete_response_is_only_logged(
    py_spin: ComponentExecutor, capfd: pytest.CaptureFixture[str]
) -> None:
    import wasmtime

    sink = MemorySink()
    ctx = RequestContext(py_spin.host)
    exchange = ctx.state["wasi:http/incoming-exchange"] = IncomingExchange(sink)
    exchange.set_response(ctx, OutgoingResponse(Fields()))
    exchange.finish(None)
    py_spin._outcome(ctx, wasmtime.WasmtimeError("wasm trap: wasm `unreachable` instruction executed"))
    assert sink.finished
    assert "spin: py-spin: trap: wasm `unreachable` instruction executed (after the response was complete)" in (
        capfd.readouterr().err
    )


def test_an_error_code_instead_of_a_response_is_a_500(py_spin: ComponentExecutor) -> None:
    ctx = RequestContext(py_spin.host)
    exchange = ctx.state["wasi:http/incoming-exchange"] = IncomingExchange(MemorySink())
    exchange.error = Variant("HTTP-request-denied")
    with pytest.raises(GuestFailure, match="error-code HTTP-request-denied"):
        py_spin._outcome(ctx, None)


# ------------------------------------------------------------------------------------------------ load, threads, leaks


def test_check_imports_names_every_missing_interface_at_once() -> None:
    from runtime.engine import shared_engine

    component = load_component("py-spin")
    engine = shared_engine()
    partial = Registry()
    poll = partial.interface("wasi:io/poll", ["0.2.*"])
    poll.resource("pollable")
    for name in ("[method]pollable.ready", "[method]pollable.block"):
        poll.define(name, lambda ctx, *args: None)  # "poll" itself left out on purpose
    config = ComponentConfig(id="py-spin", wasm_path=Path("app.wasm"), executor="component", environment={})
    with pytest.raises(MissingImportError) as failure:
        check_imports(component, engine, config, partial)
    imports = list(component.type.imports(engine))
    missing = failure.value.missing
    assert "wasi:io/poll@0.2.0#poll" in missing
    assert set(imports) - {"wasi:io/poll@0.2.0"} <= set(missing)
    assert len(missing) == len(imports)  # 44 whole interfaces + the one missing function
    for name in missing:
        assert name in str(failure.value)
    check_imports(component, engine, config, REGISTRY)  # the real registry serves all 45


def test_two_guest_threads_serve_at_once_without_mixing_requests(js_echo: ComponentExecutor) -> None:
    results: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(20):
                data = f"thread {n} request {i} ".encode() * (100 + n)
                sink = serve(js_echo, "/echo", "POST", data)
                assert sink.body == data
            results[n] = data
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 2


def test_nothing_leaks_across_requests(py_spin: ComponentExecutor, upstream: str) -> None:
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    for _ in range(3):  # warm up lazily created things (epoch ticker, module caches)
        serve(py_spin, "/file?path=/static/hello.txt")
        serve(py_spin, f"/outbound?url={upstream}/")
    before = open_fds()
    for _ in range(20):
        assert serve(py_spin, "/file?path=/static/hello.txt").status == 200
        assert serve(py_spin, f"/outbound?url={upstream}/").status == 200
    assert open_fds() <= before
