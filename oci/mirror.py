"""A node-local, read-through copy of the content-store blobs our tasks use, as plain files.

Why a copy: wasmtime maps a precompiled component from a *file* (deserialize_file: 1-4 ms, and the page cache
shares its pages between every pod running it), and Spin files are preopened from a directory; containerd only
streams blobs over gRPC and does not tell a shim where its content store lives. So each blob is streamed once per
node into ``<root>/sha256/<hex>`` (digest checked on the way, renamed into place whole) and hard-linked from there.

The files of a files-archive layer are not blobs containerd has: they are kept apart, unpacked once per node into
``<root>/archives/<layer hex>/`` (each file under its own digest, and ``unpacked.json`` listing them). A layer is
unpacked into a staging dir ``<root>/archives/.tmp-<pid>-<random>/`` and renamed into place whole, so a dir named
by a layer is always complete; two pods unpacking the same layer at once both finish, and the one that renames
second uses the first one's dir.

The content store stays the source of truth: a mirrored blob, or an unpacked archive, whose layer containerd has
garbage-collected (its image was removed) is deleted by ``sweep``, which the shim runs after each OCI task load, so
the mirror never outlives containerd's own decision to drop an image. Staging dirs are the unpacking pod's until
its process is gone; ``sweep`` removes those of dead processes only.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from oci.client import ContainerdClient
from oci.errors import ContentStoreError

log = logging.getLogger(__name__)

#: Under the mirror root: one dir per unpacked files-archive layer.
ARCHIVES_DIR = "archives"
#: In an unpacked archive's dir, written last (before the dir is renamed into place): its files and expansion.
UNPACKED_MARKER = "unpacked.json"
#: Staging dirs of archives being unpacked: ``.tmp-<pid>-<random>``.
STAGING_PREFIX = ".tmp-"


def _is_hex_digest(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def _staging_pid(name: str) -> int | None:
    """The pid an archive staging dir is named with; None for a name that is not a staging dir's."""
    if not name.startswith(STAGING_PREFIX):
        return None
    pid_text = name[len(STAGING_PREFIX):].split("-", 1)[0]
    return int(pid_text) if pid_text.isdigit() and int(pid_text) > 0 else None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    return True


def _write_stream(chunks: Iterable[bytes], directory: Path) -> str:
    """``chunks`` into ``directory/<hex>`` through a dot-named tmp file there, hashed on the way; the digest."""
    hasher = hashlib.sha256()
    fd, name = tempfile.mkstemp(prefix=f".stream.{os.getpid()}.", suffix=".tmp", dir=directory)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o644)  # not mkstemp's 0600: a non-root task reads its hard link
            for chunk in chunks:
                hasher.update(chunk)
                handle.write(chunk)
        hex_digest = hasher.hexdigest()
        path = directory / hex_digest
        if path.is_file():
            tmp.unlink()  # already there (the same file twice, or an earlier load)
        else:
            os.replace(tmp, path)
        return "sha256:" + hex_digest
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class UnpackedArchive:
    """A files-archive layer unpacked in the mirror: its dir, its files' digests (in archive order) and how many
    bytes its tar stream expanded to (an image's archives are capped together, also when they are reused)."""

    layer: str
    directory: Path
    files: tuple[str, ...]
    expanded: int
    #: The marker's inode: tells this unpacking from a later one of the same layer.
    marker_ino: int

    def path(self, digest: str) -> Path:
        return self.directory / digest.partition(":")[2]


class ArchiveStaging:
    """A private dir an archive layer is unpacked into, then renamed into place whole (``commit``) or removed
    (``discard``; also what a refused or failed unpacking does, so it leaves nothing)."""

    def __init__(self, mirror: BlobMirror, layer: str) -> None:
        self.mirror = mirror
        self.layer = layer
        self.final = mirror.archive_dir(layer)  # checks the digest before anything is created
        mirror.archives.mkdir(parents=True, exist_ok=True)
        self.directory = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=mirror.archives))
        os.chmod(self.directory, 0o755)
        self._done = False

    def add_stream(self, chunks: Iterable[bytes]) -> str:
        """One file of the archive, a chunk at a time (see BlobMirror.add_stream); its digest."""
        return _write_stream(chunks, self.directory)

    def path(self, digest: str) -> Path:
        return self.directory / digest.partition(":")[2]

    def commit(self, files: Iterable[str], expanded: int) -> UnpackedArchive:
        """Write the marker, then rename the dir into place; if another process got there first with a complete
        dir, that one is used and this one removed (hard links already made from it keep their files)."""
        files = tuple(files)
        marker = self.directory / UNPACKED_MARKER
        marker.write_text(json.dumps({"layer": self.layer, "files": files, "expanded": expanded}))
        os.chmod(marker, 0o644)
        ino = marker.stat().st_ino
        for attempt in range(3):
            try:
                os.rename(self.directory, self.final)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                existing = self.mirror.unpacked(self.layer)
                if existing is not None:
                    self.discard()
                    return existing
                if attempt == 2:
                    raise
                self.mirror._set_aside(self.final)  # not complete (not ours to trust): replaced
                continue
            self._done = True
            return UnpackedArchive(self.layer, self.final, files, expanded, ino)
        raise AssertionError("unreachable")

    def discard(self) -> None:
        if not self._done:
            shutil.rmtree(self.directory, ignore_errors=True)
            self._done = True


class BlobMirror:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "sha256"
        self.archives = root / ARCHIVES_DIR

    def path(self, digest: str) -> Path:
        algorithm, _, hex_digest = digest.partition(":")
        if algorithm != "sha256" or not _is_hex_digest(hex_digest):
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
        """Mirror content whose digest is known only once all of it is read; its digest.

        Written a chunk at a time to a dot-named tmp file in the mirror (``sweep`` skips those), hashed on the way,
        then renamed to its digest: memory holds one chunk, never the content. Whatever stops the stream (an
        exception raised by ``chunks``, a full disk) removes the tmp file, so no partial blob is left.
        """
        self.blobs.mkdir(parents=True, exist_ok=True)
        return _write_stream(chunks, self.blobs)

    def drop(self, digest: str) -> None:
        try:
            self.path(digest).unlink()
        except FileNotFoundError:
            pass

    # ------------------------------------------------------------------------------------------- files archives

    def archive_dir(self, layer: str) -> Path:
        return self.archives / self.path(layer).name

    def unpacked(self, layer: str) -> UnpackedArchive | None:
        """The layer's unpacked archive, or None when it is not (completely) unpacked."""
        directory = self.archive_dir(layer)
        try:
            with open(directory / UNPACKED_MARKER, "rb") as handle:
                ino = os.fstat(handle.fileno()).st_ino
                record = json.loads(handle.read())
            files = tuple(record["files"])
            expanded = int(record["expanded"])
            if record.get("layer") != layer or not all(isinstance(f, str) for f in files):
                return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return UnpackedArchive(layer, directory, files, expanded, ino)

    def stage_archive(self, layer: str) -> ArchiveStaging:
        """A fresh staging dir for unpacking ``layer``; the caller commits or discards it."""
        return ArchiveStaging(self, layer)

    def drop_unpacked(self, unpacked: UnpackedArchive) -> None:
        """Remove an unpacked archive found broken (a file of it missing), unless it was unpacked again since."""
        try:
            if (unpacked.directory / UNPACKED_MARKER).stat().st_ino != unpacked.marker_ino:
                return
        except FileNotFoundError:
            return
        self._set_aside(unpacked.directory)

    def _set_aside(self, directory: Path) -> bool:
        """Take an archive dir out of its place at once (a rename to a staging name of ours), then remove it."""
        aside = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-gone-", dir=self.archives))
        try:
            os.rename(directory, aside / "dir")
        except FileNotFoundError:
            return False
        finally:
            shutil.rmtree(aside, ignore_errors=True)
        return True

    def _sweep_staging(self, entries: list[Path]) -> None:
        for entry in entries:
            pid = _staging_pid(entry.name)
            if pid is not None and not _alive(pid):
                shutil.rmtree(entry, ignore_errors=True)

    # ------------------------------------------------------------------------------------------------ the sweep

    def sweep(self, client: ContainerdClient, keep: Iterable[str] = ()) -> list[str]:
        """Delete mirrored blobs and unpacked archives whose layer containerd no longer has, and staging dirs of
        processes that are gone; the digests whose blob or unpacked archive was deleted."""
        kept = set(keep)
        try:
            blobs = {e.name for e in self.blobs.iterdir() if _is_hex_digest(e.name)}  # not tmp files
        except FileNotFoundError:
            blobs = set()
        try:
            archive_entries = list(self.archives.iterdir())
        except FileNotFoundError:
            archive_entries = []
        self._sweep_staging(archive_entries)  # needs no containerd
        archives = {e.name for e in archive_entries if _is_hex_digest(e.name)}
        removed = []
        for hex_digest in sorted(blobs | archives):
            digest = f"sha256:{hex_digest}"
            if digest in kept:
                continue
            try:
                client.info(digest)
            except ContentStoreError as exc:
                if not exc.not_found:
                    log.debug("mirror sweep stopped: %s", exc)
                    break
                if hex_digest in blobs:
                    self.drop(digest)
                if hex_digest in archives:
                    self._set_aside(self.archives / hex_digest)
                removed.append(digest)
        return removed
