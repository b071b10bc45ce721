"""The Spin 1 executor: core modules exporting ``handle-http-request`` with wit-bindgen 0.2's canonical ABI.

Spin 2+ still runs these (it wraps them into components with spin-componentize); Spin's executor for them
(crates/trigger-http/src/spin.rs) fixes the semantics followed here: methods outside the seven of the WIT enum
get 405 without running the guest; ``uri`` is the path and query; the headers are the request's plus Spin's
``spin-*`` headers (the server added them to ``RequestHead.headers``); ``params`` is always empty; the body is
always ``some`` (possibly empty); a status outside 100..599 is a 500.

The ABI (spin-http.wit, http-types.wit; wit-bindgen 0.2, all i32)::

    handle-http-request(method, uri_ptr, uri_len, headers_ptr, headers_len, params_ptr, params_len,
                        body_is_some, body_ptr, body_len) -> ret_ptr
    canonical_abi_realloc(old_ptr, old_len, align, new_len) -> ptr     (the host allocates arguments with it)

``method`` is the enum index (get, post, put, delete, patch, head, options). A ``list<tuple<string,string>>`` is
an array of 16-byte elements (key_ptr, key_len, value_ptr, value_len), align 4; every string and list is its own
allocation because the guest takes ownership of each one. The 28-byte return area: status u16 @0; headers
option tag u8 @4, ptr @8, len @12; body option tag u8 @16, ptr @20, len @24. Nothing is freed: the instance
is dropped after the request.

Imports: WASI p1 (wasmtime's; env = the component's ``environment``, stdout/stderr = the container log,
read-only preopens), and two Spin 1 host APIs linked as functions that *return their error case* so the guest
can handle it rather than trap: ``spin-config::get-config`` -> ``err(provider(msg))`` (what Spin returns for an
undefined variable) and ``wasi-outbound-http::request`` -> ``err(destination-not-allowed)``. Any other import
(outbound-redis, outbound-pg, key-value, ...) fails the load with MissingImportError.
"""

from __future__ import annotations

import ctypes
import struct
from typing import TYPE_CHECKING, Any

from runtime.errors import MissingImportError, WasmLoadError
from runtime.executors import (
    MAX_REQUEST_BODY_BYTES,
    RequestClock,
    check_memory_minimum,
    content_length_header,
    guest_failure,
    read_request_body,
    request_store,
)
from runtime.exits import error_reason, write_stderr_line
from runtime.http.contract import ComponentConfig, GuestFailure, Headers, RequestBody, RequestHead, ResponseSink

if TYPE_CHECKING:
    import wasmtime

HANDLE_EXPORT = "handle-http-request"
REALLOC_EXPORT = "canonical_abi_realloc"
MEMORY_EXPORT = "memory"
WASI_P1 = "wasi_snapshot_preview1"
CONFIG_IMPORT = ("spin-config", "get-config")
OUTBOUND_HTTP_IMPORT = ("wasi-outbound-http", "request")

#: http-types.wit ``enum method``, in index order.
METHODS: dict[str, int] = {m: i for i, m in enumerate(("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"))}
#: spin-config.wit ``variant error``: provider(string) is case 0.
_CONFIG_ERROR_PROVIDER = 0
#: http-types.wit ``enum http-error``: destination-not-allowed is case 1.
_HTTP_ERROR_DESTINATION_NOT_ALLOWED = 1
_RESPONSE = struct.Struct("<H2xB3xIIB3xII")  # the 28-byte return area
_I32_KIND = 0  # WASMTIME_I32
_FRAMING_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"connection"})


#: export / import name -> (number of i32 params, number of i32 results)
_EXPORT_SIGNATURES = {HANDLE_EXPORT: (10, 1), REALLOC_EXPORT: (4, 1)}
_HOST_SIGNATURES = {CONFIG_IMPORT: (3, 0), OUTBOUND_HTTP_IMPORT: (11, 0)}


def _shape(ty: Any) -> tuple[int, int] | None:
    """(params, results) when ``ty`` is a function of i32s only, else None."""
    import wasmtime

    if not isinstance(ty, wasmtime.FuncType):
        return None
    kinds = {str(v) for v in [*ty.params, *ty.results]}
    if kinds - {"i32"}:
        return None
    return len(ty.params), len(ty.results)


def is_spin1_module(module: wasmtime.Module) -> bool:
    """True when the module exports Spin 1's HTTP entry point (how Spin 2+ recognises a Spin 1 HTTP module)."""
    import wasmtime

    return any(e.name == HANDLE_EXPORT and isinstance(e.type, wasmtime.FuncType) for e in module.exports)


def call_i32(store: Any, func: wasmtime.Func, args: tuple[int, ...], results: int = 1) -> int:
    """Call a guest function of i32s returning one i32 (``results=0``: nothing, returns 0), through the C API.

    ``Func.__call__`` re-reads the function's type and boxes every argument on each call (~25 us); a request
    makes one call per header string, so that was most of the executor's time. The signatures were checked at
    load, and ``wasmtime_func_call`` checks them again. Pointers are u32 in the ABI and i32 in the C values.
    """
    from wasmtime import WasmtimeError
    from wasmtime import _ffi as ffi
    from wasmtime._func import enter_wasm

    count = len(args)
    params = (ffi.wasmtime_val_t * count)()
    for index, value in enumerate(args):
        params[index].kind = _I32_KIND
        params[index].of.i32 = value - (1 << 32) if value >= 1 << 31 else value
    values = (ffi.wasmtime_val_t * 1)()
    with enter_wasm(store) as trap:
        error = ffi.wasmtime_func_call(store._context(), ctypes.byref(func._func), params, count, values, results,
                                       trap)
        if error:
            raise WasmtimeError._from_ptr(error)
    return values[0].of.i32 & 0xFFFFFFFF if results else 0  # type: ignore[no-any-return]


class _Memory:
    """Bounds-checked access to the guest's linear memory (re-read its base: any guest call may grow it)."""

    __slots__ = ("store", "memory")

    def __init__(self, store: Any, memory: wasmtime.Memory) -> None:
        self.store = store
        self.memory = memory

    def _address(self, ptr: int, length: int) -> int:
        if ptr < 0 or length < 0 or ptr + length > self.memory.data_len(self.store):
            raise _BadGuestData(f"the guest returned an out-of-bounds pointer ({ptr}+{length})")
        return ctypes.addressof(self.memory.data_ptr(self.store).contents) + ptr

    def read(self, ptr: int, length: int) -> bytes:
        if length == 0:
            return b""
        return ctypes.string_at(self._address(ptr, length), length)

    def write(self, ptr: int, data: bytes) -> None:
        if data:
            ctypes.memmove(self._address(ptr, len(data)), data, len(data))


class _BadGuestData(Exception):
    """The guest broke the ABI (a pointer outside its memory, a failed realloc): a 500 naming what."""


class _Allocator:
    """Copies host values into the guest through its ``canonical_abi_realloc``."""

    __slots__ = ("store", "memory", "realloc")

    def __init__(self, store: Any, memory: _Memory, realloc: wasmtime.Func) -> None:
        self.store = store
        self.memory = memory
        self.realloc = realloc

    def put(self, data: bytes, align: int = 1) -> int:
        if not data:
            return align  # an empty list needs no allocation; the guest never reads or frees it
        ptr = call_i32(self.store, self.realloc, (0, 0, align, len(data)))
        if not ptr:
            raise _BadGuestData(f"canonical_abi_realloc returned 0 for {len(data)} bytes (guest out of memory)")
        self.memory.write(ptr, data)
        return ptr

    def put_pairs(self, pairs: list[tuple[bytes, bytes]]) -> tuple[int, int]:
        if not pairs:
            return 4, 0
        layout = bytearray()
        for key, value in pairs:
            layout += struct.pack("<IIII", self.put(key), len(key), self.put(value), len(value))
        return self.put(bytes(layout), 4), len(pairs)


class Spin1Executor:
    """One Spin 1 HTTP component; built at load (all checks), ``handle`` from any number of guest threads."""

    def __init__(self, config: ComponentConfig, module: wasmtime.Module, engine: wasmtime.Engine, *,
                 max_body_bytes: int = MAX_REQUEST_BODY_BYTES) -> None:
        self.component_id = config.id
        self.config = config
        self.engine = engine
        self.max_body_bytes = max_body_bytes
        self._what = f"component {config.id!r} ({config.wasm_path.name}, Spin 1 module)"
        self._has_initialize = False
        self._pre = self._prepare(module)
        self._clock = RequestClock()

    # ------------------------------------------------------------------------------------------ load

    def _prepare(self, module: wasmtime.Module) -> wasmtime.InstancePre:
        import wasmtime

        what = self._what
        exports = {export.name: export.type for export in module.exports}
        for name, (params, results) in _EXPORT_SIGNATURES.items():
            if name not in exports:
                raise WasmLoadError(f"{what}: not a Spin 1 HTTP module: it exports no `{name}` function "
                                    "(wit-bindgen 0.2 canonical ABI); rebuild it with a current Spin SDK")
            if _shape(exports[name]) != (params, results):
                raise WasmLoadError(f"{what}: `{name}` has the signature {exports[name]}, not Spin 1's "
                                    f"({params} i32 parameter(s) -> {results} i32)")
        if not isinstance(exports.get(MEMORY_EXPORT), wasmtime.MemoryType):
            raise WasmLoadError(f"{what}: a Spin 1 module must export its linear memory as `memory`")
        initialize = exports.get("_initialize")
        self._has_initialize = _shape(initialize) == (0, 0)

        linker = wasmtime.Linker(self.engine)
        linker.define_wasi()
        probe = wasmtime.Store(self.engine)
        probe.set_wasi(wasmtime.WasiConfig())
        missing: list[str] = []
        for item in module.imports:
            key = (item.module, item.name or "")
            name = f"{item.module}::{item.name}"
            if key in _HOST_SIGNATURES:
                if _shape(item.type) != _HOST_SIGNATURES[key]:
                    params, _ = _HOST_SIGNATURES[key]
                    missing.append(f"{name} (signature {item.type}, expected {params} i32 parameters)")
                continue
            if item.module != WASI_P1:
                missing.append(name)
                continue
            try:
                linker.get(probe, item.module, item.name or "")
            except wasmtime.WasmtimeError:
                missing.append(name)
        if missing:
            raise MissingImportError(
                f"{what}: imports {len(missing)} function(s) this host does not provide: {', '.join(missing)} "
                "(Spin 1 modules may import wasi_snapshot_preview1, spin-config and wasi-outbound-http; rebuild "
                "with a Spin 2+ SDK for the other Spin APIs)",
                tuple(missing))
        check_memory_minimum(self.config, module, what)

        i32 = wasmtime.ValType.i32()
        linker.define_func(*CONFIG_IMPORT, wasmtime.FuncType([i32] * 3, []), self._get_config, access_caller=True)
        linker.define_func(*OUTBOUND_HTTP_IMPORT, wasmtime.FuncType([i32] * 11, []), self._outbound_request,
                           access_caller=True)
        try:
            return linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as exc:
            raise MissingImportError(f"{what}: cannot link: {error_reason(str(exc))}") from None

    # ------------------------------------------------------------------------------------------ host imports

    def _guest(self, caller: wasmtime.Caller) -> tuple[_Memory, _Allocator]:
        memory = caller.get(MEMORY_EXPORT)
        realloc = caller.get(REALLOC_EXPORT)
        memory_view = _Memory(caller, memory)  # type: ignore[arg-type]
        return memory_view, _Allocator(caller, memory_view, realloc)  # type: ignore[arg-type]

    def _get_config(self, caller: wasmtime.Caller, key_ptr: int, key_len: int, ret_ptr: int) -> None:
        """``get-config(key) -> expected<string, error>``: always ``err(provider(...))``."""
        memory, allocator = self._guest(caller)
        key = memory.read(key_ptr, key_len).decode("utf-8", "replace")
        message = (f"variable {key!r} is not available: this runtime does not provide spin-config to Spin 1 "
                   "modules").encode()
        text_ptr = allocator.put(message)
        memory.write(ret_ptr, struct.pack("<B3xB3xII", 1, _CONFIG_ERROR_PROVIDER, text_ptr, len(message)))

    def _outbound_request(self, caller: wasmtime.Caller, *args: int) -> None:
        """``request(req) -> expected<response, http-error>``: always ``err(destination-not-allowed)``."""
        memory, _ = self._guest(caller)
        url = memory.read(args[1], args[2]).decode("utf-8", "replace")
        write_stderr_line(f"spin: {self.component_id}: wasi-outbound-http request to {url} refused: outbound "
                          "HTTP is not available to Spin 1 modules in this runtime")
        memory.write(args[10], struct.pack("<B3xB", 1, _HTTP_ERROR_DESTINATION_NOT_ALLOWED))

    # ------------------------------------------------------------------------------------------ requests

    def handle(self, head: RequestHead, body: RequestBody, sink: ResponseSink) -> None:
        import wasmtime

        method = METHODS.get(head.method)  # case-sensitive, as in hyper
        if method is None:  # Spin answers 405 without instantiating the guest
            sink.start(405, [content_length_header(0)])
            sink.finish()
            return
        request_body = read_request_body(head, body, self.max_body_bytes, self.component_id)
        store, watch = request_store(self.engine, head, self.config, self._clock)
        try:
            store.set_wasi(self._wasi())
            status, headers, response_body = self._call(store, head, method, request_body)
        except _BadGuestData as exc:
            raise GuestFailure(500, "Internal Server Error",
                               log_line=f"spin: {self.component_id}: error: {exc}") from None
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            raise guest_failure(self.config, exc, watch) from None
        finally:
            self._clock.disarm(watch)
            del store
        if not 100 <= status <= 599:
            raise GuestFailure(500, "Internal Server Error",
                               log_line=f"spin: {self.component_id}: error: malformed HTTP status code {status}")
        sink.start(status, [*headers, content_length_header(len(response_body))])
        if response_body:
            sink.write(response_body)
        sink.finish()

    def _wasi(self) -> wasmtime.WasiConfig:
        import wasmtime

        wasi = wasmtime.WasiConfig()
        wasi.env = list(self.config.environment.items())
        wasi.inherit_stdout()
        wasi.inherit_stderr()
        for preopen in self.config.preopens:
            wasi.preopen_dir(str(preopen.host_path), preopen.guest_path, fs_mutable=False)
        return wasi

    def _call(self, store: wasmtime.Store, head: RequestHead, method: int,
              request_body: bytes) -> tuple[int, Headers, bytes]:
        instance = self._pre.instantiate(store)
        exports = instance.exports(store)
        memory = _Memory(store, exports[MEMORY_EXPORT])  # type: ignore[arg-type]
        allocator = _Allocator(store, memory, exports[REALLOC_EXPORT])  # type: ignore[arg-type]
        if self._has_initialize:
            call_i32(store, exports["_initialize"], (), results=0)  # type: ignore[arg-type]

        uri = head.target.encode("utf-8")
        # Names are lower-case ASCII tokens already (the server's h11 checks them); a wit string must be UTF-8.
        request_headers = [(name, value.decode("utf-8", "replace").encode()) for name, value in head.headers]
        uri_ptr = allocator.put(uri)
        headers_ptr, headers_len = allocator.put_pairs(request_headers)
        body_ptr = allocator.put(request_body)
        ret = call_i32(store, exports[HANDLE_EXPORT],  # type: ignore[arg-type]
                       (method, uri_ptr, len(uri), headers_ptr, headers_len, 4, 0, 1, body_ptr, len(request_body)))

        status, has_headers, out_headers_ptr, out_headers_len, has_body, out_body_ptr, out_body_len = \
            _RESPONSE.unpack(memory.read(ret, _RESPONSE.size))
        headers: Headers = []
        if has_headers:
            table = memory.read(out_headers_ptr, 16 * out_headers_len)
            for key_ptr, key_len, value_ptr, value_len in struct.iter_unpack("<IIII", table):
                name = memory.read(key_ptr, key_len).lower()
                value = memory.read(value_ptr, value_len)
                if name in _FRAMING_HEADERS:
                    continue
                if not _valid_header(name, value):
                    write_stderr_line(f"spin: {self.component_id}: ignored invalid response header {name!r}")
                    continue
                headers.append((name, value))
        response_body = memory.read(out_body_ptr, out_body_len) if has_body else b""
        return status, headers, response_body


def _valid_header(name: bytes, value: bytes) -> bool:
    if not name or any(c <= 32 or c >= 127 or c in b'"(),/:;<=>?@[\\]{}' for c in name):
        return False
    return not any(c < 32 and c != 9 or c == 127 for c in value)


def load_spin1(config: ComponentConfig, module: wasmtime.Module, engine: wasmtime.Engine) -> Spin1Executor:
    """The Spin 1 executor for ``module``; raises MissingImportError / WasmLoadError for what can never run."""
    return Spin1Executor(config, module, engine)
