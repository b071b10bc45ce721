"""Which shim build a fork server holds: a daemon is never forked from a server of another build.

The key hashes what the server has imported and a daemon would run: every file of this project's packages
(path, size, mtime), the interpreter, the installed distributions (the names of sys.path's ``*.dist-info``
directories, i.e. each dependency's version: a server that imported h11 or protobuf before an upgrade must not
fork daemons that run the new one's callers over the old one's code), and the wasmtime package (its native
library too), since the precompile cache and every compiled component depend on it. `start` computes it on every call, so it
stats files rather than reading them: ~1 ms for the few hundred files of the tree.
"""

from __future__ import annotations

import os
import sys
TYPE_CHECKING = False  # typing costs ~5 ms of every `start`; annotations only need it for checkers
if TYPE_CHECKING:
    from typing import Any

from shim.sha256 import sha256

#: The project's packages, next to this one.
PACKAGES_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
PACKAGES = ("oci", "proto", "runtime", "shim")
#: Lets tests (and an operator who wants a separate server) make a build distinct without changing code.
SALT_ENV = "SPIN_SHIM_FORK_SERVER_SALT"


def build_key() -> str:
    digest = sha256()
    digest.update(f"{sys.executable}\0{sys.version}\0{os.environ.get(SALT_ENV, '')}\0".encode())
    for package in PACKAGES:
        _add_tree(digest, os.path.join(PACKAGES_ROOT, package))
    _add_distributions(digest)
    _add_wasmtime(digest)
    return digest.hexdigest()[:24]


def _add_distributions(digest: Any) -> None:
    """The dist-info names (name-version) found on sys.path, one listdir per entry. Only the names: `start` and
    the server have the same site-packages but not always the same other entries (a script's own directory)."""
    names: set[str] = set()
    for entry in sys.path:
        try:
            names.update(name for name in os.listdir(entry or ".") if name.endswith(".dist-info"))
        except OSError:
            continue
    digest.update(" ".join(sorted(names)).encode())


def _add_tree(digest: Any, directory: str | os.PathLike[str]) -> None:
    stack = [str(directory)]
    while stack:
        current = stack.pop()
        try:
            entries = sorted(os.scandir(current), key=lambda entry: entry.name)
        except OSError:
            continue
        for entry in entries:
            if entry.name == "__pycache__":
                continue
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
            elif entry.name.endswith((".py", ".so")):
                info = entry.stat()
                digest.update(f"{entry.path}\0{info.st_size}\0{info.st_mtime_ns}\0".encode())


def _add_wasmtime(digest: Any) -> None:
    """The wasmtime package's dist-info name (its version) and its files' sizes and mtimes."""
    for entry in sys.path:
        package = os.path.join(entry or ".", "wasmtime")
        if os.path.isdir(package):
            try:
                digest.update(" ".join(sorted(name for name in os.listdir(entry or ".")
                                              if name.startswith("wasmtime-"))).encode())
            except OSError:
                pass
            _add_tree(digest, package)
            return
    digest.update(b"no wasmtime")
