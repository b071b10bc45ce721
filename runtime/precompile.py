"""Compile each wasm once per (wasm digest, engine fingerprint); afterwards only mmap the result.

Compiling a real Spin component takes 4-6 s on these machines; loading the serialized artifact with
``deserialize_file`` takes 1-4 ms and shares pages between processes (reference/wasmtime-py-findings.md,
"Precompilation"). So a warm start must never compile, and a cold one compiles exactly the wasm it needs.

Layout, one directory per engine fingerprint and wasm digest::

    <cache_dir>/precompiled/<fingerprint digest>/FINGERPRINT          the full fingerprint, for humans
    <cache_dir>/precompiled/<fingerprint digest>/<wasm sha256>/<size>-<blob sha256>.cwasm

The blob's own size and sha256 are in its *name*, so an entry is self-describing and is published with a single
atomic rename (tmp file + fsync + rename + directory fsync): there is no sidecar that could disagree with its blob.
That is the LocalBlobStore, used for apps read from the rootfs. Apps read from containerd's content store keep
their blobs there instead (oci/precompiled.py), behind the same BlobStore seam, so that containerd's garbage
collector removes them with their image.

Concurrent first starts compile once: the compile runs under a per-(fingerprint, wasm) file lock, and whoever
waited finds the stored blob. Readers never see a partial blob. A blob whose size or digest does not match what
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
from typing import TYPE_CHECKING, Literal, Protocol, Union

from runtime.engine import engine_fingerprint, fingerprint_digest
from runtime.errors import WasmLoadError
from runtime.verified_blobs import VERIFIED_DIR_NAME, VerifiedBlobs
from runtime.wasm_binary import WasmKind

if TYPE_CHECKING:
    import wasmtime
    from wasmtime import component as wasmtime_component

    Compiled = Union[wasmtime.Module, wasmtime_component.Component]

log = logging.getLogger(__name__)

PRECOMPILED_DIR_NAME = "precompiled"
_BLOB_NAME = re.compile(r"^(?P<size>\d+)-(?P<sha>[0-9a-f]{64})\.cwasm$")

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

    def load(self, wasm_path: Path, kind: WasmKind, *, name: str, wasm_sha256: str | None = None) -> tuple[Compiled, CacheResult]:
        """The compiled form of the wasm at ``wasm_path``: from the store if a valid blob exists, else compiled.

        Concurrent first loads of one wasm (two pods of a new image starting together) compile it once: the
        compile runs under an exclusive lock per (fingerprint, wasm), and whoever waited finds the blob the first
        one stored. Raises WasmLoadError (naming ``name``) if the wasm does not compile. Store failures (read-only
        disk, content store down) are logged and otherwise ignored: the cache is an optimisation, never a reason
        to fail.
        """
        started = time.perf_counter()
        digest = wasm_sha256 or sha256_file(wasm_path)
        cached, dropped = self._load_cached(digest, kind)
        if cached is None:
            with self._compile_lock(digest):
                cached, dropped_again = self._load_cached(digest, kind)
                dropped += dropped_again
                if cached is None:
                    obj = self._compile(wasm_path, kind, name=name)
                    blob = self._store(digest, obj)
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

    def _load_cached(self, wasm_sha256: str, kind: WasmKind) -> tuple[tuple[Path, Compiled] | None, int]:
        """(the first valid stored blob and its object, or None; how many invalid blobs were dropped)."""
        dropped = 0
        try:
            for blob in self.store.candidates(wasm_sha256):
                problem = self._verify(blob)
                if problem is None:
                    try:
                        return (blob.path, self._deserialize(blob.path, kind)), dropped
                    except Exception as exc:  # wasmtime.WasmtimeError; imported lazily
                        problem = f"wasmtime refused it: {str(exc).splitlines()[0]}"
                log.warning("dropping invalid precompiled blob %s: %s", blob.path, problem)
                dropped += 1
                self.store.discard(wasm_sha256, blob)
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

    def _compile(self, wasm_path: Path, kind: WasmKind, *, name: str) -> Compiled:
        import wasmtime
        from wasmtime import component as wasmtime_component

        if kind is WasmKind.COMPONENT:
            from runtime.wasip3 import refuse_wasip3

            # Here, on a cache miss only: a WASIp3 component is never compiled, so never cached, and a warm
            # start does not pay the scan (5-12 ms for a 20 MB component).
            refuse_wasip3(wasm_path, name)
        wasm = wasm_path.read_bytes()
        try:
            if kind is WasmKind.COMPONENT:
                return wasmtime_component.Component(self.engine, wasm)
            return wasmtime.Module(self.engine, wasm)
        except wasmtime.WasmtimeError as exc:
            raise WasmLoadError(f"{name}: invalid WebAssembly {kind.value}: {_first_cause(str(exc))}") from None

    def _store(self, wasm_sha256: str, obj: Compiled) -> Path | None:
        try:
            return self.store.put(wasm_sha256, bytes(obj.serialize())).path
        except Exception as exc:  # noqa: BLE001 - OSError, or the content store's own error
            log.warning("could not store the precompiled blob of %s: %s (running without it)", wasm_sha256[:12], exc)
            return None


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable: without it a power loss can keep the data but lose the name."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _first_cause(message: str) -> str:
    """wasmtime errors are multi-line ("failed to parse ...\\n\\nCaused by:\\n  0: ..."): keep the informative lines."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    lines = [line for line in lines if line != "Caused by:"]
    cleaned = [re.sub(r"^\d+:\s*", "", line) for line in lines]
    return "; ".join(dict.fromkeys(cleaned)) if cleaned else message
