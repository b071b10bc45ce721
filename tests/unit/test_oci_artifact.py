"""Which layers of an image make a Spin app (oci.artifact): the shapes `spin registry push`, older Spin releases
and wkg produce, and the images that are not Spin artifacts at all."""

from __future__ import annotations

import json

import pytest

from oci import media_types as mt
from oci.artifact import is_index, parse_manifest_json, spin_artifact, wasm_child
from oci.errors import ArtifactError


def desc(media_type: str, n: int) -> dict:
    return {"mediaType": media_type, "digest": f"sha256:{n:064x}", "size": n}


def manifest(layers: list[dict], config: dict | None = None) -> dict:
    return {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": config or desc(mt.OCI_CONFIG, 99),
            "layers": layers}


def test_spin_registry_push_layout():
    layers = [desc(mt.WASM_LAYER, 1), desc(mt.DATA_LAYER, 2), desc(mt.DATA_LAYER, 3), desc(mt.SPIN_APPLICATION, 4)]
    artifact = spin_artifact(manifest(layers), "img")
    assert artifact is not None and not artifact.is_package
    assert artifact.locked_app.digest == f"sha256:{4:064x}"
    assert [b.digest for b in artifact.wasm] == [f"sha256:{1:064x}"]
    assert len(artifact.data) == 2 and artifact.archives == ()


def test_old_artifacts_carry_the_lock_as_config():
    artifact = spin_artifact(manifest([desc(mt.WASM_LAYER, 1)], config=desc(mt.SPIN_APPLICATION, 5)), "img")
    assert artifact is not None and artifact.locked_app.digest == f"sha256:{5:064x}"


def test_a_single_wkg_layer_is_a_package():
    artifact = spin_artifact(manifest([desc(mt.WKG_WASM_LAYER, 1)]), "img")
    assert artifact is not None and artifact.is_package and len(artifact.wasm) == 1


def test_linux_images_are_not_artifacts():
    assert spin_artifact(manifest([desc("application/vnd.oci.image.layer.v1.tar+gzip", 1)]), "img") is None


def test_wasm_layers_without_a_lock_are_an_error():
    with pytest.raises(ArtifactError, match="no locked app"):
        spin_artifact(manifest([desc(mt.WASM_LAYER, 1), desc(mt.WASM_LAYER, 2)]), "example.com/app:1")


def test_two_locks_are_an_error():
    with pytest.raises(ArtifactError, match="2 locked-app layers"):
        spin_artifact(manifest([desc(mt.SPIN_APPLICATION, 1), desc(mt.SPIN_APPLICATION, 2)]), "img")


def test_malformed_manifests_name_the_image():
    with pytest.raises(ArtifactError, match="image img: its manifest is not JSON"):
        parse_manifest_json(b"{", "img")
    with pytest.raises(ArtifactError, match="lacks mediaType or digest"):
        spin_artifact({"layers": [{"size": 1}]}, "img")


def test_an_index_leads_to_its_wasm_manifest():
    index = parse_manifest_json(json.dumps({"mediaType": mt.OCI_INDEX, "manifests": [
        {"digest": "sha256:" + "1" * 64, "platform": {"architecture": "amd64", "os": "linux"}},
        {"digest": "sha256:" + "2" * 64, "platform": {"architecture": "wasm", "os": "wasip1"}},
    ]}).encode(), "img")
    assert is_index(index)
    assert wasm_child(index, "img") == "sha256:" + "2" * 64
    assert wasm_child({"manifests": []}, "img") is None
