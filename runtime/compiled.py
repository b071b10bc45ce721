"""The compiled form of one wasm file: its kind and sha256 in one capped pass over it, then the precompile cache
(runtime.precompile) or a compile. Shared by the command loader (runtime.loader) and the HTTP trigger
(runtime.http.trigger), which import this module and never each other."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from runtime.errors import AppNotFoundError
from runtime.settings import RuntimeSettings

if TYPE_CHECKING:
    import wasmtime

    from runtime.precompile import CacheResult
    from runtime.wasm_binary import ExportRequirement, WasmKind

#: The largest wasm file this runtime compiles. Compiling takes several times the file in memory (407 MiB for the
#: 12 MB js-echo), outside the pod's limit, in a compile process capped by runtime.compile_process's
#: SPIN_SHIM_COMPILE_MEMORY_MAX (README, "Security model"); the biggest real components (componentize-py apps)
#: are ~40 MB.
MAX_WASM_BYTES = 512 << 20
#: Beside the precompiled blobs: the sha256 of wasm files hashed since this boot (runtime.verified_blobs.KnownDigests).
DIGESTS_DIR_NAME = "wasm-digests"


class ComponentLoad(NamedTuple):
    """How one wasm was loaded: for the shim's log line and for tests ("no compile on a warm start")."""

    name: str
    wasm_path: Path
    kind: WasmKind
    cache: CacheResult


#: What this app's load has mapped, by (engine, cache dir, wasm sha256, kind): the compiled object, how it was
#: obtained, and its blob file's identity (inode, size, mtime, ctime). Components of one app that share a wasm (a
#: file server behind several routes) then map its blob once: each mapping costs ~1 ms and counts in full against
#: the load's RLIMIT_DATA (shim.wasm.load_memory; 34-36 MB for the SDK test apps). A blob replaced or removed since
#: is mapped again, as the cache would. runtime.loader's load_app and load_locked_app empty it before and after
#: each load: the memo never keeps a mapping alive past the app that uses it (a blob truncated under a live
#: mapping is SIGBUS), and a process that loads several apps (tests) sees each go through the cache.
_MAPPED: dict[tuple[int, str, str, str], tuple[Any, CacheResult, tuple[int, int, int, int]]] = {}


def forget_mapped() -> None:
    _MAPPED.clear()


def _blob_identity(path: Path) -> tuple[int, int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


def compile_wasm(wasm_path: Path, what: str, name: str, settings: RuntimeSettings, *,
                 exports: ExportRequirement | None = None) -> tuple[Any, ComponentLoad, wasmtime.Engine]:
    """The precompiled module or component for ``wasm_path`` (from the cache, or compiled and cached).

    ``exports``: what the trigger calls in a component (runtime.wasm_binary), checked before a compile from the
    binary's export names, so a component built for another trigger fails in milliseconds, not after a compile.
    Raises WasmLoadError naming ``what`` for a file that is not valid wasm or lacks ``exports``.
    """
    import logging

    from runtime.engine import shared_engine
    from runtime.precompile import PrecompileCache

    from runtime.precompile import CacheResult

    kind, digest = _sniff(wasm_path, what, settings.cache_dir)
    engine = shared_engine()
    key = (id(engine), str(settings.cache_dir), digest, kind.value)
    mapped = _MAPPED.get(key)
    if mapped is not None and mapped[1].blob_path is not None and _blob_identity(mapped[1].blob_path) == mapped[2]:
        compiled, result = mapped[0], CacheResult("hit", digest, mapped[1].blob_path, 0.0)
    else:
        cache = PrecompileCache(settings.cache_dir, engine, verify=settings.cache_verify,
                                store_factory=settings.precompiled_store)
        compiled, result = cache.load(wasm_path, kind, name=what, wasm_sha256=digest, exports=exports)
        identity = _blob_identity(result.blob_path) if result.blob_path is not None else None
        if identity is not None:
            _MAPPED[key] = (compiled, result, identity)
    if exports is not None and result.outcome == "hit":
        # A cache hit skipped the check before a compile (a component cached for another trigger or app): the
        # loaded component's export names give the same answer in the same words, in ~0.1 ms, so a cold and a
        # warm start of one image fail alike.
        from runtime.wasm_binary import WasmKind

        if kind is WasmKind.COMPONENT:
            exports.check(list(compiled.type.exports(engine)), what)
    logging.getLogger(__name__).debug("loaded %s: cache %s in %.1f ms", what, result.outcome, result.seconds * 1000)
    return compiled, ComponentLoad(name=name, wasm_path=wasm_path, kind=kind, cache=result), engine


def _sniff(wasm_path: Path, what: str, cache_dir: Path) -> tuple[WasmKind, str]:
    """Kind from the header and sha256 of the whole file, in one pass over it; a file hashed before since this boot
    (same inode, size, mtime and ctime: runtime.verified_blobs) is not read again past its header."""
    import hashlib

    from runtime.wasm_binary import detect_kind

    from runtime.capped_read import CappedReadError, open_regular, read_chunks
    from runtime.precompile import PRECOMPILED_DIR_NAME
    from runtime.verified_blobs import KnownDigests

    known_digests = KnownDigests(cache_dir / PRECOMPILED_DIR_NAME / DIGESTS_DIR_NAME)
    digest = hashlib.sha256()
    head = b""
    try:
        fd = open_regular(wasm_path)
        if fd is None:
            raise CappedReadError("cannot read: No such file or directory")
        try:
            before = os.fstat(fd)
            known = known_digests.lookup(before)
            if known is not None:
                return detect_kind(os.pread(fd, 8, 0), name=what), known
            for chunk in read_chunks(fd, MAX_WASM_BYTES):
                if len(head) < 8:
                    head += chunk[: 8 - len(head)]
                digest.update(chunk)
            unchanged = _identity(os.fstat(fd)) == _identity(before)
        finally:
            os.close(fd)
    except CappedReadError as exc:
        raise AppNotFoundError(f"{what}: {wasm_path}: {exc}") from None
    kind = detect_kind(head, name=what)
    if unchanged:  # not written to while it was read
        known_digests.record(before, digest.hexdigest())
    return kind, digest.hexdigest()


def _identity(info: os.stat_result) -> tuple[int, int, int, int]:
    return info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns
