"""The WAGI executor: a WASI p1 command module run once per request as a CGI program.

Per request (Spin's crates/trigger-http/src/wagi.rs): the body is read fully and given as stdin bytes; the CGI
variables and the component's ``environment`` are the environment (runtime.executors.cgi); argv comes from the
``argv`` template; the entrypoint (``_start`` unless ``entrypoint`` says otherwise) runs to its end in a fresh
Store; stdout is collected and parsed as a CGI response only once the module has finished, because Spin decides
by the exit: ``proc_exit(0)`` or returning is success, any other exit or a trap is a 500 even if a response was
already printed. stderr is the process's fd 2 (the container log), preopens are read-only.

Linking is wasmtime's own WASI p1 (``Linker.define_wasi``) behind an ``InstancePre``, so per request there is no
import resolution: a Store, a WasiConfig and one instantiation (a whole request to a small C module took ~0.25 ms
at p50 on a 2-core VM).
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

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
from runtime.executors.cgi import CgiError, build_argv, build_env, parse_response
from runtime.exits import error_reason, write_stderr_line
from runtime.http.contract import ComponentConfig, GuestFailure, RequestBody, RequestHead, ResponseSink

if TYPE_CHECKING:
    import wasmtime

WASI_P1 = "wasi_snapshot_preview1"

#: The most a module may print to stdout for one response (it is held in memory until the module ends). Beyond
#: it the module is stopped (within about a tick) and the client gets a 500.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024


class _Stdout:
    """The module's stdout: a memfd of this thread, reused request after request.

    Not ``WasiConfig.stdout_custom``: wasmtime calls that callback on one of its tokio threads, so each
    ``fd_write`` hops threads and takes the GIL (measured: 3.3 ms instead of 0.2 ms per request for a module
    printing 30 lines), and it may call into Python while the interpreter is shutting down (seen: a Rust panic
    "panic in a function that cannot unwind" at exit). A file costs one write(2) per ``fd_write`` and no
    Python. wasmtime opens it by path (``/proc/self/fd/N``); a thread serves one request at a time, so one
    memfd per thread is enough. The size cap is checked from the epoch callback (about every tick) and at the end.

    Inside the shim's sandbox there is no /proc: there it is a file of the sandbox's private tmpfs
    (``stdout_dir``), named for the process and thread, removed with the thread.
    """

    __slots__ = ("fd", "pid", "path", "named")

    def __init__(self, stdout_dir: Path | None) -> None:
        self.pid = os.getpid()
        self.named = stdout_dir is not None
        if stdout_dir is None:
            self.fd = os.memfd_create("wagi-stdout", os.MFD_CLOEXEC)
            self.path = f"/proc/self/fd/{self.fd}"
        else:
            self.path = str(stdout_dir / f"wagi-stdout-{self.pid}-{threading.get_ident()}")
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)

    def __del__(self) -> None:  # the thread ended (threading.local drops its values)
        if self.pid == os.getpid():
            try:
                os.close(self.fd)
                if self.named:
                    os.unlink(self.path)
            except OSError:
                pass

    def reset(self) -> None:
        os.ftruncate(self.fd, 0)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def take(self) -> bytes:
        size = self.size()
        data = os.pread(self.fd, size, 0) if size else b""
        os.ftruncate(self.fd, 0)  # give the memory back now, not at the next request
        return data


_thread_stdout = threading.local()


def _stdout(stdout_dir: Path | None) -> _Stdout:
    """This thread's stdout file; a new one in a forked child (the file would be shared across fork)."""
    stdout: _Stdout | None = getattr(_thread_stdout, "value", None)
    if stdout is None or stdout.pid != os.getpid():
        stdout = _thread_stdout.value = _Stdout(stdout_dir)
    return stdout


def _set_stdin_bytes(config: wasmtime.WasiConfig, data: bytes) -> None:
    """wasmtime-py has no wrapper for this C call; the C side takes (moves) the byte vector it is given."""
    from wasmtime import _ffi as ffi

    vec = ffi.wasm_byte_vec_t()
    ffi.wasm_byte_vec_new(ctypes.byref(vec), len(data), ctypes.cast(ctypes.c_char_p(data), ctypes.POINTER(ffi.wasm_byte_t)))
    ffi.wasi_config_set_stdin_bytes(config.ptr(), ctypes.byref(vec))


class WagiExecutor:
    """One WAGI component; built at load (all checks), ``handle`` from any number of guest threads."""

    def __init__(self, config: ComponentConfig, module: wasmtime.Module, engine: wasmtime.Engine, *,
                 max_body_bytes: int = MAX_REQUEST_BODY_BYTES,
                 max_response_bytes: int = MAX_RESPONSE_BYTES, stdout_dir: Path | None = None) -> None:
        self.stdout_dir = stdout_dir
        self.component_id = config.id
        self.config = config
        self.engine = engine
        self.entrypoint = config.wagi_entrypoint or "_start"
        self.max_body_bytes = max_body_bytes
        self.max_response_bytes = max_response_bytes
        self._what = f"component {config.id!r} ({config.wasm_path.name}, wagi executor)"
        self._pre = self._prepare(module)
        self._clock = RequestClock()

    def _prepare(self, module: wasmtime.Module) -> wasmtime.InstancePre:
        import wasmtime

        what = self._what
        if self.stdout_dir is None and not os.path.isdir("/proc/self/fd"):
            raise WasmLoadError(f"{what}: the WAGI executor needs /proc (it hands the module's stdout to wasmtime "
                                "as /proc/self/fd/N), and /proc is not mounted in this process")
        exports = {export.name: export.type for export in module.exports}
        entry = exports.get(self.entrypoint)
        if not isinstance(entry, wasmtime.FuncType):
            functions = sorted(name for name, kind in exports.items() if isinstance(kind, wasmtime.FuncType))
            raise WasmLoadError(
                f"{what}: exports no function `{self.entrypoint}`, the WAGI entrypoint "
                f"(exported functions: {', '.join(functions) or 'none'}); build it as a WASI command "
                "(wasm32-wasip1 binary) or set `entrypoint` in its executor")
        if entry.params or entry.results:
            raise WasmLoadError(f"{what}: the WAGI entrypoint `{self.entrypoint}` must take and return nothing "
                                f"(it has {len(entry.params)} parameter(s) and {len(entry.results)} result(s))")

        linker = wasmtime.Linker(self.engine)
        linker.define_wasi()
        probe = wasmtime.Store(self.engine)
        probe.set_wasi(wasmtime.WasiConfig())
        missing: list[str] = []
        for item in module.imports:
            name = f"{item.module}::{item.name}"
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
                f"(a WAGI module may import only {WASI_P1}; Spin host APIs need a component)",
                tuple(missing))
        check_memory_minimum(self.config, module, what)
        try:
            return linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as exc:  # a WASI import with the right name and the wrong signature
            raise MissingImportError(f"{what}: cannot link: {error_reason(str(exc))}") from None

    def _wasi(self, argv: list[str], env: dict[str, str], stdin: bytes, stdout: _Stdout) -> wasmtime.WasiConfig:
        import wasmtime

        wasi = wasmtime.WasiConfig()
        wasi.argv = argv
        wasi.env = list(env.items())
        if stdin:
            _set_stdin_bytes(wasi, stdin)
        wasi.stdout_file = stdout.path
        wasi.inherit_stderr()
        for preopen in self.config.preopens:
            wasi.preopen_dir(str(preopen.host_path), preopen.guest_path, fs_mutable=False)
        return wasi

    def handle(self, head: RequestHead, body: RequestBody, sink: ResponseSink) -> None:
        import wasmtime

        request_body = read_request_body(head, body, self.max_body_bytes, self.component_id)
        stdout = _stdout(self.stdout_dir)
        stdout.reset()
        limit = self.max_response_bytes

        def output_check() -> str | None:
            return f"WAGI response larger than {limit} bytes: stopped" if stdout.size() > limit else None

        store, watch = request_store(self.engine, head, self.config, self._clock, output_check)
        try:
            store.set_wasi(self._wasi(build_argv(self.config.wagi_argv, head.target),
                                      build_env(head, len(request_body), self.config.environment),
                                      request_body, stdout))
            instance = self._pre.instantiate(store)
            entry = instance.exports(store)[self.entrypoint]
            entry(store)  # type: ignore[operator]
        except wasmtime.ExitTrap as exc:
            if exc.code != 0:
                raise guest_failure(self.config, exc, watch) from None
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            raise guest_failure(self.config, exc, watch) from None
        finally:
            self._clock.disarm(watch)
            del store  # the Store (and its instance, and its stdout fd) now, not at the next GC

        if stdout.size() > limit:
            stdout.take()
            raise GuestFailure(500, "Internal Server Error",
                               log_line=f"spin: {self.component_id}: error: WAGI response larger than {limit} bytes")
        try:
            response = parse_response(stdout.take())
        except CgiError as exc:
            raise GuestFailure(500, "Internal Server Error", log_line=(
                f"spin: {self.component_id}: WAGI output is not a CGI response: {exc}. A WAGI module prints "
                "headers (at least one of Content-Type, Location, Status), an empty line, then the body")) from None
        for note in response.notes:
            write_stderr_line(f"spin: {self.component_id}: {note}")
        sink.start(response.status, [*response.headers, content_length_header(len(response.body))])
        if response.body:
            sink.write(response.body)
        sink.finish()


def load_wagi(config: ComponentConfig, module: wasmtime.Module, engine: wasmtime.Engine, *,
              stdout_dir: Path | None = None) -> WagiExecutor:
    """The WAGI executor for ``module``; raises MissingImportError / WasmLoadError for what can never run."""
    return WagiExecutor(config, module, engine, stdout_dir=stdout_dir)
