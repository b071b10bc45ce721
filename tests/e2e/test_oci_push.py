"""`containerd-shim-spin-v2 push` against a real registry, read back over the distribution API, pulled by containerd.

What is pinned: the layout `spin registry push` writes (spin crates/oci/src/client.rs ``push_locked_core``; the lock
as spin crates/locked-app/src/locked.rs has it) as seen from the registry, that containerd 1.7 and 2.1 pull it into
their content store, and that containerd 1.6 cannot unpack it ("mismatched image rootfs and manifest layers": the
config's empty diff_ids against N layers; containerd image.go ``getLayers`` skips non-tar layers only since 1.6.25
and 1.7.7, and Debian's 1.6 is 1.6.20), which is containerd 1.6's limit, not the artifact's.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from oci import media_types as mt
from cri_client import CriClient  # noqa: E402  (scripts/ is on sys.path)
from tests.e2e.registry_support import Registry, registry, trust_registry  # noqa: F401
from tests.e2e.support import SHIM_NAME

pytestmark = pytest.mark.e2e

SHIM = str(Path(sys.executable).parent / SHIM_NAME)
PUSH_TIMEOUT_S = 120


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push(app: Path | str, ref: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SHIM, "push", *extra, str(app), ref], capture_output=True, text=True,
                          timeout=PUSH_TIMEOUT_S)


@dataclass
class Pushed:
    """A pushed app as the registry serves it back."""

    ref: str
    repository: str
    digest: str
    manifest_bytes: bytes
    manifest: dict
    config_bytes: bytes
    layers: list[bytes]

    @property
    def locked_app(self) -> dict:
        return json.loads(self.layers[-1])


def push_and_fetch(registry: Registry, app: Path, repository: str) -> Pushed:  # noqa: F811
    ref = registry.ref(repository, "v1")
    result = push(app, ref)
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("Pushed with digest sha256:"), result.stdout
    assert f"Pushed {ref}" in result.stdout
    digest = last.rsplit(" ", 1)[1]
    manifest_bytes, headers = registry.manifest(repository, "v1")
    assert headers["docker-content-digest"] == digest == sha(manifest_bytes)
    manifest = json.loads(manifest_bytes)
    config_bytes = registry.blob(repository, manifest["config"]["digest"])
    layers = [registry.blob(repository, layer["digest"]) for layer in manifest["layers"]]
    return Pushed(ref, repository, digest, manifest_bytes, manifest, config_bytes, layers)


@pytest.fixture(scope="module")
def py_spin(registry: Registry, http_apps: dict[str, Path]) -> Pushed:  # noqa: F811
    return push_and_fetch(registry, http_apps["py-spin"], "spin-shim-test/py-spin")


@pytest.fixture(scope="module")
def multi(registry: Registry, http_apps: dict[str, Path]) -> Pushed:  # noqa: F811
    return push_and_fetch(registry, http_apps["multi"], "spin-shim-test/multi")


def assert_spin_layout(pushed: Pushed) -> None:
    """The checks every pushed app passes: descriptors match blobs, the locked app is last and fully resolvable."""
    manifest = pushed.manifest
    assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == mt.OCI_MANIFEST
    assert manifest["config"]["mediaType"] == mt.OCI_CONFIG
    assert manifest["config"]["size"] == len(pushed.config_bytes)
    assert manifest["config"]["digest"] == sha(pushed.config_bytes)
    for descriptor, blob in zip(manifest["layers"], pushed.layers, strict=True):
        assert descriptor["size"] == len(blob) and descriptor["digest"] == sha(blob)
    types = [layer["mediaType"] for layer in manifest["layers"]]
    assert types[-1] == mt.SPIN_APPLICATION and mt.SPIN_APPLICATION not in types[:-1]
    assert set(types[:-1]) <= {mt.WASM_LAYER, mt.DATA_LAYER}
    digests = [layer["digest"] for layer in manifest["layers"]]
    assert len(set(digests)) == len(digests), "layers are de-duplicated by digest"

    config = json.loads(pushed.config_bytes)
    assert config == {
        "architecture": "wasm",
        "os": "wasip1",
        "config": {"Labels": {mt.LOCKED_APP_DIGEST_LABEL: digests[-1]}},
        "rootfs": {"type": "layers", "diff_ids": []},
    }

    by_digest = {layer["digest"]: layer["mediaType"] for layer in manifest["layers"][:-1]}
    referenced = set()
    locked = pushed.locked_app
    for component in locked["components"]:
        source = component["source"]
        assert source["content_type"] == "application/wasm"
        assert by_digest[source["digest"]] == mt.WASM_LAYER
        assert pushed.layers[digests.index(source["digest"])].startswith(b"\0asm")
        referenced.add(source["digest"])
        for entry in component.get("files", []):
            path = entry["path"]
            assert not path.startswith("/") and ".." not in path.split("/") and "\\" not in path
            if "inline" in entry:
                data = base64.b64decode(entry["inline"])
                assert len(data) <= mt.INLINE_MAX_SIZE and sha(data) == entry["digest"]
                assert entry["digest"] not in by_digest
            else:
                assert by_digest[entry["digest"]] == mt.DATA_LAYER
                assert len(pushed.layers[digests.index(entry["digest"])]) > mt.INLINE_MAX_SIZE
                referenced.add(entry["digest"])
    assert referenced == set(by_digest), "every layer is one the locked app refers to"
    assert "origin" not in locked["metadata"]
    assert "file://" not in pushed.layers[-1].decode()
    annotations = manifest["annotations"]
    assert annotations["org.opencontainers.image.title"] == locked["metadata"]["name"]
    assert annotations["org.opencontainers.image.created"].endswith("Z")


# ---------------------------------------------------------------------------------------------------- layout


def test_py_spin_is_pushed_in_spins_layout(py_spin: Pushed, http_apps: dict[str, Path]):
    assert_spin_layout(py_spin)
    assert [layer["mediaType"] for layer in py_spin.manifest["layers"]] == [mt.WASM_LAYER, mt.SPIN_APPLICATION]
    app_dir = http_apps["py-spin"]
    assert py_spin.layers[0] == (app_dir / "app.wasm").read_bytes()
    assert py_spin.manifest["annotations"]["org.opencontainers.image.version"] == "0.1.0"

    locked = py_spin.locked_app
    assert locked["spin_lock_version"] == 0 and "must_understand" not in locked
    assert locked["metadata"] == {"name": "py-spin", "version": "0.1.0", "trigger": {"type": "http"}}
    assert locked["variables"] == {"greeting": {"default": "hello", "secret": False}, "api_token": {"secret": True}}
    assert locked["triggers"] == [{"id": "http-trigger-1", "trigger_type": "http",
                                   "trigger_config": {"component": "py-spin", "route": "/..."}}]
    [component] = locked["components"]
    assert component["id"] == "py-spin"
    assert component["metadata"] == {"allowed_outbound_hosts": ["http://127.0.0.1:*", "redis://127.0.0.1:*",
                                                                "mysql://127.0.0.1:*", "postgres://127.0.0.1:*",
                                                                "mqtt://127.0.0.1:*"],
                                     "key_value_stores": ["default"], "databases": ["default"], "ai_models": []}
    assert component["env"] == {"APP_MODE": "test"}
    assert component["config"] == {"greeting": "{{ greeting }}", "token": "{{ api_token }}", "literal": "fixed-value"}
    hello = (app_dir / "static" / "hello.txt").read_bytes()
    assert component["files"] == [{"digest": sha(hello), "inline": base64.b64encode(hello).decode(),
                                   "path": "static/hello.txt"}]


def test_multi_shares_one_wasm_layer_between_five_components(multi: Pushed, http_apps: dict[str, Path]):
    assert_spin_layout(multi)
    wasm = (http_apps["multi"] / "app.wasm").read_bytes()
    assert [(layer["mediaType"], layer["digest"]) for layer in multi.manifest["layers"][:-1]] == [
        (mt.WASM_LAYER, sha(wasm))]
    locked = multi.locked_app
    assert {c["id"]: (c["source"]["digest"], c["env"]) for c in locked["components"]} == {
        who: (sha(wasm), {"WHO": who}) for who in ("fallback", "api", "exact", "deep", "internal")}
    assert [t["trigger_config"] for t in locked["triggers"]] == [
        {"component": "fallback", "route": "/..."},
        {"component": "api", "route": "/api/..."},
        {"component": "exact", "route": "/api/exact"},
        {"component": "deep", "route": "/api/v1/..."},
        {"component": "internal", "route": {"private": True}},
        {"route": "/static/...", "static_response": {"status_code": 201, "body": "a static answer\n",
                                                     "headers": {"content-type": "text/plain", "x-static": "yes"}}},
        {"route": "/moved", "static_response": {"status_code": 308, "headers": {"location": "/api/whoami"}}},
    ]


def test_pushing_the_same_app_again_gives_the_same_blobs(registry: Registry, py_spin: Pushed,  # noqa: F811
                                                         http_apps: dict[str, Path]):
    again = push_and_fetch(registry, http_apps["py-spin"], "spin-shim-test/py-spin-again")
    assert again.layers == py_spin.layers and again.config_bytes == py_spin.config_bytes


# ---------------------------------------------------------------------------------------------------- errors


def test_push_to_a_port_where_nothing_listens_is_exit_1_naming_the_registry(http_apps: dict[str, Path]):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = push(http_apps["multi"], f"127.0.0.1:{port}/spin-shim-test/nowhere:v1")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert f"cannot reach registry 127.0.0.1:{port}" in result.stderr


def test_push_of_a_directory_without_spin_toml_is_exit_1(tmp_path: Path, registry: Registry):  # noqa: F811
    result = push(tmp_path, registry.ref("spin-shim-test/empty", "v1"))
    assert result.returncode == 1 and "spin.toml: not found" in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------------- containerd


def content_digests(ctrd) -> set[str]:
    listed = ctrd.ctr("content", "ls", "-q").stdout.split()
    return {line for line in listed if line.startswith("sha256:")}


def test_containerd_pulls_the_pushed_app(containerd, registry: Registry, py_spin: Pushed):  # noqa: F811
    trust_registry(containerd, registry)
    result = containerd.ctr("images", "pull", "--plain-http", py_spin.ref, check=False, timeout=180)
    blobs = {py_spin.digest, py_spin.manifest["config"]["digest"],
             *(layer["digest"] for layer in py_spin.manifest["layers"])}
    if containerd.version == "1.6":
        # containerd 1.6 unpacks every pulled image and compares rootfs.diff_ids (none) with the layers (two).
        assert result.returncode != 0
        assert "mismatched image rootfs and manifest layers" in result.stderr, result.stderr
        # It fetched everything before giving up: the blobs are there for a shim that reads the content store.
        assert blobs <= content_digests(containerd)
        return
    assert result.returncode == 0, result.stderr
    assert blobs <= content_digests(containerd)
    images = containerd.ctr("images", "ls").stdout
    assert py_spin.ref in images and py_spin.digest in images


def test_ctr_runs_the_pulled_artifact(containerd, registry: Registry, py_spin: Pushed):  # noqa: F811
    """`ctr run` of a Spin artifact works where containerd can pull it (1.7, 2.x): the empty rootfs makes the shim
    read the app from the content store, as for a CRI pod (README, "Spin OCI artifacts")."""
    from tests.e2e.http_support import HttpTask

    if containerd.version == "1.6":
        pytest.skip("containerd 1.6 cannot pull Spin artifacts (test_containerd_pulls_the_pushed_app shows why)")
    trust_registry(containerd, registry)
    pulled = containerd.ctr("images", "pull", "--plain-http", py_spin.ref, check=False, timeout=180)
    assert pulled.returncode == 0, pulled.stderr
    task = HttpTask(containerd, py_spin.ref, f"ctr-artifact-{containerd.version.replace('.', '')}",
                    env={"SPIN_VARIABLE_API_TOKEN": "t"})
    try:
        result = task.run()
        assert result.returncode == 0, result.stderr
        response = task.get("/hello")
        assert response.status == 200 and response.body == b"Hello from Python!", (response, task.log())
    finally:
        task.stop_task()
        task.remove()


def test_hosts_toml_lets_cri_pull_over_plain_http(containerd_21, registry: Registry, multi: Pushed):  # noqa: F811
    hosts_toml = trust_registry(containerd_21, registry)
    assert hosts_toml == containerd_21.certs_dir / registry.host / "hosts.toml"
    with CriClient(containerd_21) as client:
        image_ref = client.pull_image(multi.ref)
    # CRI answers with the image id, which is the config digest.
    assert image_ref == multi.manifest["config"]["digest"]
    assert multi.digest in content_digests_ns(containerd_21, "k8s.io")


def content_digests_ns(ctrd, namespace: str) -> set[str]:
    listed = ctrd.ctr("content", "ls", "-q", namespace=namespace).stdout.split()
    return {line for line in listed if line.startswith("sha256:")}
