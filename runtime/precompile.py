"""Compile each wasm once per (wasm digest, engine fingerprint); afterwards only mmap the result.

Compiling a real Spin component takes 4-6 s on these machines; loading the serialized artifact with
``deserialize_file`` takes 1-4 ms and shares pages between processes (measured: 1.5-3.8 ms for 33 MB .cwasm
files, against 36-62 ms for ``deserialize(bytes)``, on a 2-core VM). So a warm start must never compile, and a
cold one compiles exactly the wasm it needs.

Layout, one directory per engine fingerprint and wasm digest::

    <cache_dir>/precompiled/<fingerprint digest>/FINGERPRINT          the full fingerprint, for humans
    <cache_dir>/precompiled/<fingerprint digest>/<wasm sha256>/<size>-<blob sha256>.cwasm

The blob's own size and sha256 are in its *name*, so an entry is self-describing and is published with a single
atomic rename (tmp file + fsync + rename + directory fsync): there is no sidecar that could disagree with its blob.
That is the LocalBlobStore, used for apps read from the rootfs. Apps read from containerd's content store keep
their blobs there instead (oci/precompiled.py), behind the same BlobStore seam, so that containerd's garbage
collector removes them with their image.

Concurrent first starts compile once: the compile runs under a per-(fingerprint, wasm) file lock, and whoever
waited finds the stored blob. Readers never see a partial blob.

A miss compiles in a short-lived child process (runtime.compile_process) that leaves the serialized artifact in
an unlinked file; this process stores it and maps the stored blob with ``deserialize_file``, exactly as a warm
start does. So a cold start keeps none of the compile's memory (measured: js-echo's compile peaks at 407 MiB;
done in process, a cold pod kept ~390 MiB PSS where a warm one has ~75), and a killed compile leaves no entry.
Before the compile, a component's own sections are read for what would make it fail after one (WASIp3, the
export its trigger calls): milliseconds instead of a 5-15 s compile. A blob whose size or digest does not match what
the store recorded, or that wasmtime refuses to deserialize, is dropped and rebuilt.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal, Protocol, Union

from runtime.compile_process import first_cause
from runtime.engine import engine_fingerprint, fingerprint_digest
from runtime.errors import WasmLoadError, WasmResourceError
from runtime.verified_blobs import VERIFIED_DIR_NAME, VerifiedBlobs
from runtime.wasm_binary import ExportRequirement, WasmKind

if TYPE_CHECKING:
    import mmap

    import wasmtime
    from wasmtime import component as wasmtime_component

    Compiled = Union[wasmtime.Module, wasmtime_component.Component]

#: What the store is given: bytes, or the compile process's output file mapped read-only.
Buffer = Union[bytes, "mmap.mmap"]

log = logging.getLogger(__name__)

PRECOMPILED_DIR_NAME = "precompiled"
_BLOB_NAME = re.compile(r"^(?P<size>\d+)-(?P<sha>[0-9a-f]{64})\.cwasm$")
#: How wasmtime (Rust's std::io::Error) ends a message caused by a system call's failure.
_OS_ERROR = re.compile(r"\(os error (\d+)\)")

CacheOutcome = Literal["hit", "compiled", "rebuilt"]
#: Given the engine fingerprint's digest (the cache key), the store for blobs of that engine.
StoreFactory = Callable[[str], "BlobStore"]


@dataclass(frozen=True)
class CacheResult:
    """How one wasm was obtained; the loader reports it so "no compile on a warm start" is observable."""

    outcome: CacheOutcome
    wasm_sha256: str
    blob_path: Path | None
    seconds: float


def sha256_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


@dataclass(frozen=True)
class StoredBlob:
    """A compiled blob as a local file (mmapped by deserialize_file), with the size and sha256 it must have."""

    path: Path
    size: int
    sha256: str


class BlobStore(Protocol):
    """Where compiled blobs of one engine fingerprint live: a local directory, or containerd's content store.

    The cache logic (verify, deserialize, drop what fails, compile once under a lock, store) is the same for both;
    only finding, dropping and keeping blobs differ.
    """

    def candidates(self, wasm_sha256: str) -> Iterator[StoredBlob]:
        """Blobs recorded for this wasm, each already available as a local file."""
        ...

    def discard(self, wasm_sha256: str, blob: StoredBlob) -> None:
        """Forget a blob that failed verification or deserialization, so it is never tried again."""
        ...

    def put(self, wasm_sha256: str, data: bytes) -> StoredBlob:
        """Keep a freshly compiled blob; raises OSError (or a store-specific error, logged) when it cannot."""
        ...


class LocalBlobStore:
    """``<root>/<wasm sha256>/<size>-<blob sha256>.cwasm``: the node-local cache for apps read from the rootfs."""

    def __init__(self, root: Path, fingerprint: str) -> None:
        self.root = root
        self._fingerprint = fingerprint

    def entry_dir(self, wasm_sha256: str) -> Path:
        return self.root / wasm_sha256

    def candidates(self, wasm_sha256: str) -> Iterator[StoredBlob]:
        entry_dir = self.entry_dir(wasm_sha256)
        try:
            names = sorted(os.listdir(entry_dir))
        except (FileNotFoundError, NotADirectoryError):
            return
        for blob_name in names:
            match = _BLOB_NAME.match(blob_name)
            if match is not None:  # others are tmp files of a writer in progress, or foreign files
                yield StoredBlob(entry_dir / blob_name, int(match["size"]), match["sha"])

    def discard(self, wasm_sha256: str, blob: StoredBlob) -> None:
        try:
            blob.path.unlink()
        except FileNotFoundError:
            pass  # another process dropped it first

    def put(self, wasm_sha256: str, data: bytes) -> StoredBlob:
        digest = hashlib.sha256(data).hexdigest()
        entry_dir = self.entry_dir(wasm_sha256)
        entry_dir.mkdir(parents=True, exist_ok=True)
        self._write_fingerprint_note()
        final = entry_dir / f"{len(data)}-{digest}.cwasm"
        write_file_atomically(final, data)
        return StoredBlob(final, len(data), digest)

    def _write_fingerprint_note(self) -> None:
        note = self.root / "FINGERPRINT"
        if not note.exists():
            fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", dir=self.root)
            with os.fdopen(fd, "w") as handle:
                handle.write(self._fingerprint + "\n")
            os.rename(tmp_name, note)


def write_file_atomically(final: Path, data: bytes) -> None:
    """tmp file + fsync + rename + directory fsync: readers see the whole file or none, even after a crash."""
    fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix=final.suffix, dir=final.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(tmp_name, final)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(final.parent)


class PrecompileCache:
    def __init__(
        self,
        cache_dir: Path,
        engine: wasmtime.Engine,
        *,
        fingerprint: str | None = None,
        verify: Literal["full", "size"] = "full",
        store_factory: StoreFactory | None = None,
    ) -> None:
        self.engine = engine
        self.fingerprint = fingerprint or engine_fingerprint()
        key = fingerprint_digest(self.fingerprint)
        self.root = cache_dir / PRECOMPILED_DIR_NAME / key
        self.store: BlobStore = (
            store_factory(key) if store_factory is not None else LocalBlobStore(self.root, self.fingerprint)
        )
        self._locks_dir = cache_dir / PRECOMPILED_DIR_NAME / "locks"
        self._verified = VerifiedBlobs(cache_dir / PRECOMPILED_DIR_NAME / VERIFIED_DIR_NAME)
        self._key = key
        self.verify = verify

    def entry_dir(self, wasm_sha256: str) -> Path:
        return self.root / wasm_sha256

    def load(self, wasm_path: Path, kind: WasmKind, *, name: str, wasm_sha256: str | None = None,
             exports: ExportRequirement | None = None) -> tuple[Compiled, CacheResult]:
        """The compiled form of the wasm at ``wasm_path``: from the store if a valid blob exists, else compiled.

        Concurrent first loads of one wasm (two pods of a new image starting together) compile it once: the
        compile runs under an exclusive lock per (fingerprint, wasm), and whoever waited finds the blob the first
        one stored. Before a compile, a component is read for what makes it unrunnable here (WASIp3; a missing
        ``exports`` requirement of its trigger), in milliseconds. The compile runs in a short-lived child
        (runtime.compile_process) and this process loads the stored blob as a warm start does, so a cold start
        keeps none of the compile's memory. Raises WasmLoadError (naming ``name``) if the wasm does not compile.
        Store failures (read-only disk, content store down) are logged and otherwise ignored: the cache is an
        optimisation, never a reason to fail.
        """
        started = time.perf_counter()
        digest = wasm_sha256 or sha256_file(wasm_path)
        cached, dropped = self._load_cached(digest, kind, name)
        if cached is None:
            with self._compile_lock(digest):
                cached, dropped_again = self._load_cached(digest, kind, name)
                dropped += dropped_again
                if cached is None:
                    if kind is WasmKind.COMPONENT:
                        check_before_compile(wasm_path, name, exports)
                    artifact = self._compile(wasm_path, kind, name=name)
                    try:
                        blob = self._store(digest, artifact.data)
                        obj = self._load_stored(blob, kind) if blob is not None else None
                        if obj is None:
                            obj = artifact.load(self.engine, kind)
                    finally:
                        artifact.close()
                    release_freed_memory()
                    outcome: CacheOutcome = "rebuilt" if dropped else "compiled"
                    seconds = time.perf_counter() - started
                    log.info("precompiled %s (%s, sha256 %s) in %.2f s -> %s", name, kind.value, digest[:12],
                             seconds, blob)
                    return obj, CacheResult(outcome, digest, blob, seconds)
        blob_path, obj = cached
        return obj, CacheResult("hit", digest, blob_path, time.perf_counter() - started)

    @contextlib.contextmanager
    def _compile_lock(self, wasm_sha256: str) -> Iterator[None]:
        try:
            self._locks_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._locks_dir / f"{self._key}-{wasm_sha256}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                         0o600)
        except OSError as exc:
            log.warning("no compile lock (%s): concurrent starts may compile the same wasm twice", exc)
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    # ------------------------------------------------------------------------------------------------ reading

    def _load_cached(self, wasm_sha256: str, kind: WasmKind, name: str
                     ) -> tuple[tuple[Path, Compiled] | None, int]:
        """(the first valid stored blob and its object, or None; how many invalid blobs were dropped).

        A blob wasmtime refuses for an operating-system reason (``(os error 12)``: its mapping hit a memory cap or
        the node is out of memory) is not invalid: it stays, and the load fails with WasmResourceError. Dropping
        it made a memory shortage delete the node's compiled blob (every pod of the image then compiled again).
        """
        dropped = 0
        try:
            for blob in self.store.candidates(wasm_sha256):
                problem = self._verify(blob)
                if problem is None:
                    try:
                        return (blob.path, self._deserialize(blob.path, kind)), dropped
                    except Exception as exc:  # wasmtime.WasmtimeError; imported lazily
                        os_error = _OS_ERROR.search(str(exc))
                        if os_error is not None:
                            raise WasmResourceError(f"{name}: cannot load its precompiled form: "
                                                    f"{first_cause(str(exc)).split('; ')[-1]}",
                                                    int(os_error[1])) from None
                        problem = f"wasmtime refused it: {str(exc).splitlines()[0]}"
                log.warning("dropping invalid precompiled blob %s: %s", blob.path, problem)
                dropped += 1
                self.store.discard(wasm_sha256, blob)
        except WasmResourceError:
            raise
        except Exception as exc:  # noqa: BLE001 - a store that cannot answer is a miss, not a failed start
            log.warning("precompile cache lookup failed (%s); compiling", exc)
        return None, dropped

    def _verify(self, blob: StoredBlob) -> str | None:
        try:
            info = blob.path.stat()
        except FileNotFoundError:
            return "vanished"
        if info.st_size != blob.size:
            return f"size {info.st_size} != {blob.size} recorded for it (truncated?)"
        if self.verify == "full" and not self._verified.verified(info, blob.sha256):
            if sha256_file(blob.path) != blob.sha256:
                return "sha256 differs from the one recorded for it (corrupted)"
            self._verified.record(info, blob.sha256)
        return None

    def _deserialize(self, blob: Path, kind: WasmKind) -> Compiled:
        import wasmtime
        from wasmtime import component as wasmtime_component

        if kind is WasmKind.COMPONENT:
            return wasmtime_component.Component.deserialize_file(self.engine, str(blob))
        return wasmtime.Module.deserialize_file(self.engine, str(blob))

    # ------------------------------------------------------------------------------------------------ writing

    def _compile(self, wasm_path: Path, kind: WasmKind, *, name: str) -> Artifact:
        """The serialized artifact of the wasm, compiled in a child process (runtime.compile_process).

        In process only when the child cannot be given its output file (no writable cache directory) or cannot
        be forked: then the compile's memory stays in this process, as it always did before.
        """
        from runtime.compile_process import compile_memory_max, compile_to_file

        try:
            out = self._output_file()
        except OSError as exc:
            log.warning("no file for a compile process (%s): compiling %s in process", exc, name)
            return _InProcessArtifact(self._compile_in_process(wasm_path, kind, name=name))
        try:
            compile_to_file(wasm_path, kind, out.fileno(), what=name, memory_max=compile_memory_max())
        except OSError as exc:
            out.close()
            log.warning("cannot start a compile process (%s): compiling %s in process", exc, name)
            return _InProcessArtifact(self._compile_in_process(wasm_path, kind, name=name))
        except BaseException:
            out.close()
            raise
        return _FileArtifact(out)

    def _output_file(self) -> BinaryIO:
        """An unlinked file next to the store (the same filesystem): it vanishes with its last fd, whatever ends."""
        for directory in (self.root.parent, self.root.parent.parent):
            try:
                directory.mkdir(parents=True, exist_ok=True)
                return tempfile.TemporaryFile(prefix=".compiling-", dir=directory)
            except OSError as exc:
                problem = exc
        raise problem

    def _compile_in_process(self, wasm_path: Path, kind: WasmKind, *, name: str) -> Compiled:
        import wasmtime
        from wasmtime import component as wasmtime_component

        from runtime.compile_process import note_compiled_in_process

        note_compiled_in_process()
        wasm = wasm_path.read_bytes()
        try:
            if kind is WasmKind.COMPONENT:
                return wasmtime_component.Component(self.engine, wasm)
            return wasmtime.Module(self.engine, wasm)
        except wasmtime.WasmtimeError as exc:
            raise WasmLoadError(f"{name}: invalid WebAssembly {kind.value}: {first_cause(str(exc))}") from None

    def _store(self, wasm_sha256: str, data: Buffer) -> Path | None:
        try:
            return self.store.put(wasm_sha256, data).path  # type: ignore[arg-type]  # any buffer does
        except Exception as exc:  # noqa: BLE001 - OSError, or the content store's own error
            log.warning("could not store the precompiled blob of %s: %s (running without it)", wasm_sha256[:12], exc)
            return None

    def _load_stored(self, blob: Path, kind: WasmKind) -> Compiled | None:
        """The blob just stored, mapped as on a warm start; None (logged) if wasmtime refuses it."""
        try:
            return self._deserialize(blob, kind)
        except Exception as exc:  # noqa: BLE001 - wasmtime.WasmtimeError; imported lazily
            log.warning("the precompiled blob just stored at %s does not load (%s); using the compiled bytes",
                        blob, str(exc).splitlines()[0] if str(exc) else exc)
            return None


def check_before_compile(wasm_path: Path, name: str, exports: ExportRequirement | None) -> None:
    """What a component's own sections show, in milliseconds: WASIp3 (refused with the rebuild command), then
    the export its trigger calls. Here, on a cache miss only: a warm start does not pay the scan (5-12 ms for a
    20 MB component), and the executor checks the exports of a loaded component anyway."""
    from runtime.wasip3 import refuse_wasip3

    evidence = refuse_wasip3(wasm_path, name)
    if exports is not None and evidence.exports_complete:
        exports.check(evidence.exports, name)


class Artifact(Protocol):
    """A compiled wasm as its serialized bytes (what the store keeps), until ``close``."""

    @property
    def data(self) -> Buffer: ...

    def load(self, engine: wasmtime.Engine, kind: WasmKind) -> Compiled:
        """The compiled object, for when the store could not keep the blob (deserialized from the bytes)."""
        ...

    def close(self) -> None: ...


class _FileArtifact:
    """The compile process's output: an unlinked file, mapped read-only (page cache, not this process's heap)."""

    def __init__(self, file: BinaryIO) -> None:
        import mmap

        self._file = file
        size = os.fstat(file.fileno()).st_size
        if size == 0:
            file.close()
            raise WasmLoadError("the compile process reported success but wrote nothing")
        self._map = mmap.mmap(file.fileno(), size, mmap.MAP_SHARED, mmap.PROT_READ)

    @property
    def data(self) -> Buffer:
        return self._map

    def load(self, engine: wasmtime.Engine, kind: WasmKind) -> Compiled:
        import wasmtime
        from wasmtime import component as wasmtime_component

        data = bytes(self._map)
        if kind is WasmKind.COMPONENT:
            return wasmtime_component.Component.deserialize(engine, data)
        return wasmtime.Module.deserialize(engine, data)

    def close(self) -> None:
        self._map.close()
        self._file.close()


class _InProcessArtifact:
    """A compile done in this process (no compile process could be started): the object itself."""

    def __init__(self, compiled: Compiled) -> None:
        self._compiled = compiled
        self._data = bytes(compiled.serialize())

    @property
    def data(self) -> Buffer:
        return self._data

    def load(self, engine: wasmtime.Engine, kind: WasmKind) -> Compiled:
        return self._compiled

    def close(self) -> None:
        self._data = b""


def release_freed_memory() -> None:
    """Give the heap glibc keeps after freeing (the blob's chunks on their way to the store) back to the system.

    One ``malloc_trim(0)`` after a cold load costs well under a millisecond; without it the freed chunks stay in
    this process's PSS and are inherited by every HTTP worker forked from it. A no-op without glibc.
    """
    import ctypes

    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable: without it a power loss can keep the data but lose the name."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
