"""The WAGI executor against real WAT-built modules (scripts/build_guests.py), driven in-process through
``handle`` with an in-memory request body and response sink; the executor's own epoch ticker, as in a worker.

Also home of the small doubles the Spin 1 executor tests share (MemoryBody, RecordingSink, make_head, engine).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import wasmtime

from runtime.engine import new_engine
from runtime.errors import MissingImportError, WasmLoadError
from runtime.executors import load_wagi
from runtime.executors.wagi import WagiExecutor
from runtime.files import Preopen
from runtime.http.contract import ComponentConfig, GuestFailure, Headers, RequestHead, RouteInfo
from tests.unit.guest_fixtures import built_guests

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------------- doubles


class MemoryBody:
    """A RequestBody over bytes, handed out in reads of at most ``max_bytes``; counts the reads."""

    def __init__(self, data: bytes = b"", *, forbid_reads: bool = False) -> None:
        self._data = memoryview(data)
        self.reads = 0
        self.forbid_reads = forbid_reads

    def read(self, max_bytes: int) -> bytes:
        assert not self.forbid_reads, "the executor must not read this body"
        assert max_bytes > 0
        self.reads += 1
        chunk, self._data = bytes(self._data[:max_bytes]), self._data[max_bytes:]
        return chunk


class RecordingSink:
    def __init__(self) -> None:
        self.started = False
        self.status = 0
        self.headers: Headers = []
        self.body = bytearray()
        self.finished = False

    def start(self, status: int, headers: Headers) -> None:
        assert not self.started
        self.started, self.status, self.headers = True, status, list(headers)

    def write(self, data: bytes) -> None:
        assert self.started and not self.finished
        self.body += data

    def finish(self, trailers: Headers | None = None) -> None:
        assert self.started
        self.finished = True

    def header(self, name: bytes) -> bytes | None:
        values = [value for key, value in self.headers if key == name]
        assert len(values) <= 1, f"{name!r} appears {len(values)} times"
        return values[0] if values else None


def make_head(method: str = "GET", target: str = "/api/items?a=1&b=two+words", *,
              headers: Headers | None = None, timeout: float = 10.0, content_length: int | None = None,
              component_id: str = "web") -> RequestHead:
    route = RouteInfo(raw_route="/api/...", component_route="/api", matched_route="/api/...",
                      path_info=target.partition("?")[0][len("/api"):])
    return RequestHead(method=method, target=target, headers=list(headers or [(b"host", b"localhost:3000")]),
                       scheme="http", authority="localhost:3000", client_addr="127.0.0.1:40000",
                       component_id=component_id, route=route, full_url=f"http://localhost:3000{target}",
                       deadline=time.monotonic() + timeout, content_length=content_length)


@pytest.fixture(scope="module")
def guests() -> Path:
    return built_guests()


@pytest.fixture(scope="module")
def engine() -> wasmtime.Engine:
    """An Engine with the runtime's settings. No test-side epoch ticker: the executor must keep its own awake while
    a guest runs (a worker has nothing else bumping the epoch), which the deadline tests below prove."""
    return new_engine()


def module_of(engine: wasmtime.Engine, source: Path | str) -> wasmtime.Module:
    if isinstance(source, Path):
        return wasmtime.Module.from_file(engine, str(source))
    return wasmtime.Module(engine, wasmtime.wat2wasm(source))


# ---------------------------------------------------------------------------------------------------- helpers


def wagi_config(path: Path, **overrides: object) -> ComponentConfig:
    values: dict[str, object] = {"id": "web", "wasm_path": path, "executor": "wagi",
                                 "environment": {"GREETING": "hello"}}
    values.update(overrides)
    return ComponentConfig(**values)  # type: ignore[arg-type]


def wagi(engine: wasmtime.Engine, guests: Path, name: str, **overrides: object) -> WagiExecutor:
    path = guests / name
    return load_wagi(wagi_config(path, **overrides), module_of(engine, path), engine)  # type: ignore[return-value]


def serve(executor: WagiExecutor, head: RequestHead | None = None, body: bytes = b"") -> RecordingSink:
    sink = RecordingSink()
    executor.handle(head or make_head(), MemoryBody(body), sink)
    assert sink.finished
    return sink


def failure(executor: WagiExecutor, head: RequestHead | None = None, body: bytes = b"") -> GuestFailure:
    sink = RecordingSink()
    with pytest.raises(GuestFailure) as caught:
        executor.handle(head or make_head(), MemoryBody(body), sink)
    assert not sink.started
    return caught.value


def echo_lines(sink: RecordingSink) -> tuple[list[str], dict[str, str], bytes]:
    """wagi-echo's output: (argv, env, body)."""
    text, _, body = bytes(sink.body).partition(b"body: ")
    argv, env = [], {}
    for line in text.decode().splitlines():
        kind, _, value = line.partition(": ")
        if kind == "arg":
            argv.append(value)
        elif kind == "env":
            name, _, env_value = value.partition("=")
            env[name] = env_value
    return argv, env, body


# ---------------------------------------------------------------------------------------------------- responses


def test_echo_sees_cgi_environment_argv_and_body(engine, guests):
    head = make_head("POST", "/api/items/7?q=a%20b&flag",
                     headers=[(b"host", b"localhost:3000"), (b"content-type", b"text/plain"), (b"x-trace", b"t1")])
    sink = serve(wagi(engine, guests, "wagi-echo.wasm"), head, b"the body")
    assert sink.status == 200
    assert sink.header(b"content-type") == b"text/plain"
    assert sink.header(b"content-length") == str(len(sink.body)).encode()
    argv, env, body = echo_lines(sink)
    assert argv == ["/api/items/7", "q=a b", "flag"]
    assert body == b"the body"
    assert env["REQUEST_METHOD"] == "POST"
    assert env["PATH_INFO"] == "/items/7"
    assert env["QUERY_STRING"] == "q=a%20b&flag"
    assert env["X_MATCHED_ROUTE"] == "/api/..."
    assert env["SCRIPT_NAME"] == "/api"
    assert env["CONTENT_LENGTH"] == "8"
    assert env["CONTENT_TYPE"] == "text/plain"
    assert env["HTTP_X_TRACE"] == "t1"
    assert env["GATEWAY_INTERFACE"] == "CGI/1.1"
    assert env["GREETING"] == "hello"  # the component's environment


def test_argv_template_from_config(engine, guests):
    executor = wagi(engine, guests, "wagi-echo.wasm", wagi_argv="echo --path ${SCRIPT_NAME} ${ARGS}")
    argv, _, _ = echo_lines(serve(executor, make_head(target="/api/x?one&two")))
    assert argv == ["echo", "--path", "/api/x", "one", "two"]


def test_status_and_custom_headers(engine, guests):
    sink = serve(wagi(engine, guests, "wagi-status.wasm"))
    assert sink.status == 201
    assert sink.headers == [(b"x-custom", b"wagi"), (b"content-type", b"text/plain"), (b"content-length", b"8")]
    assert sink.body == b"created\n"


def test_large_body_goes_through_stdin_unchanged(engine, guests):
    payload = bytes(range(256)) * (4 * 1024 * 4)  # 4 MiB
    _, env, body = echo_lines(serve(wagi(engine, guests, "wagi-echo.wasm"), make_head("PUT"), payload))
    assert env["CONTENT_LENGTH"] == str(len(payload))
    assert body == payload


def test_stdout_of_one_request_never_leaks_into_the_next(engine, guests):
    executor = wagi(engine, guests, "wagi-echo.wasm")
    serve(executor, make_head("POST"), b"x" * 100_000)
    _, _, body = echo_lines(serve(executor, make_head("POST"), b"short"))
    assert body == b"short"


def test_concurrent_requests_on_threads_get_their_own_output(engine, guests):
    executor = wagi(engine, guests, "wagi-echo.wasm")
    errors: list[str] = []

    def client(n: int) -> None:
        for i in range(25):
            payload = f"thread {n} request {i}".encode() * 50
            _, _, body = echo_lines(serve(executor, make_head("POST"), payload))
            if body != payload:
                errors.append(f"thread {n} request {i}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_preopens_are_readable_and_read_only(engine, guests, tmp_path, capfd):
    (tmp_path / "page.cgi").write_text("Content-Type: text/html\n\n<p>from a file</p>\n")
    preopens = (Preopen(tmp_path, "/data"),)
    reader = wagi(engine, guests, "readfile.wasm", preopens=preopens, wagi_argv="readfile /data/page.cgi")
    sink = serve(reader)
    assert (sink.status, sink.header(b"content-type"), bytes(sink.body)) == (200, b"text/html", b"<p>from a file</p>\n")

    writer = wagi(engine, guests, "readfile.wasm", preopens=preopens, wagi_argv="readfile /data/page.cgi write")
    capfd.readouterr()
    problem = failure(writer)
    assert problem.status == 500
    assert problem.log_line == "spin: web: guest exited with code 1"
    assert "readfile: cannot write /data/page.cgi" in capfd.readouterr().err  # the module's stderr is fd 2
    assert (tmp_path / "page.cgi").read_text().startswith("Content-Type")


# ---------------------------------------------------------------------------------------------------- failures


def test_module_printing_no_headers_is_a_500_with_a_clear_log_line(engine, guests):
    problem = failure(wagi(engine, guests, "wagi-noheaders.wasm"))
    assert problem.status == 500
    assert problem.log_line.startswith("spin: web: WAGI output is not a CGI response: its output has no empty line")
    assert "Content-Type" in problem.log_line


def test_exit_zero_is_success_and_nonzero_is_a_500(engine, guests, capfd):
    # hello.wasm prints a greeting (no CGI headers) and exits with the code after "exit".
    ok_exit = failure(wagi(engine, guests, "hello.wasm", wagi_argv="hello exit 0"))
    assert "not a CGI response" in ok_exit.log_line  # proc_exit(0) went on to parse the output
    bad_exit = failure(wagi(engine, guests, "hello.wasm", wagi_argv="hello exit 3"))
    assert (bad_exit.status, bad_exit.log_line) == (500, "spin: web: guest exited with code 3")
    assert "hello on stderr" in capfd.readouterr().err


def test_trap_is_a_500_with_the_reason(engine, guests):
    problem = failure(wagi(engine, guests, "trap.wasm"))
    assert problem.status == 500
    assert problem.log_line.startswith("spin: web: trap: wasm `unreachable` instruction executed")


def test_deadline_stops_a_spinning_module_with_504(engine, guests):
    started = time.monotonic()
    problem = failure(wagi(engine, guests, "loop.wasm"), make_head(timeout=0.2))
    elapsed = time.monotonic() - started
    assert problem.status == 504
    assert "deadline" in problem.log_line
    assert 0.15 < elapsed < 2.0


def test_deadline_already_passed_is_504_without_running(engine, guests):
    problem = failure(wagi(engine, guests, "wagi-echo.wasm"), make_head(timeout=-1))
    assert problem.status == 504


def test_body_over_the_cap_is_413_before_or_while_reading(engine, guests):
    executor = WagiExecutor(wagi_config(guests / "wagi-echo.wasm"), module_of(engine, guests / "wagi-echo.wasm"),
                            engine, max_body_bytes=1000)
    declared = RecordingSink()
    with pytest.raises(GuestFailure) as caught:
        executor.handle(make_head("POST", content_length=1001), MemoryBody(forbid_reads=True), declared)
    assert caught.value.status == 413
    assert failure(executor, make_head("POST"), b"x" * 1001).status == 413  # chunked: found while reading
    assert echo_lines(serve(executor, make_head("POST"), b"x" * 1000))[2] == b"x" * 1000


def test_response_over_the_cap_is_a_500(engine, guests):
    executor = WagiExecutor(wagi_config(guests / "wagi-echo.wasm"), module_of(engine, guests / "wagi-echo.wasm"),
                            engine, max_response_bytes=4096)
    problem = failure(executor, make_head("POST"), b"y" * 10_000)
    assert problem.status == 500
    assert "larger than 4096 bytes" in problem.log_line


def test_memory_limit_applies_per_request(engine, guests):
    executor = wagi(engine, guests, "wagi-echo.wasm", max_instance_memory=4 * 65536)  # exactly its minimum
    assert serve(executor).status == 200


# ---------------------------------------------------------------------------------------------------- load checks


def test_missing_entrypoint_is_a_load_error(engine, guests):
    with pytest.raises(WasmLoadError, match=r"exports no function `main`, the WAGI entrypoint.*_start"):
        wagi(engine, guests, "wagi-echo.wasm", wagi_entrypoint="main")


def test_custom_entrypoint(engine, tmp_path):
    source = """(module
      (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (data (i32.const 100) "Content-Type: text/plain\\n\\nfrom run\\n")
      (func (export "run")
        (i32.store (i32.const 0) (i32.const 100))
        (i32.store (i32.const 4) (i32.const 35))
        (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"""
    config = wagi_config(tmp_path / "run.wasm", wagi_entrypoint="run")
    sink = serve(load_wagi(config, module_of(engine, source), engine))  # type: ignore[arg-type]
    assert (sink.status, bytes(sink.body)) == (200, b"from run\n")


def test_entrypoint_with_parameters_is_a_load_error(engine, tmp_path):
    source = '(module (func (export "_start") (param i32)))'
    with pytest.raises(WasmLoadError, match="must take and return nothing"):
        load_wagi(wagi_config(tmp_path / "x.wasm"), module_of(engine, source), engine)


def test_non_wasi_imports_are_missing_import_errors(engine, guests):
    with pytest.raises(MissingImportError) as caught:
        wagi(engine, guests, "missing-import-p1.wasm")
    assert caught.value.missing == ("spin::frobnicate", "env::not_provided")
    assert "may import only wasi_snapshot_preview1" in str(caught.value)


def test_unknown_wasi_function_is_a_missing_import_error(engine, tmp_path):
    source = '(module (import "wasi_snapshot_preview1" "no_such_call" (func)) (func (export "_start")))'
    with pytest.raises(MissingImportError) as caught:
        load_wagi(wagi_config(tmp_path / "x.wasm"), module_of(engine, source), engine)
    assert caught.value.missing == ("wasi_snapshot_preview1::no_such_call",)


def test_wasi_function_with_the_wrong_signature_is_a_missing_import_error(engine, tmp_path):
    source = '(module (import "wasi_snapshot_preview1" "proc_exit" (func (param i64))) (func (export "_start")))'
    with pytest.raises(MissingImportError, match="cannot link"):
        load_wagi(wagi_config(tmp_path / "x.wasm"), module_of(engine, source), engine)


def test_memory_minimum_over_the_instance_limit_is_a_load_error(engine, guests):
    with pytest.raises(WasmLoadError, match="SPIN_MAX_INSTANCE_MEMORY"):
        wagi(engine, guests, "wagi-echo.wasm", max_instance_memory=65536)
