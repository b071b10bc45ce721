"""Which layers of an image make a Spin app: the pure half of reading an OCI artifact (no I/O, unit-tested).

Follows containerd-shim-spin's source selection (containerd-shim-spin containerd-shim-spin/src/source.rs
``Source::from_ctx``): a locked-app layer (or, in
artifacts from older Spin releases, a locked-app *config*) makes a Spin app whose wasm and files are the other
layers; a single `application/wasm` layer and nothing else is a wkg package; an image with none of Spin's media
types is not an artifact at all (the shim then looks for spin.toml in the rootfs, as for any image).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from oci import media_types as mt
from oci.errors import ArtifactError


@dataclass(frozen=True)
class Blob:
    media_type: str
    digest: str
    size: int


@dataclass(frozen=True)
class SpinArtifact:
    #: The locked app (a layer, or the manifest's config in old artifacts); None for a wkg package.
    locked_app: Blob | None
    wasm: tuple[Blob, ...]
    data: tuple[Blob, ...]
    archives: tuple[Blob, ...]

    @property
    def is_package(self) -> bool:
        return self.locked_app is None


def parse_manifest_json(raw: bytes, image: str) -> dict[str, Any]:
    try:
        manifest = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise ArtifactError(f"image {image}: its manifest is not JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"image {image}: its manifest is not a JSON object")
    return manifest


def is_index(manifest: dict[str, Any]) -> bool:
    return manifest.get("mediaType") in (mt.OCI_INDEX, mt.DOCKER_MANIFEST_LIST) or "manifests" in manifest


def wasm_child(index: dict[str, Any], image: str) -> str | None:
    """The digest of the index entry for platform wasm (Spin artifacts are pushed as one manifest, but an index
    wrapping one, e.g. made by a mirroring tool, should still run); None when the index has no wasm entry."""
    for entry in index.get("manifests") or []:
        platform = entry.get("platform") or {} if isinstance(entry, dict) else {}
        if platform.get("architecture") == mt.WASM_ARCHITECTURE and isinstance(entry.get("digest"), str):
            return str(entry["digest"])
    return None


def spin_artifact(manifest: dict[str, Any], image: str) -> SpinArtifact | None:
    """The Spin parts of an image manifest; None if it has none. Raises ArtifactError for a Spin-typed image that
    cannot run (wasm layers without a locked app, a malformed layer list)."""
    layers = [_blob(entry, image) for entry in _list(manifest, "layers", image)]
    config = manifest.get("config")
    config_blob = _blob(config, image) if isinstance(config, dict) else None

    locked = [layer for layer in layers if layer.media_type == mt.SPIN_APPLICATION]
    if not locked and config_blob is not None and config_blob.media_type == mt.SPIN_APPLICATION:
        locked = [config_blob]
    if len(locked) > 1:
        raise ArtifactError(f"image {image}: {len(locked)} locked-app layers ({mt.SPIN_APPLICATION}); expected one")
    wasm = tuple(layer for layer in layers if layer.media_type in mt.WASM_LAYER_TYPES)
    data = tuple(layer for layer in layers if layer.media_type == mt.DATA_LAYER)
    archives = tuple(layer for layer in layers if layer.media_type == mt.ARCHIVE_LAYER)
    if locked:
        return SpinArtifact(locked[0], wasm, data, archives)
    if not (wasm or data or archives):
        return None
    if len(wasm) == 1 and len(layers) == 1:
        return SpinArtifact(None, wasm, (), ())
    raise ArtifactError(
        f"image {image}: it has Spin layers ({len(wasm)} wasm, {len(data)} data, {len(archives)} archive) but no "
        f"locked app ({mt.SPIN_APPLICATION}) saying how they make an app; push it with `spin registry push` or "
        "`containerd-shim-spin-v2 push`"
    )


def _list(manifest: dict[str, Any], key: str, image: str) -> list[Any]:
    value = manifest.get(key, [])
    if not isinstance(value, list):
        raise ArtifactError(f"image {image}: manifest `{key}` is not a list")
    return value


def _blob(entry: Any, image: str) -> Blob:
    if not isinstance(entry, dict) or not isinstance(entry.get("digest"), str) or not isinstance(
        entry.get("mediaType"), str
    ):
        raise ArtifactError(f"image {image}: a manifest descriptor lacks mediaType or digest: {entry!r}")
    size = entry.get("size", 0)
    return Blob(entry["mediaType"], entry["digest"], size if isinstance(size, int) else 0)
