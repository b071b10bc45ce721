"""From a container to a locked-app directory: find its image in containerd, read the Spin layers, lay them out.

Run by the instance process at task create, only when the rootfs holds no app (a Spin artifact's rootfs is an
empty snapshot: containerd >= 1.7 unpacks only tar layers, see containerd client/image.go getLayers). The result is the
directory runtime.locked_app reads (``spin.lock`` + ``blobs/sha256/<hex>``), built from hard links into the node's
BlobMirror, so a warm start streams nothing but the manifest and the locked app (and unpacks no files archive: the
mirror keeps each one unpacked, by layer, until containerd drops the layer).

Everything read here is image content (README, "Security model"), so every read is bounded: the
manifests and the lock are read whole only up to a cap, and files archives (gzipped tars) are streamed member by
member into a staging dir of the mirror, a chunk at a time, under caps on what they expand to, how many entries
they hold and how big one file or header may be. Going past a cap is an ArtifactError naming the image, the layer
and the cap.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from oci import media_types as mt
from oci.artifact import Blob, SpinArtifact, is_index, parse_manifest_json, spin_artifact, wasm_child
from oci.client import ContainerdClient
from oci.errors import ArtifactError, BlobTooLargeError
from oci.mirror import BlobMirror
from runtime.capped_read import describe_cap
from runtime.locked_app import BLOBS_DIR, LOCK_FILE_NAME, LOCK_MAX_BYTES, blob_path

log = logging.getLogger(__name__)

# Caps on what an image makes this process read and write. They are constants, not settings: find_image_app runs
# in the instance process before any settings reach it, and the one configuration a task carries (its environment)
# is the image author's, who must not be able to raise a cap that protects the node. Tests lower them by patching.
#
#: A Spin files archive (one `files` mount's directory, gzipped by `spin registry push`) may expand to at most this
#: (its whole tar stream: files, headers, padding). Spin apps ship static assets read by a Wasm guest (a site,
#: templates, data files); hundreds of MiB is already a very large app, and a layer of a few MiB of gzip must not
#: be able to fill the node's cache disk (zeros compress ~1000:1).
ARCHIVE_MAX_EXPANDED_BYTES = 1 << 30
#: ... and all the archives of one image together: an image may carry many archive layers.
IMAGE_MAX_EXPANDED_BYTES = 4 << 30
#: One file of an archive. Spin archives an app's files only past 499 layers (or with SPIN_OCI_ARCHIVE_LAYERS), so
#: archives hold many files, typically small (a site's pages and images); half the archive cap still fits a large
#: asset, and no single entry can claim the whole budget.
ARCHIVE_MAX_MEMBER_BYTES = 512 << 20
#: Entries (files, directories, links) of one archive. A big static site is thousands of files; every entry costs
#: a mirror file and an inode, so 100,000 keeps a hostile archive's cost to seconds.
ARCHIVE_MAX_MEMBERS = 100_000
#: The data of one tar header (a GNU long name, a pax header), and of all an archive's global pax headers, which
#: tarfile keeps for the rest of the archive: a path is at most 4 KiB, so real headers are far below this. tarfile
#: reads this data whole, so it is checked before tarfile reads it.
ARCHIVE_MAX_HEADER_BYTES = 1 << 20
#: An image manifest or index, read whole: the OCI distribution spec asks registries to accept manifests of at
#: least 4 MiB, and real ones (even with thousands of layers) are far smaller.
MANIFEST_MAX_BYTES = 4 << 20
#: How much of an archive is in memory at a time.
STREAM_CHUNK_BYTES = 1 << 20

#: Component id and route Spin gives a bare wasm package run as an app (`spin up --from <wasm>`).
PACKAGE_COMPONENT_ID = "main"
PACKAGE_ROUTE = "/..."


@dataclass(frozen=True)
class ImageApp:
    image: str
    manifest_digest: str
    artifact: SpinArtifact
    app_dir: Path

    @property
    def wasm_layers(self) -> frozenset[str]:
        return frozenset(blob.digest for blob in self.artifact.wasm)

    @property
    def digests(self) -> frozenset[str]:
        """Every blob of the image this app uses (kept by the mirror sweep)."""
        blobs = (*self.artifact.wasm, *self.artifact.data, *self.artifact.archives)
        return frozenset(blob.digest for blob in blobs)


def find_image_app(client: ContainerdClient, container_id: str, image_hint: str | None, mirror: BlobMirror,
                   app_dir: Path) -> ImageApp | None:
    """Lay out the container's Spin app in ``app_dir`` (an empty directory); None if its image has no Spin layers.

    Raises ArtifactError for a Spin image that cannot run, ContentStoreError when containerd cannot give what the
    image names; the caller owns (and removes) ``app_dir``.
    """
    image = image_hint or client.container_image(container_id)
    if not image:
        return None
    target = client.image_target(image)
    manifest_digest = target.digest
    manifest = parse_manifest_json(_read_whole(client, manifest_digest, target.size, MANIFEST_MAX_BYTES,
                                               "manifest", image), image)
    if is_index(manifest):
        child = wasm_child(manifest, image)
        if child is None:
            return None
        manifest_digest = child
        manifest = parse_manifest_json(_read_whole(client, child, None, MANIFEST_MAX_BYTES, "manifest", image),
                                       image)
    artifact = spin_artifact(manifest, image)
    if artifact is None:
        return None
    (app_dir / BLOBS_DIR).mkdir(parents=True)
    _lay_out(client, artifact, mirror, app_dir, image)
    log.debug("image %s (%s): Spin app laid out in %s", image, manifest_digest, app_dir)
    return ImageApp(image, manifest_digest, artifact, app_dir)


def _lay_out(client: ContainerdClient, artifact: SpinArtifact, mirror: BlobMirror, app_dir: Path, image: str) -> None:
    if artifact.locked_app is not None:
        locked = artifact.locked_app
        lock = _read_whole(client, locked.digest, locked.size, LOCK_MAX_BYTES, "locked app", image)
    else:
        lock = _package_lock(artifact.wasm[0], image)
    (app_dir / LOCK_FILE_NAME).write_bytes(lock)
    for blob in (*artifact.wasm, *artifact.data):
        _link(mirror.ensure(client, blob.digest), app_dir, blob.digest)
    budget = _ImageBudget(IMAGE_MAX_EXPANDED_BYTES)
    for archive in artifact.archives:
        _lay_out_archive(client, archive.digest, mirror, app_dir, image, budget)


def _lay_out_archive(client: ContainerdClient, layer: str, mirror: BlobMirror, app_dir: Path, image: str,
                     budget: _ImageBudget) -> None:
    """Link a files archive's files into ``app_dir``: from its unpacked dir in the mirror when an earlier start
    unpacked it (nothing is read or unpacked then), else unpacked now.

    A sweep by another pod may remove the unpacked dir while it is linked from (only when containerd no longer has
    the layer, or when a file of it is gone): the layer is then unpacked again, and containerd says whether it is
    still there."""
    unpacked = mirror.unpacked(layer)
    if unpacked is not None:
        _charge_unpacked(budget, unpacked.expanded, layer, image)
        try:
            for digest in unpacked.files:
                _link(unpacked.path(digest), app_dir, digest)
            return
        except FileNotFoundError:
            log.debug("image %s: files archive layer %s: its unpacked files went away while linked; unpacking "
                      "it again", image, layer)
            budget.left += unpacked.expanded
            mirror.drop_unpacked(unpacked)
    _unpack_archive(mirror.ensure(client, layer), layer, mirror, image, budget, app_dir)


def _charge_unpacked(budget: _ImageBudget, expanded: int, layer: str, image: str) -> None:
    """An archive unpacked by an earlier start counts against the caps as if it were unpacked again, so whether
    an image runs does not depend on what the node's mirror holds."""
    image_bound = budget.left < ARCHIVE_MAX_EXPANDED_BYTES
    if expanded > min(ARCHIVE_MAX_EXPANDED_BYTES, budget.left):
        raise ArtifactError(f"image {image}: files archive layer {layer}: {_past_cap(image_bound)}")
    budget.left -= expanded


def _read_whole(client: ContainerdClient, digest: str, declared: int | None, cap: int, what: str,
                image: str) -> bytes:
    """A manifest or lock, in memory: refused when its descriptor says it is larger than ``cap`` (before any
    read), or when containerd has more than ``cap`` bytes of it (the descriptor may lie or be missing)."""
    if declared is not None and declared > cap:
        raise ArtifactError(
            f"image {image}: its {what} {digest} is {declared} bytes, more than {describe_cap(cap)}, the most this "
            f"shim reads of a {what}")
    try:
        return client.read(digest, max_bytes=cap)
    except BlobTooLargeError:
        raise ArtifactError(
            f"image {image}: its {what} {digest} is larger than {describe_cap(cap)}, the most this shim reads of a "
            f"{what}") from None


def _link(source: Path, app_dir: Path, digest: str) -> None:
    target = blob_path(app_dir, digest.partition(":")[2])
    try:
        os.link(source, target)
    except FileExistsError:
        pass  # the same content twice (Spin dedupes layers, but an archive may repeat a data layer)


def _unpack_archive(archive: Path, layer: str, mirror: BlobMirror, image: str,
                    budget: _ImageBudget | None = None, app_dir: Path | None = None) -> list[str]:
    """Every regular file of a files archive, unpacked under its own digest (as Spin's cache stores them) into the
    mirror's dir for the layer (BlobMirror.unpacked); the files' digests, in archive order.

    Unpacked into a staging dir named with this process's pid (a sweep leaves it alone while the process lives),
    linked from there into ``app_dir`` when one is given, and only then renamed into place whole: a sweep removing
    the layer's dir at any point cannot take a file the app needs.

    Streamed: tarfile's stream mode ("r|": no seeking, headers in order) over our own gzip reader, which counts the
    expanded bytes; each file goes to the staging dir a chunk at a time (ArchiveStaging.add_stream), so memory
    holds a chunk and a header, never a file. Raises ArtifactError naming the image, the layer and the cap gone
    past, or saying the layer is not a gzipped tar; then the staging dir is removed, leaving nothing.
    """
    budget = budget if budget is not None else _ImageBudget(IMAGE_MAX_EXPANDED_BYTES)
    staging = mirror.stage_archive(layer)
    try:
        digests = []
        try:
            with open(archive, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
                stream = _ExpandedStream(unzipped, budget)
                with _BoundedTarFile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[arg-type]
                    for member in _members(tar):
                        if member.isfile():
                            _check_file(member, stream)
                            digests.append(staging.add_stream(_file_chunks(tar, member)))
        except _CapExceeded as exc:
            raise ArtifactError(f"image {image}: files archive layer {layer}: {exc}") from None
        except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error, RecursionError) as exc:
            raise ArtifactError(f"image {image}: files archive layer {layer} is not a gzipped tar ({exc})") from None
        if app_dir is not None:
            for digest in digests:
                _link(staging.path(digest), app_dir, digest)
        staging.commit(digests, stream.count)
        budget.left -= stream.count
    finally:
        staging.discard()  # a no-op once committed
    return digests


class _CapExceeded(Exception):
    """An archive went past a cap; the message says which (the caller names the image and the layer)."""


@dataclass
class _ImageBudget:
    """What the archives of one image may still expand to, together."""

    left: int


class _ExpandedStream:
    """The decompressed tar stream that tarfile reads, counted: past the archive's cap (or what the image's other
    archives left of the image's) it raises _CapExceeded, whatever the bytes are (files, headers, padding)."""

    def __init__(self, source: IO[bytes], budget: _ImageBudget) -> None:
        self._source = source
        self.count = 0
        self.limit = min(ARCHIVE_MAX_EXPANDED_BYTES, budget.left)
        self._image_bound = budget.left < ARCHIVE_MAX_EXPANDED_BYTES

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(STREAM_CHUNK_BYTES if size < 0 else min(size, STREAM_CHUNK_BYTES))
        self.count += len(data)
        if self.count > self.limit:
            raise _CapExceeded(self.past_cap())
        return data

    def expect(self, size: int, name: str) -> None:
        """Refuse a file whose declared size would take the stream past its cap."""
        if self.count + size > self.limit:
            raise _CapExceeded(f"file {_shown(name)} ({size} bytes) {self.past_cap()}")

    def past_cap(self) -> str:
        return _past_cap(self._image_bound)


def _past_cap(image_bound: bool) -> str:
    if image_bound:
        return (f"expands past {describe_cap(IMAGE_MAX_EXPANDED_BYTES)} with the image's other files archives, "
                "the most all files archives of an image may expand to")
    return f"expands past {describe_cap(ARCHIVE_MAX_EXPANDED_BYTES)}, the most one files archive may expand to"


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile's TarInfo with its unbounded header reads refused first.

    tarfile reads the data of a GNU long-name or pax header whole into memory, keeps global pax headers for the
    rest of the archive, and turns a sparse map into a list, all before it yields the member: a bomb there would
    be in memory before any cap on members saw it. These are tarfile internals (stable since Python 2.x; the unit
    tests check they are still there). Spin's push never writes sparse files, so they are refused outright.
    """

    def _proc_member(self, tarfile_: Any) -> Any:
        if self.type in _HEADER_TYPES:
            if self.size > ARCHIVE_MAX_HEADER_BYTES:
                raise _CapExceeded(f"a tar header holds {self.size} bytes, more than the "
                                   f"{describe_cap(ARCHIVE_MAX_HEADER_BYTES)} a tar header may hold")
            if self.type == tarfile.XGLTYPE:
                tarfile_.global_header_bytes += self.size
                if tarfile_.global_header_bytes > ARCHIVE_MAX_HEADER_BYTES:
                    raise _CapExceeded(f"its global pax headers hold more than "
                                       f"{describe_cap(ARCHIVE_MAX_HEADER_BYTES)}, the most a tar header may hold")
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise _CapExceeded(_SPARSE)
        return super()._proc_member(tarfile_)

    def _proc_gnusparse_10(self, next: Any, pax_headers: Any, tarfile_: Any) -> None:  # noqa: A002 (tarfile's)
        raise _CapExceeded(_SPARSE)


_HEADER_TYPES = frozenset({tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                           tarfile.SOLARIS_XHDTYPE})
_SPARSE = "holds a sparse file, which Spin's push never makes; refusing it"


class _BoundedTarFile(tarfile.TarFile):
    tarinfo = _BoundedTarInfo
    global_header_bytes = 0


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The archive's entries, at most ARCHIVE_MAX_MEMBERS of them; tarfile's list of seen members is emptied as it
    goes (stream mode cannot go back to them anyway), so 100,000 entries do not pile up in memory."""
    count = 0
    while (member := tar.next()) is not None:
        tar.members.clear()
        count += 1
        if count > ARCHIVE_MAX_MEMBERS:
            raise _CapExceeded(f"holds more than {ARCHIVE_MAX_MEMBERS} entries, the most a files archive may hold")
        if member.sparse is not None:
            raise _CapExceeded(_SPARSE)
        yield member


def _check_file(member: tarfile.TarInfo, stream: _ExpandedStream) -> None:
    """Refuse a file whose declared size is past a cap before any of it is written (the stream would also stop it,
    but only after a cap's worth had gone to disk). A file too big for the archive is named by that cap first."""
    stream.expect(member.size, member.name)
    if member.size > ARCHIVE_MAX_MEMBER_BYTES:
        raise _CapExceeded(f"file {_shown(member.name)} is {member.size} bytes, more than "
                           f"{describe_cap(ARCHIVE_MAX_MEMBER_BYTES)}, the most one file of a files archive may be")


def _file_chunks(tar: tarfile.TarFile, member: tarfile.TarInfo) -> Iterator[bytes]:
    """One file's bytes, a chunk at a time."""
    handle = tar.extractfile(member)
    if handle is None:
        return
    with handle:
        while chunk := handle.read(STREAM_CHUNK_BYTES):
            yield chunk


def _shown(name: str) -> str:
    """A member name for a message: it is the image's, so quoted, and cut short."""
    return repr(name if len(name) <= 120 else name[:120] + "...")


def _package_lock(wasm: Blob, image: str) -> bytes:
    """The lock Spin makes for a bare component package: one component behind an HTTP catch-all route."""
    lock = {
        "spin_lock_version": 0,
        "metadata": {"name": image, "trigger": {"type": "http"}},
        "triggers": [{"id": f"trigger-{PACKAGE_COMPONENT_ID}", "trigger_type": "http",
                      "trigger_config": {"component": PACKAGE_COMPONENT_ID, "route": PACKAGE_ROUTE}}],
        "components": [{"id": PACKAGE_COMPONENT_ID,
                        "source": {"content_type": mt.WKG_WASM_LAYER, "digest": wasm.digest}}],
    }
    return json.dumps(lock).encode()

