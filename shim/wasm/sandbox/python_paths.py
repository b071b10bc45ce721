"""The interpreter's own modules inside the sandbox: read-only binds of its module directories, and imports
pointed at them after the pivot.

After pivot_root the node's files are gone from the process's view, yet the runtime imports lazily (an HTTP
app never pays for the command trigger's modules, a rootfs app never for grpc unless it exports telemetry over
OTLP/gRPC). Importing everything before the pivot instead measured +237 ms per `ctr run` of a hello command
(529 -> 766 ms median, scripts/bench_start.py), so the directories on sys.path (and those of packages imported from elsewhere, like the editable install's
source tree) are bound read-only under /.spin-shim/python/<n>, and sys.path, every imported package's
__path__ and the finders' caches are rewritten to them: a later import reads the same files through the bind.
The finders keep their directory listings (the bind shows the same directory, same mtime), so no directory is
listed again.

After the pivot a node path names a file of the *image*: an entry left on sys.path that the node did not have
(``python311.zip``), a package directory nobody bound, or an import hook reading node paths would import the
image's code into the privileged process. So sys.path keeps only bound entries, the import system keeps only
the built-in and frozen importers and one finder (SandboxFinder) that refuses any module found outside the
binds, and our own top-level packages (an editable install maps them by node path) are found at their binds.

Two kinds of module cannot come through a bind: C extensions whose shared libraries live in the node's
/usr/lib (the dynamic loader would look for them in the image: shim/wasm/sandbox/native_libs.py preloads them and
guards later imports), and results computed from the node's files (the engine fingerprint reads wasmtime's
dist-info). Those are loaded and computed before the pivot.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from shim.wasm.sandbox import native_libs

#: Every load imports wasmtime (libwasmtime, loaded by ctypes from its package dir, needs libgcc_s);
#: wasmtime.component is pure Python over it, imported through the bind by a component's load only (10 ms).
IMPORTED_MODULES = ("wasmtime",)
#: Extensions linking a library of the node, which the runtime imports lazily: ssl and hashlib (libssl,
#: libcrypto), sqlite3 (key-value stores), zlib and binascii (gzip, base64). Only dlopen'ed: `import ssl` costs
#: ~36 ms in an instance process that may never make an HTTPS request, its dlopen ~2 ms.
PRELOADED_EXTENSIONS = ("_ssl", "_hashlib", "_sqlite3", "zlib", "binascii")
#: grpc's Cython core links libstdc++: only an artifact's load talks to containerd, right after the pivot.
CONTENT_STORE_MODULES = ("oci.client", "oci.mirror", "oci.precompiled", "oci.source")
#: The same core for OTLP over gRPC (runtime.telemetry.needs_grpc of the task env): only dlopen'ed, ~7 ms (its
#: libstdc++ and librt come with it); the exporter imports grpc after the pivot, through the bind, in the load.
GRPC_EXTENSIONS = ("grpc._cython.cygrpc",)


def import_before_pivot(*, content_store: bool, grpc: bool = False) -> None:
    """What the load needs from the node, done now; ``grpc`` when the task exports telemetry over OTLP/gRPC."""
    for name in IMPORTED_MODULES + (CONTENT_STORE_MODULES if content_store else ()):
        importlib.import_module(name)
    native_libs.preload(PRELOADED_EXTENSIONS + (GRPC_EXTENSIONS if grpc else ()))
    native_libs.load_openssl_config()
    from runtime.engine import engine_fingerprint
    from runtime.host.marshal import wasmtime_version

    engine_fingerprint()
    wasmtime_version()


class RealPaths:
    """os.path.realpath with a memo per directory: every package's __path__ shares its parents with the others,
    so resolving each entry costs one lstat of its last component instead of one per component (3 ms -> 0.3 ms
    over the few hundred packages a load has imported). After the pivot the memo is how remap_imports knows
    where a node path went: the node's paths no longer resolve there."""

    def __init__(self) -> None:
        self.memo: dict[str, str] = {}

    def __call__(self, path: str) -> str:
        real = self.memo.get(path)
        if real is None:
            parent, name = os.path.split(path)
            if not path.startswith("/") or not name or name in (".", "..") or "/./" in path or "/../" in path:
                real = os.path.realpath(path)
            else:
                candidate = os.path.join(self(parent), name)
                real = os.path.realpath(candidate) if os.path.islink(candidate) else candidate
            self.memo[path] = real
        return real


#: This project's top-level packages: found by their location before the pivot (an editable install does not
#: put them on sys.path), bound, and found at their bind after it.
OUR_PACKAGES = ("oci", "proto", "runtime", "shim")


class ModuleScan:
    """module_dirs' state, kept for the life of the process and inherited by its forks: a fork server or daemon
    that scanned its few hundred modules once leaves an instance process only the modules imported since."""

    def __init__(self) -> None:
        self.real_paths = RealPaths()
        self.found: list[str] = []
        self.seen: set[str] = set()

    def add(self, path: str) -> None:
        real = self.real_paths(path)
        if not any(real == d or real.startswith(d + "/") for d in self.found) and os.path.isdir(real):
            self.found[:] = [d for d in self.found if not d.startswith(real + "/")]
            self.found.append(real)


_SCAN = ModuleScan()


def module_dirs() -> tuple[str, ...]:
    """The directories imports come from: sys.path's, our packages', and those of imported packages outside them."""
    for entry in sys.path:
        if entry:
            _SCAN.add(entry)
    for location in _our_package_dirs().values():
        _SCAN.add(location)
    for name, module in list(sys.modules.items()):
        if name not in _SCAN.seen:
            _SCAN.seen.add(name)
            for entry in _search_path(module):
                _SCAN.add(entry)
    return tuple(_SCAN.found)


def _our_package_dirs() -> dict[str, str]:
    locations = {}
    for name in OUR_PACKAGES:
        spec = sys.modules[name].__spec__ if name in sys.modules else importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            locations[name] = list(spec.submodule_search_locations)[0]
    return locations


class SandboxFinder:
    """The one path-based finder after the pivot: PathFinder over the remapped paths, refusing what resolves
    outside the binds and extensions whose libraries are not loaded (native_libs.check_extension)."""

    def __init__(self, bound_dirs: tuple[str, ...], packages: Mapping[str, str]) -> None:
        self._bound_dirs = bound_dirs
        self._packages = packages

    def find_spec(self, name: str, path: Sequence[str] | None = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        if path is None and name in self._packages:
            location = self._packages[name]
            spec = importlib.util.spec_from_file_location(name, f"{location}/__init__.py",
                                                          submodule_search_locations=[location])
        else:
            spec = importlib.machinery.PathFinder.find_spec(name, path, target)  # type: ignore[arg-type]
        if spec is None:
            return None
        places = [spec.origin] if spec.has_location and spec.origin else []
        places.extend(spec.submodule_search_locations or ())
        for place in places:
            if not any(place.startswith(bound + "/") for bound in self._bound_dirs):
                raise ImportError(f"sandbox: module {name} resolves to {place}, outside the shim's module "
                                  f"directories", name=name)
        native_libs.check_extension(spec)
        return spec

    @staticmethod
    def invalidate_caches() -> None:
        importlib.machinery.PathFinder.invalidate_caches()

    @staticmethod
    def find_distributions(*args: Any, **kwargs: Any) -> Iterable[Any]:
        """importlib.metadata's hook: a dependency that reads its own version at import (pg8000, scramp) finds
        its dist-info. PathFinder searches the remapped sys.path, so only distributions inside the binds."""
        return importlib.machinery.PathFinder.find_distributions(*args, **kwargs)


def remap_imports(binds: Mapping[str, str]) -> None:
    """After the pivot: every module directory `host -> bound` is searched at its bound path, only there."""

    def remap(path: str) -> str | None:
        memo = _SCAN.real_paths.memo
        real = memo.get(path) or memo.get(path.rstrip("/")) or path
        for host, bound in binds.items():
            if real == host or real.startswith(host + "/"):
                return bound + real[len(host):]
        return None

    packages = {name: remap(location) for name, location in _our_package_dirs().items()}
    sys.path[:] = [bound for bound in map(remap, filter(None, sys.path)) if bound is not None]
    for module in list(sys.modules.values()):
        search = _search_path(module)
        if isinstance(search, list):
            search[:] = [bound for bound in map(remap, search) if bound is not None]
            continue
        # A namespace package's _NamespacePath: only its _path is read and written. Its truth value, len or
        # iteration would recompute it (sys.path changed above) from the bound dirs, and remapping that bound
        # path again would empty it for good: `google` (protobuf's, imported before the pivot) lost every
        # portion that way, and google.rpc (googleapis-common-protos, needed by the OTLP/gRPC exporter) was
        # "not found". Left with node paths remapped, it recomputes itself on its next use, from sys.path (bound
        # entries only) or its parent package's remapped __path__.
        inner = getattr(search, "_path", None)
        if isinstance(inner, list):
            inner[:] = [bound for bound in map(remap, inner) if bound is not None]
    finders = {}
    for entry, finder in sys.path_importer_cache.items():
        bound = remap(entry)
        if bound is not None and isinstance(finder, importlib.machinery.FileFinder):
            finder.path = bound  # its listing is the bound directory's too
            finders[bound] = finder
    sys.path_importer_cache.clear()
    sys.path_importer_cache.update(finders)
    sys.meta_path[:] = [finder for finder in sys.meta_path
                        if finder in (importlib.machinery.BuiltinImporter, importlib.machinery.FrozenImporter)]
    sys.meta_path.append(SandboxFinder(tuple(binds.values()),
                                       {name: bound for name, bound in packages.items() if bound is not None}))


def _search_path(module: object) -> list[str] | object:
    """A package's __path__, read from its __dict__: getattr would raise (and catch) AttributeError for every
    plain module and run a module's own __getattr__ (1 ms over a daemon's ~400 modules)."""
    path = getattr(module, "__dict__", {}).get("__path__")
    return path if path is not None else []
