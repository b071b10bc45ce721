"""Compile one wasm in a short-lived child process, so that the compile's memory goes back to the system.

Why (issue 16, measured on these machines): compiling js-echo (12 MB) in process peaks at 407 MiB RSS and py-spin
(37 MB) at 435 MiB. Compiled in the instance process, that memory stayed: Cranelift's freed heap is kept by the
allocator, and the compiled code sat in anonymous memory that every forked HTTP worker then shared copy-on-write.
A cold start left ~390 MiB PSS over the instance process and its two workers, a warm start (``deserialize_file``:
the blob mmapped from the cache, its pages shared with every pod of the image) ~75 MiB. So the compile runs in a
child forked from the instance process (inside the task's sandbox: same root, same view, same cgroup), which
serializes the compiled artifact into a file the parent opened for it and exits; the parent stores that blob in
the cache and loads it exactly as a warm start does. The child's memory is gone when it is reaped, before Create
answers.

The child:

* is named ``spin-compile`` (``PR_SET_NAME``: what ``ps`` and ``top`` show on the node while a cold start
  compiles) and dies with its parent (``PR_SET_PDEATHSIG``): a task deleted mid-compile leaves no compile running;
* caps its own data memory (``RLIMIT_DATA``, ``SPIN_SHIM_COMPILE_MEMORY_MAX`` in the shim's environment, default
  2 GiB). The load runs before the instance process joins the task's cgroup (shim/wasm/instance_process.py, step
  6), so the compile is not charged to the pod, as in runwasi and containerd-shim-spin, which compile in the shim:
  a compile needs 400+ MiB where the app then needs tens, so inside a 128-256 MiB pod limit no componentize-py or
  JS app could ever start cold. Work on untrusted input outside the pod's limit needs a documented cap
  (README, "Security model"): this is it, about 5x the largest compile measured;
* writes only into the unlinked file it inherited, so a child that is killed (the cap, the OOM killer, a signal)
  leaves nothing that could be taken for a cache entry;
* reports ``ok`` or an error text over a pipe and ends with ``os._exit`` (never the parent's atexit handlers, nor
  gRPC's or wasmtime's finalizers of objects it inherited).

The parent turns every way the child can end into one WasmLoadError naming the component, which the shim shows in
the Create error and the container's log.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from pathlib import Path

from runtime.byte_settings import byte_setting
from runtime.errors import WasmLoadError
from runtime.wasm_binary import WasmKind

log = logging.getLogger(__name__)

#: Operator knob, read from the shim's environment (containerd's, as runtime.engine's cache salt): the data memory
#: (bytes) a compile may use. Unset, empty or invalid: DEFAULT_COMPILE_MEMORY_MAX.
COMPILE_MEMORY_ENV = "SPIN_SHIM_COMPILE_MEMORY_MAX"
DEFAULT_COMPILE_MEMORY_MAX = 2 << 30
#: A compile under this cap could not even hold the interpreter it was forked from; such a value is refused.
MIN_COMPILE_MEMORY_MAX = 64 << 20
#: The child's report is a line of text; more is a bug, not a message.
MAX_REPORT_BYTES = 64 << 10
_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
#: The child's name (comm, at most 15 bytes).
COMPILE_PROCESS_NAME = "spin-compile"
_OK = b"ok"
_ERROR = b"error:"


def compile_memory_max(environ: dict[str, str] | None = None) -> int:
    """The cap in bytes, from ``COMPILE_MEMORY_ENV`` (an integer byte count, or with a K/M/G/Ki/Mi/Gi suffix)."""
    return byte_setting(COMPILE_MEMORY_ENV, DEFAULT_COMPILE_MEMORY_MAX, MIN_COMPILE_MEMORY_MAX, environ)


_compiled_in_process = False


def note_compiled_in_process() -> None:
    """This process compiled with wasmtime itself (runtime.precompile's fallback): its rayon pool now exists."""
    global _compiled_in_process
    _compiled_in_process = True


def parallel_compile_is_safe() -> bool:
    """Whether a child forked now may compile in parallel.

    wasmtime compiles functions on rayon's process-global thread pool, created at the first compile. Its threads
    do not survive fork: a child of a process that has the pool waits for them forever. The instance process
    never compiles itself (only its compile processes do), unless the fallback did; elsewhere (tests, tools) a
    native thread Python did not start may be such a pool, and the child then compiles serially: slower, never
    stuck. Without /proc (the task's sandbox has none) only the fallback is known.
    """
    if _compiled_in_process:
        return False
    try:
        threads = len(os.listdir("/proc/self/task"))
    except OSError:
        return True
    import threading

    return threads <= threading.active_count()


def compile_to_file(wasm_path: Path, kind: WasmKind, out_fd: int, *, what: str, memory_max: int) -> None:
    """Compile ``wasm_path`` in a child and leave its serialized artifact in ``out_fd`` (a file, at offset 0).

    Raises WasmLoadError naming ``what`` when the wasm does not compile or the child does not finish; OSError when
    the child cannot be started (the caller then compiles in process).
    """
    started = time.monotonic()
    parallel = parallel_compile_is_safe()
    report_r, report_w = os.pipe()
    try:
        pid = os.fork()
    except BaseException:
        os.close(report_r)
        os.close(report_w)
        raise
    if pid == 0:  # the child: never returns
        os.close(report_r)
        os._exit(_child(wasm_path, kind, out_fd, report_w, memory_max, parent=os.getppid(), parallel=parallel))
    os.close(report_w)
    try:
        report = _read_report(report_r)
        _, status = os.waitpid(pid, 0)
    except BaseException:
        _kill_and_reap(pid)
        raise
    finally:
        os.close(report_r)
    seconds = time.monotonic() - started
    problem = child_outcome(status, report, seconds=seconds, memory_max=memory_max, kind=kind)
    if problem is not None:
        raise WasmLoadError(f"{what}: {problem}")


def child_outcome(status: int, report: bytes, *, seconds: float, memory_max: int, kind: WasmKind) -> str | None:
    """What went wrong, for the user, from the child's wait status and report; None when it compiled."""
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and report == _OK:
        return None
    text = report.decode("utf-8", "replace")
    if os.WIFEXITED(status) and text.startswith(_ERROR.decode()):
        return text[len(_ERROR):]
    cap = f"{memory_max / (1 << 20):.0f} MiB ({COMPILE_MEMORY_ENV})"
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        name = _signal_name(signum)
        if signum == signal.SIGKILL:
            return (f"its compile was killed by {name} after {seconds:.1f} s, most likely for memory (the kernel's "
                    f"OOM killer, or a memory limit); a compile needs several hundred MiB for a 10-40 MB "
                    f"{kind.value}; nothing was cached, the next start compiles again")
        return (f"its compile stopped with {name} after {seconds:.1f} s: wasmtime aborts so when the compile needs "
                f"more memory than the compile memory cap of {cap} allows, or when it crashes (the container's log "
                "has wasmtime's own message); nothing was cached")
    return (f"its compile process failed (exit status {os.waitstatus_to_exitcode(status)}"
            f"{': ' + text if text and text != _OK.decode() else ''}); nothing was cached")


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _read_report(fd: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            return b"".join(chunks)
        if size < MAX_REPORT_BYTES:
            chunks.append(chunk[: MAX_REPORT_BYTES - size])
            size += len(chunks[-1])


def _kill_and_reap(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


# ---------------------------------------------------------------------------------------------------- the child


def _child(wasm_path: Path, kind: WasmKind, out_fd: int, report_w: int, memory_max: int, *, parent: int,
           parallel: bool) -> int:
    """The child's whole life; its exit code. Only os-level calls before the compile, nothing logged."""
    try:
        _die_with(parent)
        _cap_data_memory(memory_max)
        import wasmtime
        from wasmtime import component as wasmtime_component

        from runtime.engine import new_engine

        engine = new_engine(parallel_compilation=parallel)  # never the parent's Engine
        wasm = wasm_path.read_bytes()
        try:
            compiled: wasmtime.Module | wasmtime_component.Component
            if kind is WasmKind.COMPONENT:
                compiled = wasmtime_component.Component(engine, wasm)
            else:
                compiled = wasmtime.Module(engine, wasm)
        except wasmtime.WasmtimeError as exc:
            cause = first_cause(str(exc))
            if _OUT_OF_MEMORY.search(cause):  # an mmap refused under the cap: not the wasm's fault
                _write_all(report_w, _ERROR + _over_cap(memory_max, cause).encode())
                return 3
            _write_all(report_w, _ERROR + f"invalid WebAssembly {kind.value}: {cause}".encode())
            return 1
        del wasm
        _write_all(out_fd, compiled.serialize())
        _write_all(report_w, _OK)
        return 0
    except MemoryError:
        _write_report_quietly(report_w, _ERROR + _over_cap(memory_max, "MemoryError").encode())
        return 3
    except BaseException as exc:  # noqa: BLE001 - whatever it is, the parent must hear of it
        _write_report_quietly(report_w, _ERROR + f"its compile failed: {type(exc).__name__}: {exc}".encode())
        return 2


#: How wasmtime words an allocation the kernel refused (ENOMEM), inside a WasmtimeError.
_OUT_OF_MEMORY = re.compile(r"os error 12\b|Cannot allocate memory|out of memory", re.IGNORECASE)


def _over_cap(memory_max: int, cause: str) -> str:
    return (f"its compile ran out of memory: it needs more than the compile memory cap of {memory_max >> 20} MiB "
            f"({COMPILE_MEMORY_ENV}) allows ({cause}); nothing was cached")


def _die_with(parent: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_NAME, COMPILE_PROCESS_NAME.encode(), 0, 0, 0)  # cosmetic: a failure changes nothing
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(137)


def _cap_data_memory(limit: int) -> None:
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _write_report_quietly(fd: int, data: bytes) -> None:
    try:
        _write_all(fd, data[:MAX_REPORT_BYTES])
    except OSError:
        pass


def first_cause(message: str) -> str:
    """wasmtime errors are multi-line ("failed to parse ...\\n\\nCaused by:\\n  0: ..."): keep the informative lines."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    lines = [line for line in lines if line != "Caused by:"]
    cleaned = [re.sub(r"^\d+:\s*", "", line) for line in lines]
    return "; ".join(dict.fromkeys(cleaned)) if cleaned else message
