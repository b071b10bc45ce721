"""The Spin 1 executor (wit-bindgen 0.2 ``handle-http-request``) against spin1-echo.wasm and small inline modules,
driven in-process through ``handle``; the doubles and the ticking engine come from test_executor_wagi."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import wasmtime

from runtime.errors import MissingImportError, WasmLoadError
from runtime.executors import is_spin1_module, load_spin1
from runtime.executors.spin1 import Spin1Executor
from runtime.http.contract import ComponentConfig, GuestFailure, RequestHead
from tests.unit.test_executor_wagi import MemoryBody, RecordingSink, engine, guests, make_head, module_of

__all__ = ["engine", "guests"]  # fixtures, imported for pytest

ECHO = "spin1-echo.wasm"


def spin1_config(path: Path, **overrides: object) -> ComponentConfig:
    values: dict[str, object] = {"id": "api", "wasm_path": path, "executor": "spin1", "environment": {}}
    values.update(overrides)
    return ComponentConfig(**values)  # type: ignore[arg-type]


def spin1(engine: wasmtime.Engine, guests: Path, name: str = ECHO, **overrides: object) -> Spin1Executor:
    path = guests / name
    return load_spin1(spin1_config(path, **overrides), module_of(engine, path), engine)  # type: ignore[return-value]


def inline(engine: wasmtime.Engine, source: str, **overrides: object) -> Spin1Executor:
    return load_spin1(spin1_config(Path("inline.wasm"), **overrides), module_of(engine, source), engine)  # type: ignore[return-value]


def serve(executor: Spin1Executor, head: RequestHead | None = None, body: bytes = b"") -> RecordingSink:
    sink = RecordingSink()
    executor.handle(head or make_head(), MemoryBody(body), sink)
    assert sink.finished
    return sink


def failure(executor: Spin1Executor, head: RequestHead | None = None, body: bytes = b"") -> GuestFailure:
    sink = RecordingSink()
    with pytest.raises(GuestFailure) as caught:
        executor.handle(head or make_head(), MemoryBody(body), sink)
    assert not sink.started
    return caught.value


# ---------------------------------------------------------------------------------------------------- requests


def test_is_spin1_module(engine, guests):
    assert is_spin1_module(module_of(engine, guests / ECHO))
    assert not is_spin1_module(module_of(engine, guests / "wagi-echo.wasm"))


def test_echo_gets_method_uri_headers_and_body(engine, guests):
    head = make_head("POST", "/api/echo?x=1", headers=[(b"host", b"localhost:3000"), (b"x-trace", b"abc"),
                                                       (b"spin-path-info", b"/echo")])
    sink = serve(spin1(engine, guests), head, b"hello spin 1")
    assert sink.status == 200
    assert sink.headers == [
        (b"content-type", b"text/plain"),
        (b"x-method", b"POST"),
        (b"x-uri", b"/api/echo?x=1"),
        (b"x-trace", b"abc"),
        (b"content-length", b"12"),
    ]
    assert sink.body == b"hello spin 1"


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
def test_each_method_maps_to_its_enum_case(engine, guests, method):
    assert serve(spin1(engine, guests), make_head(method)).header(b"x-method") == method.encode()


def test_other_methods_are_405_without_running_the_guest(engine, guests):
    sink = RecordingSink()
    spin1(engine, guests).handle(make_head("TRACE"), MemoryBody(forbid_reads=True), sink)
    assert (sink.status, sink.headers, bytes(sink.body)) == (405, [(b"content-length", b"0")], b"")


def test_empty_body_is_some_empty(engine, guests):
    sink = serve(spin1(engine, guests), make_head("GET"))
    assert (sink.header(b"content-length"), bytes(sink.body)) == (b"0", b"")


def test_ten_mib_body_round_trip(engine, guests):
    payload = bytes(range(256)) * (40 * 1024)  # 10 MiB
    sink = serve(spin1(engine, guests), make_head("PUT", content_length=len(payload)), payload)
    assert sink.header(b"content-length") == str(len(payload)).encode()
    assert sink.body == payload


def test_body_over_the_cap_is_413(engine, guests):
    path = guests / ECHO
    executor = Spin1Executor(spin1_config(path), module_of(engine, path), engine, max_body_bytes=100)
    assert failure(executor, make_head("POST"), b"z" * 101).status == 413
    assert serve(executor, make_head("POST"), b"z" * 100).body == b"z" * 100


def test_status_from_the_guest(engine, guests):
    assert serve(spin1(engine, guests), make_head(target="/teapot")).status == 418


def test_status_out_of_range_is_a_500(engine, guests):
    problem = failure(spin1(engine, guests), make_head(target="/bad-status"))
    assert (problem.status, problem.log_line) == (500, "spin: api: error: malformed HTTP status code 1000")


def test_trap_is_a_500_and_guest_stderr_reaches_fd2(engine, guests, capfd):
    problem = failure(spin1(engine, guests), make_head(target="/trap"))
    assert problem.status == 500
    assert problem.log_line.startswith("spin: api: trap: wasm `unreachable` instruction executed")
    assert "about to trap" in capfd.readouterr().err


def test_deadline_is_504_in_bounded_time(engine, guests):
    started = time.monotonic()
    problem = failure(spin1(engine, guests), make_head(target="/loop", timeout=0.2))
    assert problem.status == 504
    assert time.monotonic() - started < 2.0


def test_spin_config_returns_its_error_case(engine, guests):
    sink = serve(spin1(engine, guests), make_head(target="/config"))
    assert sink.status == 200
    assert sink.header(b"x-config-error-tag") == b"0"  # error::provider
    assert b"'message'" in (sink.header(b"x-config-error") or b"")


def test_outbound_http_returns_destination_not_allowed(engine, guests, capfd):
    sink = serve(spin1(engine, guests), make_head(target="/outbound"))
    assert sink.header(b"x-outbound-error") == b"1"  # http-error::destination-not-allowed
    assert "wasi-outbound-http request to https://example.com/ refused" in capfd.readouterr().err


def test_memory_limit_stops_a_guest_that_outgrows_it(engine, guests):
    executor = spin1(engine, guests, max_instance_memory=1024 * 1024)
    assert serve(executor, make_head("POST"), b"a" * 1000).status == 200
    problem = failure(executor, make_head("POST"), b"a" * (2 * 1024 * 1024))
    assert problem.status == 500  # its realloc cannot grow memory and traps


# ---------------------------------------------------------------------------------------------------- inline modules

#: A minimal Spin 1 module: bump realloc, and a handler returning a fixed 28-byte return area at 64 whose status
#: is the global $status (set to 204 by `_initialize`), headers none, body none; RET overrides the returned pointer.
MINI = """(module
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (global $status (mut i32) (i32.const 500))
  (func (export "canonical_abi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get 3)))
    (local.get $p))
  (func (export "canonical_abi_free") (param i32 i32 i32))
  INIT
  (func (export "handle-http-request") (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
    (i32.store16 (i32.const 64) (global.get $status))
    RET))"""
INIT = '(func (export "_initialize") (global.set $status (i32.const 204)))'


def mini(init: str = INIT, ret: str = "(i32.const 64)") -> str:
    return MINI.replace("INIT", init).replace("RET", ret)


def test_initialize_runs_before_the_handler(engine):
    assert serve(inline(engine, mini())).status == 204
    assert serve(inline(engine, mini(init=""))).status == 500  # the global's initial value: nothing ran it


def test_out_of_bounds_return_pointer_is_a_500(engine):
    problem = failure(inline(engine, mini(ret="(i32.const -16)")))
    assert problem.status == 500
    assert "out-of-bounds pointer" in problem.log_line


def test_not_a_spin1_module_is_a_load_error(engine, guests):
    with pytest.raises(WasmLoadError, match="exports no `handle-http-request`"):
        spin1(engine, guests, "wagi-echo.wasm")


def test_missing_realloc_is_a_load_error(engine):
    source = mini().replace('(export "canonical_abi_realloc")', "")
    with pytest.raises(WasmLoadError, match="canonical_abi_realloc"):
        inline(engine, source)


def test_wrong_handler_signature_is_a_load_error(engine):
    source = mini().replace("(param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)",
                            "(param i32) (result i32)").replace("RET", "")
    with pytest.raises(WasmLoadError, match="not Spin 1's"):
        inline(engine, source)


def test_missing_memory_export_is_a_load_error(engine):
    with pytest.raises(WasmLoadError, match="export its linear memory"):
        inline(engine, mini().replace('(memory (export "memory") 1)', "(memory 1)"))


def test_other_spin1_host_apis_are_missing_import_errors(engine):
    imports = """(import "outbound-redis" "publish" (func (param i32 i32 i32 i32 i32 i32 i32)))
      (import "spin-config" "get-config" (func (param i32 i32)))
      (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))"""
    source = mini().replace("(module", "(module " + imports, 1)
    with pytest.raises(MissingImportError) as caught:
        inline(engine, source)
    assert caught.value.missing[0] == "outbound-redis::publish"
    assert caught.value.missing[1].startswith("spin-config::get-config (signature")
    assert len(caught.value.missing) == 2
    assert "rebuild with a Spin 2+ SDK" in str(caught.value)


def test_memory_minimum_over_the_instance_limit_is_a_load_error(engine):
    with pytest.raises(WasmLoadError, match="SPIN_MAX_INSTANCE_MEMORY"):
        inline(engine, mini().replace('(memory (export "memory") 1)', '(memory (export "memory") 32)'),
               max_instance_memory=1024 * 1024)
