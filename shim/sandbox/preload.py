"""Import, before pivot_root, every module the instance process may need after it.

After the pivot the node's files are gone from the process's view, so an import that runs later (the runtime
imports lazily, to keep `start` light) would fail with ModuleNotFoundError in the middle of a request. Measured
on these machines: an HTTP app's load already imports 281 modules; all of `runtime` plus wasmtime's packages and
the stdlib modules imported lazily at request time is 316, about 40 ms more (the executors, h11, json, idna) -
cheaper than any scheme that keeps the node's Python reachable from inside the root. Results that read the node's
files (the engine fingerprint reads wasmtime's dist-info) are computed here too and cached by their functions.
"""

from __future__ import annotations

import importlib
import pkgutil

#: Imported lazily by the runtime or the stdlib at request time (idna: outbound hostnames; sqlite3: key-value
#: stores; ssl: outbound https; the rest: the HTTP server and the worker pool).
_STDLIB_AND_THIRD_PARTY = (
    "asyncio", "concurrent.futures.thread", "encodings.idna", "h11", "json", "queue", "sqlite3", "ssl",
    "stringprep", "unicodedata", "termios",
)
#: Packages imported whole: ours (the code that serves the app) and wasmtime's (bindgen is the build-time
#: code generator, never used at run time).
_PACKAGES = ("runtime", "wasmtime")
_SKIP = ("wasmtime.bindgen",)


def import_host_modules(*, content_store: bool) -> None:
    """`content_store`: the app is an OCI artifact, so grpc and oci/ are needed after the pivot too."""
    for name in _STDLIB_AND_THIRD_PARTY:
        importlib.import_module(name)
    packages = _PACKAGES + (("oci",) if content_store else ())
    for package_name in packages:
        package = importlib.import_module(package_name)
        for module in pkgutil.walk_packages(package.__path__, f"{package_name}."):
            if not module.name.startswith(_SKIP):
                importlib.import_module(module.name)
    from runtime.engine import engine_fingerprint
    from runtime.host.marshal import wasmtime_version

    engine_fingerprint()
    wasmtime_version()
