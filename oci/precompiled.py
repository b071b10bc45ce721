"""Precompiled components kept in containerd's content store, next to the image they were compiled from.

runwasi's scheme (runwasi crates/containerd-shim-wasm/src/containerd/client.rs ``load_modules``), with our own
key: on a miss the compiled blob is written with Content/Write under a short lease, then labelled from the wasm
layer and the image manifest:

    layer     containerd-shim-spin.python/precompiled/<engine key> = sha256:<compiled>     (lookup)
    layer     containerd.io/gc.ref.content.spin-precompiled.<engine key> = sha256:<compiled>  (GC reference)
    manifest  containerd.io/gc.ref.content.spin-precompiled.<engine key>.<layer hex[:16]> = sha256:<compiled>
    compiled  containerd-shim-spin.python/precompiled-from = sha256:<layer>

The gc.ref labels make containerd's garbage collector keep the compiled blob exactly as long as the image (its
manifest and layer) and drop it with the image; the lease protects it between commit and labelling. The engine
key is runtime.engine's fingerprint digest (wasmtime build, engine settings, CPU features, operator salt), so a
blob made by another engine is never even looked up: it sits under another key. A blob that fails verification
or deserialization is unlabelled (and so collected) and rebuilt.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
from collections.abc import Iterator

from oci.client import ContainerdClient
from oci.errors import ContentStoreError
from oci.mirror import BlobMirror
from runtime.precompile import StoredBlob

log = logging.getLogger(__name__)

LABEL_PREFIX = "containerd-shim-spin.python/precompiled/"
FROM_LABEL = "containerd-shim-spin.python/precompiled-from"
GC_REF_PREFIX = "containerd.io/gc.ref.content.spin-precompiled."
#: Long enough for a slow commit + label; a crashed shim's lease then expires and GC reclaims the blob.
LEASE_TTL = datetime.timedelta(hours=1)


def lookup_label(key: str) -> str:
    return LABEL_PREFIX + key


class ContentStoreBlobs:
    """runtime.precompile.BlobStore over containerd's content store, for the wasm layers of one image."""

    def __init__(self, client: ContainerdClient, mirror: BlobMirror, key: str, manifest_digest: str,
                 wasm_layers: frozenset[str]) -> None:
        self._client = client
        self._mirror = mirror
        self._key = key
        self._manifest = manifest_digest
        self._layers = wasm_layers  # layer digests ("sha256:<hex>"); the wasm's sha256 is its layer digest

    def candidates(self, wasm_sha256: str) -> Iterator[StoredBlob]:
        layer = f"sha256:{wasm_sha256}"
        if layer not in self._layers:
            return
        try:
            compiled = self._client.info(layer).labels.get(lookup_label(self._key))
        except ContentStoreError as exc:
            log.warning("precompile lookup for %s failed: %s", layer, exc)
            return
        if not compiled:
            return
        try:
            path = self._mirror.ensure(self._client, compiled)
        except ContentStoreError as exc:
            # Labelled but unreadable (collected by hand, or corrupt): forget it, compile again.
            log.warning("precompiled blob %s of %s is unusable (%s); dropping its labels", compiled, layer, exc)
            self._unlabel(layer, compiled)
            return
        yield StoredBlob(path, path.stat().st_size, compiled.partition(":")[2])

    def discard(self, wasm_sha256: str, blob: StoredBlob) -> None:
        compiled = f"sha256:{blob.sha256}"
        self._unlabel(f"sha256:{wasm_sha256}", compiled)
        self._mirror.drop(compiled)

    def put(self, wasm_sha256: str, data: bytes) -> StoredBlob:
        layer = f"sha256:{wasm_sha256}"
        if layer not in self._layers:
            raise ContentStoreError(f"sha256:{wasm_sha256[:12]} is not a layer of the image; not caching it")
        with self._client.lease("precompile", LEASE_TTL) as lease:
            compiled = self._client.write(data, {FROM_LABEL: layer}, lease)
            self._client.set_labels(layer, {lookup_label(self._key): compiled, GC_REF_PREFIX + self._key: compiled})
            self._client.set_labels(self._manifest, {self._manifest_ref(layer): compiled})
        path = self._mirror.add(compiled, data)
        log.info("stored precompiled %s as %s in containerd's content store", layer, compiled)
        return StoredBlob(path, len(data), hashlib.sha256(data).hexdigest())

    def _manifest_ref(self, layer: str) -> str:
        return f"{GC_REF_PREFIX}{self._key}.{layer.partition(':')[2][:16]}"

    def _unlabel(self, layer: str, compiled: str) -> None:
        try:
            if self._client.info(layer).labels.get(lookup_label(self._key)) == compiled:
                self._client.set_labels(layer, {lookup_label(self._key): "", GC_REF_PREFIX + self._key: ""})
            self._client.set_labels(self._manifest, {self._manifest_ref(layer): ""})
        except ContentStoreError as exc:
            log.warning("could not unlabel precompiled blob %s: %s", compiled, exc)
