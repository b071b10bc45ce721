"""The cap on the memory an app's load may take outside the pod's memory limit.

The instance process loads the app (parses spin.toml, stages files, maps each component's compiled form, builds
its executors) before it joins the task's cgroup (shim/wasm/instance_process.py, step 6), so that a cold compile
is not charged to a small pod. Everything the load allocates scales with image content, though: a 1 MiB spin.toml
can name 12 000 components, each ~1 MiB of private memory once loaded besides the mapping of its compiled form. So
the load runs under ``RLIMIT_DATA``: what the process held when it began (the daemon's pages it was forked with)
plus ``SPIN_SHIM_LOAD_MEMORY_MAX`` from the shim's environment (default 4 GiB). Only the soft limit is set: the
compile child (runtime.compile_process) sets its own cap, and the previous limit is back before the spec's rlimits
are applied and any request is served.

RLIMIT_DATA counts each component's mapping of its compiled blob in full (a private, writable file mapping:
34-36 MB for the JS and Python SDK test apps), though its pages stay the page cache's until written; components
that share a wasm share one mapping (runtime.compiled: 60 js-echo components load in 60 MiB). So the default leaves
room for ~110 distinct components of that size, and an attacker's load stops at 4 GiB of address space, most of it
file pages.

Past the cap, Python raises MemoryError and wasmtime's mappings fail with ENOMEM (runtime.precompile raises
WasmResourceError for them, keeping the blob); both become one Create error that names the setting.
"""

from __future__ import annotations

import contextlib
import errno
import resource
from collections.abc import Iterator, Mapping

from runtime.byte_settings import byte_setting
from runtime.errors import AppError, WasmResourceError

LOAD_MEMORY_ENV = "SPIN_SHIM_LOAD_MEMORY_MAX"
DEFAULT_LOAD_MEMORY_MAX = 4 << 30
#: Below this no app loads at all (the runtime's own imports and one executor); such a value is refused.
MIN_LOAD_MEMORY_MAX = 32 << 20


class LoadMemoryError(AppError):
    """The load needed more than the cap."""


def load_memory_max(environ: Mapping[str, str] | None = None) -> int:
    return byte_setting(LOAD_MEMORY_ENV, DEFAULT_LOAD_MEMORY_MAX, MIN_LOAD_MEMORY_MAX, environ)


def data_size() -> int:
    """This process's data segment as RLIMIT_DATA counts it (VmData: private writable mappings and the heap)."""
    with open("/proc/self/status", "rb") as status:
        for line in status:
            if line.startswith(b"VmData:"):
                return int(line.split()[1]) * 1024
    raise OSError(errno.ENOENT, "no VmData in /proc/self/status")


@contextlib.contextmanager
def load_memory_capped(limit: int, base: int | None = None) -> Iterator[None]:
    """Run the block with at most ``limit`` more bytes of data memory than ``base`` (default: now; the instance
    process measures it before the pivot, as its root has no /proc); LoadMemoryError past it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    cap = (data_size() if base is None else base) + limit
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    if soft != resource.RLIM_INFINITY:
        cap = min(cap, soft)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    try:
        yield
    except MemoryError:
        raise _too_big(limit) from None
    except WasmResourceError as exc:
        if exc.errno != errno.ENOMEM:
            raise
        raise _too_big(limit, str(exc)) from None
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def _too_big(limit: int, detail: str = "") -> LoadMemoryError:
    told = f" ({detail})" if detail else ""
    return LoadMemoryError(
        f"loading the app needs more than {limit >> 20} MiB{told}: the load runs outside the pod's memory limit "
        f"and is capped by {LOAD_MEMORY_ENV} in the shim's environment (containerd's); an app this large (many "
        "components, many files) needs a higher cap on the node, or fewer components")
