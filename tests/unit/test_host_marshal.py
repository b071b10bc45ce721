"""runtime.host.marshal and runtime.host.adapt: the wasmtime-py patches change speed, never values.

* Every host call of real requests through real components (py-proxy, js-echo from tests/apps/build) is recorded
  at the wasmtime boundary twice, in a process with stock wasmtime-py marshalling and in one with the speed
  patches; the two recordings and the responses must be identical.
* The strided ``list<u8>`` conversion writes exactly the C array the stock element-by-element one writes.
* Every WIT shape the host uses round-trips host form -> lowered -> C -> lifted -> host form on the real types.
"""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from wasmtime import _ffi as ffi
from wasmtime.component import Component, FuncType, ResourceHost, Variant

from runtime.host import adapt, marshal
from runtime.host.values import Err, Ok

REPO = Path(__file__).resolve().parents[2]
BUILD_DIR = REPO / "tests" / "apps" / "build"
CACHE_DIR = Path("/var/cache/containerd-shim-spin-test/unit-host")


def app_wasm(name: str) -> Path:
    """The wasm of a test app, building the apps (from the cache when possible) if they are not there."""
    if not (BUILD_DIR / "index.json").exists():
        sys.path.insert(0, str(REPO / "scripts"))
        try:
            from build_http_apps import ToolchainMissing, build

            try:
                build()
            except ToolchainMissing as exc:
                pytest.skip(f"test apps not built and no toolchain: {exc}")
        finally:
            sys.path.remove(str(REPO / "scripts"))
    return BUILD_DIR / name / "app.wasm"


def load_component(name: str) -> Component:
    from runtime.engine import shared_engine
    from runtime.precompile import PrecompileCache
    from runtime.wasm_binary import WasmKind

    component, _ = PrecompileCache(CACHE_DIR, shared_engine()).load(app_wasm(name), WasmKind.COMPONENT, name=name)
    return component  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------ stock vs fast

RECORDER = r"""
import hashlib, io, json, random, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from wasmtime.component import Record, ResourceAny, ResourceHost, Variant
import runtime.host.linking as linking
from runtime.host.adapt import Tagged
from runtime.engine import shared_engine
from runtime.precompile import PrecompileCache
from runtime.wasm_binary import WasmKind
from runtime.http.contract import ComponentConfig, RequestHead, RouteInfo
from runtime.host.executor import ComponentExecutor

def norm(value):
    if isinstance(value, (bytes, bytearray)):
        return ["bytes", len(value), hashlib.sha256(value).hexdigest()[:16]]
    if isinstance(value, ResourceAny):
        return ["resource-any", value.owned]
    if isinstance(value, ResourceHost):
        return ["resource-host", value.rep, value.owned]
    if isinstance(value, Tagged):
        return ["tagged", value.tag, norm(value.payload)]
    if isinstance(value, Variant):
        return ["variant", value.tag, norm(value.payload)]
    if isinstance(value, Record):
        return ["record", {k: norm(v) for k, v in sorted(vars(value).items())}]
    if isinstance(value, (list, tuple)):
        return [type(value).__name__] + [norm(v) for v in value]
    if isinstance(value, set):
        return ["set"] + sorted(value)
    return value

calls = []
original = linking.host_callback
def recording(qualname, func_type, impl):
    callback = original(qualname, func_type, impl)
    def record(store, *args):
        entry = [qualname, [norm(a) for a in args]]
        result = callback(store, *args)
        if not qualname.endswith(("monotonic-clock@0.2.12#now", "wall-clock@0.2.12#now", "#get-random-bytes",
                                   "#get-random-u64", "#insecure-seed")):
            entry.append(norm(result))
            calls.append(entry)
        return result
    return record
linking.host_callback = recording

class Body:
    def __init__(self, data): self.data = io.BytesIO(data)
    def read(self, n): return self.data.read(n)

class Sink:
    started = False
    def __init__(self): self.parts = []
    def start(self, status, headers): self.started = True; self.parts.append(["start", status, [[k.decode(), v.decode()] for k, v in headers]])
    def write(self, data): self.parts.append(["write", len(data), hashlib.sha256(data).hexdigest()[:16]])
    def finish(self, trailers=None): self.parts.append(["finish"])

mode, wasm = sys.argv[1], sys.argv[2]
engine = shared_engine()
component, _ = PrecompileCache(Path(sys.argv[4]), engine).load(Path(wasm), WasmKind.COMPONENT, name="app")
config = ComponentConfig(id="app", wasm_path=Path(wasm), executor="component", environment={"WHO": "tester"})
executor = ComponentExecutor(config, component, engine, fast_marshalling=(mode == "fast"))
body = random.Random(7).randbytes(200_000)
responses = []
for target, data in json.loads(sys.argv[5]):
    payload = body[:data]
    head = RequestHead(method="POST" if payload else "GET", target=target,
        headers=[(b"content-type", b"application/x-test"), (b"x-echo-a", b"1")], scheme="http", authority="h:1",
        client_addr="127.0.0.1:1", component_id="app", route=RouteInfo("/...", "", "/...", target),
        full_url="http://h:1" + target, deadline=time.monotonic() + 30, content_length=len(payload) or None)
    sink = Sink()
    executor.handle(head, Body(payload), sink)
    responses.append(sink.parts)
print(json.dumps({"calls": calls, "responses": responses}))
"""

REQUESTS = {
    "py-proxy": [["/hello", 0], ["/echo", 200_000], ["/nope", 0]],
    "js-echo": [["/hello", 0], ["/echo", 200_000], ["/echo-stream", 150_000], ["/headers", 0], ["/big?bytes=70000", 0],
                ["/status/418", 0]],
}


def record(mode: str, app: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", RECORDER, mode, str(app_wasm(app)), str(REPO), str(CACHE_DIR), json.dumps(REQUESTS[app])],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("app", sorted(REQUESTS))
def test_patched_marshalling_sees_and_returns_exactly_what_stock_wasmtime_py_does(app: str) -> None:
    stock, fast = record("stock", app), record("fast", app)
    assert len(fast["calls"]) > 10
    assert fast["responses"] == stock["responses"]
    for index, (expected, got) in enumerate(zip(stock["calls"], fast["calls"])):
        assert got == expected, f"host call #{index} differs"
    assert len(fast["calls"]) == len(stock["calls"])


# ------------------------------------------------------------------------------------------------ bytes layout


def _import_func(component: Component, interface: str, name: str) -> FuncType:
    from runtime.engine import shared_engine

    engine = shared_engine()
    for import_name, extern in component.type.imports(engine).items():
        if import_name.startswith(interface + "@"):
            ty = extern.ty.exports(engine)[name].ty  # type: ignore[union-attr]
            assert isinstance(ty, FuncType)
            return ty
    raise KeyError(f"{interface}#{name}")


@pytest.fixture(scope="module")
def proxy_component() -> Component:
    return load_component("py-proxy")


def test_fast_bytes_writes_the_same_c_array_as_one_u8_value_per_element(proxy_component: Component) -> None:
    marshal.install()
    (_, list_u8), = _import_func(proxy_component, "wasi:io/streams", "[method]output-stream.write").params[1:]
    data = bytes(range(256)) * 3 + b"\x00\xff"
    raw = ffi.wasmtime_component_val_t()
    store = wasmtime.Store(wasmtime.Engine())
    list_u8.convert_to_c(store, data, ctypes.pointer(raw))
    try:
        assert raw.kind == ffi.WASMTIME_COMPONENT_LIST.value and raw.of.list.size == len(data)
        elements = [raw.of.list.data[i] for i in range(len(data))]
        assert all(e.kind == ffi.WASMTIME_COMPONENT_U8.value for e in elements)
        assert bytes(e.of.u8 for e in elements) == data
        assert list_u8.convert_from_c(raw) == data  # also frees the list
    except BaseException:
        ffi.wasmtime_component_val_delete(ctypes.byref(raw))
        raise


def test_fast_bytes_reads_a_list_built_the_stock_way(proxy_component: Component) -> None:
    marshal.install()
    (_, list_u8), = _import_func(proxy_component, "wasi:io/streams", "[method]output-stream.write").params[1:]
    data = b"stock built \x00\x01\xfe"
    raw = ffi.wasmtime_component_val_t()
    vallist = ffi.wasmtime_component_vallist_t()
    ffi.wasmtime_component_vallist_new_uninit(vallist, len(data))
    for i, byte in enumerate(data):
        vallist.data[i].kind = ffi.WASMTIME_COMPONENT_U8
        vallist.data[i].of.u8 = byte
    raw.kind = ffi.WASMTIME_COMPONENT_LIST
    raw.of.list = vallist
    assert list_u8.convert_from_c(raw) == data
    empty = ffi.wasmtime_component_val_t()
    list_u8.convert_to_c(wasmtime.Store(wasmtime.Engine()), b"", ctypes.pointer(empty))
    assert list_u8.convert_from_c(empty) == b""


def test_patches_refuse_another_wasmtime_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(marshal, "wasmtime_version", lambda: "51.0.0")
    monkeypatch.setattr(marshal, "_installed", set())
    with pytest.raises(marshal.UnsupportedWasmtimeVersion, match="51.0.0"):
        marshal.install()


def test_the_installed_wasmtime_is_the_pinned_one() -> None:
    assert marshal.wasmtime_version() == marshal.PINNED_VERSION


# ------------------------------------------------------------------------------------------------ adapters


def roundtrip(ty: Any, value: Any) -> Any:
    """host form -> what wasmtime-py gets -> C value -> what wasmtime-py gives back -> host form."""
    store = wasmtime.Store(wasmtime.Engine())
    lower, lift = adapt.lowerer(ty), adapt.lifter(ty)
    raw = ffi.wasmtime_component_val_t()
    ty.convert_to_c(store, lower(value) if lower else value, ctypes.pointer(raw))
    back = ty.convert_from_c(raw)
    return lift(store, back) if lift else back


def test_error_codes_and_header_errors_round_trip_through_their_real_types(proxy_component: Component) -> None:
    marshal.install()
    handle = _import_func(proxy_component, "wasi:http/outgoing-handler", "handle")
    result_type = handle.result  # result<own<future-incoming-response>, error-code>
    error_code = result_type.err  # type: ignore[union-attr]
    for value in (
        Variant("HTTP-request-denied"),
        Variant("DNS-error", {"rcode": "SERVFAIL", "info-code": 2}),
        Variant("DNS-error", {"rcode": None, "info-code": None}),
        Variant("HTTP-request-body-size", 12),
        Variant("HTTP-request-body-size", None),
        Variant("HTTP-request-header-size", {"field-name": "x", "field-size": None}),
        Variant("internal-error", "boom"),
    ):
        assert roundtrip(error_code, value) == value
        assert roundtrip(result_type, Err(value)) == Err(value)
    set_header = _import_func(proxy_component, "wasi:http/types", "[method]fields.set")
    for value in (Ok(None), Err(Variant("immutable")), Err(Variant("invalid-syntax"))):
        assert roundtrip(set_header.result, value) == value


def test_options_and_results_of_resources_round_trip(proxy_component: Component) -> None:
    marshal.install()
    future_get = _import_func(proxy_component, "wasi:http/types", "[method]future-trailers.get")
    # option<result<result<option<own<trailers>>, error-code>>>: no resource in these values
    for value in (None, Err(None), Ok(Ok(None)), Ok(Err(Variant("HTTP-protocol-error")))):
        assert roundtrip(future_get.result, value) == value
    set_param = _import_func(proxy_component, "wasi:http/types", "[static]response-outparam.set").params[1][1]
    assert roundtrip(set_param, Err(Variant("connection-refused"))) == Err(Variant("connection-refused"))
    host_type = ResourceHost.own(1, 1).type  # any host type id: to_any/to_host need no linker definition
    assert roundtrip(set_param, Ok(ResourceHost.own(17, host_type))) == Ok(17)
