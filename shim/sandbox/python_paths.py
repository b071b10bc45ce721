"""The interpreter's own modules inside the sandbox: read-only binds of its module directories, and imports
pointed at them after the pivot.

After pivot_root the node's files are gone from the process's view, yet the runtime imports lazily (an HTTP
app never pays for the command trigger's modules, a rootfs app never for grpc). Importing everything before the
pivot instead measured +237 ms per `ctr run` of a hello command (529 -> 766 ms median, scripts/bench_start.py),
so the directories on sys.path (and those of packages imported from elsewhere, like the editable install's
source tree) are bound read-only under /.spin-shim/python/<n>, and sys.path, every imported package's
__path__ and the finders' caches are rewritten to them: a later import reads the same files through the bind.

Two kinds of module cannot come through a bind: C extensions whose shared libraries live in the node's
/usr/lib (the dynamic loader looks there, not in the binds), and results computed from the node's files (the
engine fingerprint reads wasmtime's dist-info). Those are imported and computed before the pivot.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping

#: Modules whose C extension links a library of the node (ldd of lib-dynload): ssl and hashlib (libssl,
#: libcrypto), sqlite3 (key-value stores), zlib and binascii (gzip, base64), and wasmtime (libwasmtime needs
#: libgcc_s). A rootfs app's load imports all of them anyway.
NATIVE_MODULES = ("ssl", "hashlib", "sqlite3", "zlib", "binascii", "wasmtime", "wasmtime.component")
#: grpc's Cython core links libstdc++: only an artifact's load talks to containerd.
CONTENT_STORE_MODULES = ("oci.client", "oci.mirror", "oci.precompiled", "oci.source")


def import_before_pivot(*, content_store: bool) -> None:
    for name in NATIVE_MODULES + (CONTENT_STORE_MODULES if content_store else ()):
        importlib.import_module(name)
    from runtime.engine import engine_fingerprint
    from runtime.host.marshal import wasmtime_version

    engine_fingerprint()
    wasmtime_version()


def module_dirs() -> tuple[str, ...]:
    """The directories imports come from: sys.path's, plus those of imported packages outside them."""
    found: list[str] = []

    def add(path: str) -> None:
        real = os.path.realpath(path)
        if os.path.isdir(real) and not any(real == d or real.startswith(d + "/") for d in found):
            found[:] = [d for d in found if not d.startswith(real + "/")]
            found.append(real)

    for entry in sys.path:
        if entry:
            add(entry)
    for module in list(sys.modules.values()):
        for entry in _search_path(module):
            add(entry)
    return tuple(found)


def remap_imports(binds: Mapping[str, str]) -> None:
    """After the pivot: every module directory `host -> bound` is searched at its bound path."""

    def remap(path: str) -> str:
        real = os.path.realpath(path) if path.startswith("/") else path
        for host, bound in binds.items():
            if real == host or real.startswith(host + "/"):
                return bound + real[len(host):]
        return path

    sys.path[:] = [remap(entry) for entry in sys.path if entry]
    for module in list(sys.modules.values()):
        search = _search_path(module)
        if isinstance(search, list):
            search[:] = [remap(entry) for entry in search]
        elif search:
            inner = getattr(search, "_path", None)  # a namespace package's _NamespacePath
            if isinstance(inner, list):
                inner[:] = [remap(entry) for entry in inner]
    sys.path_importer_cache.clear()
    importlib.invalidate_caches()


def _search_path(module: object) -> list[str] | object:
    path = getattr(module, "__path__", None)
    return path if path is not None else []
