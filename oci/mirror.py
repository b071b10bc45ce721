"""A node-local, read-through copy of the content-store blobs our tasks use, as plain files.

Why a copy: wasmtime maps a precompiled component from a *file* (deserialize_file: 1-4 ms, and the page cache
shares its pages between every pod running it), and Spin files are preopened from a directory; containerd only
streams blobs over gRPC and does not tell a shim where its content store lives. So each blob is streamed once per
node into ``<root>/sha256/<hex>`` (digest checked on the way, renamed into place whole) and hard-linked from there.

The content store stays the source of truth: a mirrored blob whose original containerd has garbage-collected
(its image was removed) is deleted by ``sweep``, which the shim runs after each OCI task load, so the mirror
never outlives containerd's own decision to drop an image.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from oci.client import ContainerdClient
from oci.errors import ContentStoreError

log = logging.getLogger(__name__)


class BlobMirror:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "sha256"

    def path(self, digest: str) -> Path:
        algorithm, _, hex_digest = digest.partition(":")
        if algorithm != "sha256" or len(hex_digest) != 64 or not all(c in "0123456789abcdef" for c in hex_digest):
            raise ContentStoreError(f"{digest!r} is not a sha256 digest")
        return self.blobs / hex_digest

    def ensure(self, client: ContainerdClient, digest: str) -> Path:
        """The local file of a blob, streamed from containerd when it is not mirrored yet."""
        path = self.path(digest)
        if not path.is_file():
            self.blobs.mkdir(parents=True, exist_ok=True)
            client.read_into(digest, path)
        return path

    def add(self, digest: str, data: bytes) -> Path:
        """Mirror bytes we already hold (a blob we just wrote to containerd)."""
        path = self.path(digest)
        if not path.is_file():
            self.blobs.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return path

    def add_stream(self, chunks: Iterable[bytes]) -> str:
        """Mirror content whose digest is known only once all of it is read (an archive member); its digest.

        Written a chunk at a time to a dot-named tmp file in the mirror (``sweep`` skips those), hashed on the way,
        then renamed to its digest: memory holds one chunk, never the content. Whatever stops the stream (a cap
        raised by ``chunks``, a corrupt archive, a full disk) removes the tmp file, so no partial blob is left.
        """
        self.blobs.mkdir(parents=True, exist_ok=True)
        hasher = hashlib.sha256()
        fd, name = tempfile.mkstemp(prefix=f".stream.{os.getpid()}.", suffix=".tmp", dir=self.blobs)
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as handle:
                os.fchmod(handle.fileno(), 0o644)  # not mkstemp's 0600: a non-root task reads its hard link
                for chunk in chunks:
                    hasher.update(chunk)
                    handle.write(chunk)
            digest = "sha256:" + hasher.hexdigest()
            path = self.path(digest)
            if path.is_file():
                tmp.unlink()  # already mirrored (the same file in two archives, or an earlier load)
            else:
                os.replace(tmp, path)
            return digest
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def drop(self, digest: str) -> None:
        try:
            self.path(digest).unlink()
        except FileNotFoundError:
            pass

    def sweep(self, client: ContainerdClient, keep: Iterable[str] = ()) -> list[str]:
        """Delete mirrored blobs that containerd no longer has; the digests deleted."""
        kept = set(keep)
        removed = []
        try:
            entries = list(self.blobs.iterdir())
        except FileNotFoundError:
            return removed
        for entry in entries:
            digest = f"sha256:{entry.name}"
            if entry.name.startswith(".") or digest in kept:
                continue
            try:
                client.info(digest)
            except ContentStoreError as exc:
                if not exc.not_found:
                    log.debug("mirror sweep stopped: %s", exc)
                    break
                self.drop(digest)
                removed.append(digest)
        return removed
