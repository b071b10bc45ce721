"""The one wasmtime Engine configuration of this runtime, and the fingerprint that keys precompiled artifacts.

A precompiled (serialized) module/component only loads into an Engine built by the same wasmtime with the same
code-generation settings on a CPU with the same features; wasmtime itself checks this at deserialize time and
fails (a .cwasm made by the wasmtime 49.0.3 CLI fails to load in wasmtime-py 50). The fingerprint turns
that rule into a cache key so that a wasmtime upgrade, a config change or an image of the cache copied to another
CPU model never even tries the wrong blob.

wasmtime is imported lazily: ``import runtime.engine`` stays cheap for processes that only need the fingerprint
or the config description (and for the shim's short-lived ``start``).
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import importlib.util
import os
import platform
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import wasmtime

#: Every Engine setting we choose. All of them change generated code (or its calling convention), so all of them
#: are part of the fingerprint; a setting left at wasmtime's default is covered by the wasmtime version.
#: - epoch_interruption: needed for interrupt() (SIGTERM of a busy guest) and later per-request deadlines; it adds
#:   a check on loop back-edges and function entries (a few % of CPU), which is why it changes the artifact.
#: - cranelift_opt_level "speed": the default; measured 6.2 s vs 4.3 s ("none") to compile a 37 MB component,
#:   paid once per (wasm, fingerprint), while the run time gain is paid back on every request.
#: - wasm_component_model: on by default in wasmtime 50; stated so the fingerprint does not depend on a default.
#: Not set: consume_fuel (epochs are cheaper for deadlines), the pooling allocator (no gain measured in the
#: in-process request loop), memory_reservation/guard sizes (defaults; part of the version).
ENGINE_SETTINGS: dict[str, object] = {
    "epoch_interruption": True,
    "cranelift_opt_level": "speed",
    "wasm_component_model": True,
}

#: Operator knob, read from the shim's environment (containerd's): any text here becomes part of the fingerprint, so
#: every node recompiles instead of trusting blobs it already has (e.g. after replacing libwasmtime in place, which
#: the version and library size could miss). Empty or unset: no salt.
CACHE_SALT_ENV = "SPIN_SHIM_CACHE_SALT"

# Host CPU features Cranelift uses when it compiles for the native target ("has_*" ISA flags; Linux calls SSE3
# "pni"); an artifact compiled with one of these on cannot run on a CPU without it.
_X86_FLAGS = (
    "sse3", "pni", "ssse3", "sse4_1", "sse4_2", "popcnt", "cx16", "avx", "avx2", "fma", "bmi1", "bmi2", "lzcnt", "abm",
    "avx512f", "avx512vl", "avx512dq", "avx512bw", "avx512vbmi", "avx512bitalg",
)
_ARM_FLAGS = ("atomics", "paca", "pacg", "bti", "fphp", "asimdhp")


def cpu_description(cpuinfo_path: Path = Path("/proc/cpuinfo")) -> str:
    """``<arch>:<sorted relevant flags>``, from the first processor block of /proc/cpuinfo."""
    arch = platform.machine()
    flags: set[str] = set()
    try:
        with open(cpuinfo_path, encoding="ascii", errors="replace") as handle:
            for line in handle:
                if not line.strip():
                    break  # end of the first processor block; the others are identical
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    flags.update(value.split())
    except OSError:
        pass  # not Linux or no procfs: the arch alone, and wasmtime's own check still protects us
    relevant = _X86_FLAGS if arch in ("x86_64", "AMD64", "i686") else _ARM_FLAGS
    return f"{arch}:{','.join(sorted(f for f in flags if f in relevant))}"


def _wasmtime_build_id() -> str:
    """wasmtime-py's version plus the size of its bundled libwasmtime.

    The version alone names the release; the size distinguishes a locally rebuilt library of the same version
    (one stat, where hashing the 30 MB library would cost more than loading the app). The version comes from
    the ``wasmtime-<version>.dist-info`` directory next to the package: importlib.metadata would cost ~11 ms of
    imports (email.*) in every instance process.
    """
    version = "?"
    size = "?"
    spec = importlib.util.find_spec("wasmtime")
    if spec is not None and spec.origin is not None:
        package_dir = Path(spec.origin).parent
        for dist_info in package_dir.parent.glob("wasmtime-*.dist-info"):
            version = dist_info.name[len("wasmtime-") : -len(".dist-info")]
            break
        for library in package_dir.glob("*/_libwasmtime.*"):
            size = str(library.stat().st_size)
            break
    if version == "?":
        from importlib import metadata  # an unusual install layout (zipapp, vendored): pay for the slow path

        version = metadata.version("wasmtime")
    return f"wasmtime-py {version} lib {size}"


def engine_fingerprint() -> str:
    """A stable string naming everything that makes a compiled artifact incompatible with this process.

    Human-readable on purpose (it is written next to the cache entries); use ``fingerprint_digest`` as a key.
    The salt is read on every call: a process forked from a warm parent (the shim's fork server) has the
    environment of its own containerd, not the parent's.
    """
    salt = os.environ.get(CACHE_SALT_ENV, "").strip()
    return f"{_process_fingerprint()}|salt {salt}" if salt else _process_fingerprint()


@functools.cache
def _process_fingerprint() -> str:
    """The part that reads files (wasmtime's build, /proc/cpuinfo): computed once per process and its forks."""
    settings = ";".join(f"{k}={v}" for k, v in sorted(ENGINE_SETTINGS.items()))
    return f"{_wasmtime_build_id()}|{settings}|cpu {cpu_description()}"


def fingerprint_digest(fingerprint: str | None = None) -> str:
    """First 16 hex digits of sha256(fingerprint): the cache directory name for this engine."""
    return hashlib.sha256((fingerprint or engine_fingerprint()).encode()).hexdigest()[:16]


def new_engine(*, parallel_compilation: bool = True) -> wasmtime.Engine:
    """A fresh Engine with ENGINE_SETTINGS. Prefer ``shared_engine()``; one Engine per process is the rule.

    ``parallel_compilation=False`` is for a compile process forked from a process whose rayon pool (wasmtime's
    parallel compile runs on rayon's process-global pool) already exists: the pool's threads do not survive fork,
    and a parallel compile in the child waits for them forever (runtime.compile_process). It changes how long a
    compile takes, not the code it makes, so it is not part of the fingerprint (a blob compiled either way loads
    in either Engine; tests/unit/test_precompile_process.py).
    """
    import wasmtime

    config = wasmtime.Config()
    for name, value in ENGINE_SETTINGS.items():
        setattr(config, name, value)
    if not parallel_compilation:
        config.parallel_compilation = False
    return wasmtime.Engine(config)


_engine_lock = threading.Lock()
_engine: wasmtime.Engine | None = None
_engine_pid: int | None = None


def shared_engine() -> wasmtime.Engine:
    """The process-wide Engine, created on first use.

    One per process because compiled code, its mmaps and the epoch counter belong to an Engine. Recreated after a
    fork: a forked child must not reuse the parent's Engine (its compile thread pool, if the parent ever compiled,
    does not survive fork). The shim should not create an Engine in the warm parent it forks instance processes
    from; importing wasmtime there is fine.
    """
    global _engine, _engine_pid
    with _engine_lock:
        if _engine is None or _engine_pid != os.getpid():
            _engine = new_engine()
            _engine_pid = os.getpid()
            atexit.register(_close_engine_at_exit)
        return _engine


def _close_engine_at_exit() -> None:
    """Drop our Engine handle while wasmtime's ctypes bindings still exist.

    Left to interpreter teardown, the module-global Engine can be finalised after wasmtime's own module globals
    are gone, and its __del__ then prints "Exception ignored ... 'NoneType' object is not callable" to fd 2: in
    an instance process that is the container's log. Closing is safe while modules/stores are alive: wasmtime's
    Engine is reference-counted inside the C library, the Python object only holds one reference.
    """
    global _engine
    with _engine_lock:
        if _engine is not None:
            _engine.close()
            _engine = None

