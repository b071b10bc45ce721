"""Compile each wasm once per (wasm digest, engine fingerprint); afterwards only mmap the result.

Compiling a real Spin component takes 4-6 s on these machines; loading the serialized artifact with
``deserialize_file`` takes 1-4 ms and shares pages between processes (reference/wasmtime-py-findings.md,
"Precompilation"). So a warm start must never compile, and a cold one compiles exactly the wasm it needs.

Layout, one directory per engine fingerprint and wasm digest::

    <cache_dir>/precompiled/<fingerprint digest>/FINGERPRINT          the full fingerprint, for humans
    <cache_dir>/precompiled/<fingerprint digest>/<wasm sha256>/<size>-<blob sha256>.cwasm

The blob's own size and sha256 are in its *name*, so an entry is self-describing and is published with a single
atomic rename (tmp file + fsync + rename + directory fsync): there is no sidecar that could disagree with its blob.
Concurrent first starts may both compile; each renames a complete file into place (the same name when wasmtime's
output is identical, which it is for one engine config), so readers never see a partial blob. A blob whose size
or digest does not match its name, or that wasmtime refuses to deserialize, is deleted and rebuilt.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Union

from runtime.engine import engine_fingerprint, fingerprint_digest
from runtime.errors import WasmLoadError
from runtime.wasm_binary import WasmKind

if TYPE_CHECKING:
    import wasmtime
    from wasmtime import component as wasmtime_component

    Compiled = Union[wasmtime.Module, wasmtime_component.Component]

log = logging.getLogger(__name__)

PRECOMPILED_DIR_NAME = "precompiled"
_BLOB_NAME = re.compile(r"^(?P<size>\d+)-(?P<sha>[0-9a-f]{64})\.cwasm$")

CacheOutcome = Literal["hit", "compiled", "rebuilt"]


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


class PrecompileCache:
    def __init__(
        self,
        cache_dir: Path,
        engine: wasmtime.Engine,
        *,
        fingerprint: str | None = None,
        verify: Literal["full", "size"] = "full",
    ) -> None:
        self.engine = engine
        self.fingerprint = fingerprint or engine_fingerprint()
        self.root = cache_dir / PRECOMPILED_DIR_NAME / fingerprint_digest(self.fingerprint)
        self.verify = verify

    def entry_dir(self, wasm_sha256: str) -> Path:
        return self.root / wasm_sha256

    def load(self, wasm_path: Path, kind: WasmKind, *, name: str, wasm_sha256: str | None = None) -> tuple[Compiled, CacheResult]:
        """The compiled form of the wasm at ``wasm_path``: from the cache if a valid blob exists, else compiled.

        Raises WasmLoadError (naming ``name``) if the wasm does not compile. Cache write failures (read-only or
        full disk) are logged and otherwise ignored: the cache is an optimisation, never a reason to fail.
        """
        started = time.perf_counter()
        digest = wasm_sha256 or sha256_file(wasm_path)
        entry_dir = self.entry_dir(digest)
        cached, dropped = self._load_cached(entry_dir, kind)
        if cached is not None:
            blob, obj = cached
            return obj, CacheResult("hit", digest, blob, time.perf_counter() - started)

        obj = self._compile(wasm_path, kind, name=name)
        blob = self._store(entry_dir, obj)
        outcome: CacheOutcome = "rebuilt" if dropped else "compiled"
        seconds = time.perf_counter() - started
        log.info("precompiled %s (%s, sha256 %s) in %.2f s -> %s", name, kind.value, digest[:12], seconds, blob)
        return obj, CacheResult(outcome, digest, blob, seconds)

    # ------------------------------------------------------------------------------------------------ reading

    def _load_cached(self, entry_dir: Path, kind: WasmKind) -> tuple[tuple[Path, Compiled] | None, int]:
        """(the first valid cached blob and its object, or None; how many invalid blobs were dropped)."""
        dropped = 0
        try:
            names = sorted(os.listdir(entry_dir))
        except (FileNotFoundError, NotADirectoryError):
            return None, 0
        for blob_name in names:
            match = _BLOB_NAME.match(blob_name)
            if match is None:
                continue  # tmp files of a writer in progress, or foreign files
            blob = entry_dir / blob_name
            problem = self._verify(blob, int(match["size"]), match["sha"])
            if problem is None:
                try:
                    return (blob, self._deserialize(blob, kind)), dropped
                except Exception as exc:  # wasmtime.WasmtimeError; imported lazily
                    problem = f"wasmtime refused it: {str(exc).splitlines()[0]}"
            log.warning("dropping invalid precompiled blob %s: %s", blob, problem)
            dropped += 1
            try:
                blob.unlink()
            except FileNotFoundError:
                pass  # another process dropped it first
        return None, dropped

    def _verify(self, blob: Path, size: int, sha: str) -> str | None:
        try:
            actual_size = blob.stat().st_size
        except FileNotFoundError:
            return "vanished"
        if actual_size != size:
            return f"size {actual_size} != {size} recorded in its name (truncated?)"
        if self.verify == "full" and sha256_file(blob) != sha:
            return "sha256 differs from the one recorded in its name (corrupted)"
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

        wasm = wasm_path.read_bytes()
        try:
            if kind is WasmKind.COMPONENT:
                return wasmtime_component.Component(self.engine, wasm)
            return wasmtime.Module(self.engine, wasm)
        except wasmtime.WasmtimeError as exc:
            raise WasmLoadError(f"{name}: invalid WebAssembly {kind.value}: {_first_cause(str(exc))}") from None

    def _store(self, entry_dir: Path, obj: Compiled) -> Path | None:
        try:
            blob_bytes = bytes(obj.serialize())
            digest = hashlib.sha256(blob_bytes).hexdigest()
            entry_dir.mkdir(parents=True, exist_ok=True)
            self._write_fingerprint_note()
            final = entry_dir / f"{len(blob_bytes)}-{digest}.cwasm"
            fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix=".cwasm", dir=entry_dir)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(blob_bytes)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.rename(tmp_name, final)
            except BaseException:
                try:
                    os.unlink(tmp_name)
                except FileNotFoundError:
                    pass
                raise
            _fsync_dir(entry_dir)
            return final
        except OSError as exc:
            log.warning("could not write the precompile cache under %s: %s (running without it)", entry_dir, exc)
            return None

    def _write_fingerprint_note(self) -> None:
        note = self.root / "FINGERPRINT"
        if not note.exists():
            fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", dir=self.root)
            with os.fdopen(fd, "w") as handle:
                handle.write(self.fingerprint + "\n")
            os.rename(tmp_name, note)


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
