"""From a container to a locked-app directory: find its image in containerd, read the Spin layers, lay them out.

Run by the instance process at task create, only when the rootfs holds no app (a Spin artifact's rootfs is an
empty snapshot: containerd >= 1.7 unpacks no layer of it; reference/containerd-test-env.md §4). The result is the
directory runtime.locked_app reads (``spin.lock`` + ``blobs/sha256/<hex>``), built from hard links into the node's
BlobMirror, so a warm start streams nothing but the manifest and the locked app.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from oci import media_types as mt
from oci.artifact import Blob, SpinArtifact, is_index, parse_manifest_json, spin_artifact, wasm_child
from oci.client import ContainerdClient
from oci.errors import ArtifactError
from oci.mirror import BlobMirror
from runtime.locked_app import BLOBS_DIR, LOCK_FILE_NAME, blob_path

log = logging.getLogger(__name__)

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
    manifest = parse_manifest_json(client.read(manifest_digest), image)
    if is_index(manifest):
        child = wasm_child(manifest, image)
        if child is None:
            return None
        manifest_digest = child
        manifest = parse_manifest_json(client.read(child), image)
    artifact = spin_artifact(manifest, image)
    if artifact is None:
        return None
    (app_dir / BLOBS_DIR).mkdir(parents=True)
    _lay_out(client, artifact, mirror, app_dir, image)
    log.debug("image %s (%s): Spin app laid out in %s", image, manifest_digest, app_dir)
    return ImageApp(image, manifest_digest, artifact, app_dir)


def _lay_out(client: ContainerdClient, artifact: SpinArtifact, mirror: BlobMirror, app_dir: Path, image: str) -> None:
    if artifact.locked_app is not None:
        lock = client.read(artifact.locked_app.digest)
    else:
        lock = _package_lock(artifact.wasm[0], image)
    (app_dir / LOCK_FILE_NAME).write_bytes(lock)
    for blob in (*artifact.wasm, *artifact.data):
        _link(mirror.ensure(client, blob.digest), app_dir, blob.digest)
    for archive in artifact.archives:
        for digest in _unpack_archive(mirror.ensure(client, archive.digest), mirror, image):
            _link(mirror.path(digest), app_dir, digest)


def _link(source: Path, app_dir: Path, digest: str) -> None:
    target = blob_path(app_dir, digest.partition(":")[2])
    try:
        os.link(source, target)
    except FileExistsError:
        pass  # the same content twice (Spin dedupes layers, but an archive may repeat a data layer)


def _unpack_archive(archive: Path, mirror: BlobMirror, image: str) -> list[str]:
    """Every regular file of a files archive, mirrored under its own digest (as Spin's cache stores them)."""
    digests = []
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                handle = tar.extractfile(member)
                data = handle.read() if handle is not None else b""
                digest = "sha256:" + hashlib.sha256(data).hexdigest()
                mirror.add(digest, data)
                digests.append(digest)
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise ArtifactError(f"image {image}: files archive {archive.name} is not a gzipped tar ({exc})") from None
    return digests


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

