"""Spin OCI artifacts through containerd's CRI plugin, as kubelet runs them (issue 4).

Each app is pushed with `containerd-shim-spin-v2 push` to a real registry on 127.0.0.1, pulled with CRI
PullImage and run in a pod whose RuntimeClass handler is this shim. containerd 1.7 and 2.1 unpack artifacts into an
empty rootfs, so the shim reads the app from the content store; containerd 1.6 cannot pull them at all
(its unpack counts non-tar layers: "mismatched image rootfs and manifest layers"), and there the image form (spin.toml
in the rootfs) is what runs.

The precompile cache lives in the content store: the tests read its labels with our own containerd client and the
shim's log lines ("<component>: precompile cache compiled|hit|rebuilt").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from oci import media_types as mt
from oci.client import ContainerdClient
from oci.errors import ContentStoreError
from oci.precompiled import GC_REF_PREFIX, LABEL_PREFIX
from oci.push import AppArtifact, Blob, assemble_app, parse_reference, push_artifact
from runtime.engine import CACHE_SALT_ENV
from tests.archives import targz
from tests.e2e.conftest import running_containerd
from cri_client import CriClient, CriError, PodHandle
from tests.e2e.cri_support import cri_ready, import_image
from tests.e2e.http_support import curl
from tests.e2e.registry_support import Registry, push_app, registry, trust_registry  # noqa: F401  (`registry`: a fixture)
from tests.e2e.support import wait_until

from mkoci import build_image_tar  # noqa: E402  (scripts/ is on sys.path)
from private_containerd import CRI_NAMESPACE, PrivateContainerd  # noqa: E402

pytestmark = pytest.mark.e2e

APP_PORT = 80  # the shim's default listen address is 0.0.0.0:80, as containerd-shim-spin's
SERVE_TIMEOUT_S = 120.0  # a cold start compiles: py-spin's 37 MB component takes ~6 s, more on a busy machine
PY_SPIN_ENV = {"API_TOKEN": "t0ken"}  # py-spin declares `api_token` required


@dataclass
class Cluster:
    """One containerd with CRI, CNI, the pause image and trust in the test registry; the shim's own cache dir."""

    ctrd: PrivateContainerd
    cri: CriClient
    cache_dir: Path

    def content(self) -> ContainerdClient:
        return ContainerdClient(str(self.ctrd.address), CRI_NAMESPACE)

    def shim_log(self) -> str:
        return Path(self.ctrd.log_path).read_text(errors="replace")

    def cache_outcomes(self, component: str) -> list[str]:
        """compiled/hit/rebuilt, in order, from the shim's per-task load lines."""
        marker = f"{component}: precompile cache "
        return [line.split(marker, 1)[1].split()[0] for line in self.shim_log().splitlines() if marker in line]


@contextlib.contextmanager
def cluster(version: str, workdir: Path, shim_dir: Path, cache_dir: Path, trusted: Registry,
            extra_env: dict[str, str] | None = None) -> Iterator[Cluster]:
    with running_containerd(version, workdir, shim_dir, cache_dir, extra_env=extra_env) as ctrd, \
            cri_ready(ctrd) as client:
        trust_registry(ctrd, trusted)  # containerd reads hosts.toml at each pull
        yield Cluster(ctrd, client, cache_dir)


def push_modified(app: Path, ref: str, change: Callable[[dict[str, Any], list[Blob]], None]) -> None:
    """Push ``app`` with its locked app (and layer list) changed by ``change``: artifacts no Spin would make."""
    original = assemble_app(app)
    lock = json.loads(json.dumps(original.locked_app))
    layers = list(original.layers[:-1])
    change(lock, layers)
    push_layers(ref, [*layers, Blob.of_bytes(mt.SPIN_APPLICATION, json.dumps(lock).encode())], lock)


def push_layers(ref: str, layers: list[Blob], lock: dict[str, Any] | None = None) -> None:
    # The label makes each app's config (CRI's image id) unique, as Spin's push does: without it CRI would take
    # two artifacts with the same config for one image.
    labels = {mt.LOCKED_APP_DIGEST_LABEL: layers[-1].digest} if lock is not None else {}
    config = Blob.of_bytes(mt.OCI_CONFIG, json.dumps({
        "architecture": "wasm", "os": "wasip1", "rootfs": {"type": "layers", "diff_ids": []},
        "config": {"Labels": labels}}).encode())
    manifest = Blob.of_bytes(mt.OCI_MANIFEST, json.dumps({
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": config.descriptor(),
        "layers": [layer.descriptor() for layer in layers]}).encode())
    push_artifact(AppArtifact(lock or {}, tuple(layers), config, manifest), parse_reference(ref), insecure=True)


def run_app(c: Cluster, pod: PodHandle, image: str, name: str = "app",
            env: dict[str, str] | None = None) -> str:
    container = c.cri.run_container(pod, name, image, command=["/"], env=env)
    wait_for(lambda: _answers(pod.ip), timeout=SERVE_TIMEOUT_S, what=f"{image} answering on {pod.ip}")
    return container


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    assert wait_until(predicate, timeout=timeout, interval=0.2), f"timed out after {timeout} s waiting for {what}"


def _answers(ip: str) -> bool:
    try:
        return curl(f"http://{ip}:{APP_PORT}/.well-known/spin/health", timeout=2).status == 200
    except Exception:  # noqa: BLE001 - not up yet
        return False


def layer_digest(c: Cluster, image: str, media_type: str) -> str:
    with c.content() as content:
        manifest = json.loads(content.read(content.image_target(image).digest))
    return next(layer["digest"] for layer in manifest["layers"] if layer["mediaType"] == media_type)


def manifest_digest(c: Cluster, image: str) -> str:
    with c.content() as content:
        return content.image_target(image).digest


def compiled_label(c: Cluster, layer: str) -> dict[str, str]:
    with c.content() as content:
        labels = content.info(layer).labels
    return {k: v for k, v in labels.items() if k.startswith(LABEL_PREFIX) or k.startswith(GC_REF_PREFIX)}


def exists(c: Cluster, digest: str) -> bool:
    with c.content() as content:
        try:
            content.info(digest)
        except ContentStoreError as exc:
            if exc.not_found:
                return False
            raise
    return True


# ---------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pushed(registry: Registry, http_apps: dict[str, Path]) -> dict[str, str]:  # noqa: F811
    refs = {name: registry.ref(f"spin-test/{name}", "v1") for name in ("py-spin", "js-echo")}
    for name, ref in refs.items():
        push_app(http_apps[name], ref)
    return refs


@pytest.fixture(scope="module", params=("1.7", "2.1"))
def artifact_cluster(request, tmp_path_factory, shim_dir, registry, pushed) -> Iterator[Cluster]:  # noqa: F811
    workdir = tmp_path_factory.mktemp(f"oci-{request.param}")
    with cluster(request.param, workdir, shim_dir, tmp_path_factory.mktemp("shim-cache"), registry) as c:
        yield c


# ---------------------------------------------------------------------------------------------------- serving


def test_a_pushed_app_pulled_by_cri_serves_on_the_pod_ip(artifact_cluster: Cluster, pushed):
    c = artifact_cluster
    image = pushed["py-spin"]
    c.cri.pull_image(image)
    with c.cri.pod("py-spin", runtime_handler="spin") as pod:
        container = run_app(c, pod, image, env=PY_SPIN_ENV)
        base = f"http://{pod.ip}:{APP_PORT}"
        assert curl(f"{base}/hello").body == b"Hello from Python!"
        # The static file is <= 128 bytes: inlined in the locked app, not a layer.
        assert curl(f"{base}/file?path=/static/hello.txt").body == b"Hello from a static file!\n"
        assert json.loads(curl(f"{base}/vars?names=greeting").body) == {"greeting": "hello"}
        assert curl(f"{base}/log").body == b"logged"
        wait_for(lambda: "py-spin stdout marker" in c.cri.container_log(container, "stdout"),
                   timeout=10, what="guest stdout in the CRI log")
        assert "py-spin stderr marker" in c.cri.container_log(container, "stderr")


def test_files_come_from_data_layers_archive_layers_and_inline(registry, artifact_cluster: Cluster,  # noqa: F811
                                                                http_apps):
    """`spin registry push` puts files in data layers, or (over 499 layers, or with SPIN_OCI_ARCHIVE_LAYERS) in a
    gzipped tar; small ones are inlined. The guest must see each at its path."""
    c = artifact_cluster
    from_data, from_archive = b"d" * 300, b"a" * 400
    image = registry.ref("spin-test/py-spin-files", "v1")

    def add_files(lock: dict[str, Any], layers: list[Blob]) -> None:
        layers.append(Blob.of_bytes(mt.DATA_LAYER, from_data))
        layers.append(Blob.of_bytes(mt.ARCHIVE_LAYER, targz({"deep/archived.txt": from_archive})))
        lock["components"][0]["files"] += [
            {"digest": "sha256:" + hashlib.sha256(from_data).hexdigest(), "path": "data/layer.txt"},
            {"digest": "sha256:" + hashlib.sha256(from_archive).hexdigest(), "path": "data/deep/archived.txt"},
        ]

    push_modified(http_apps["py-spin"], image, add_files)
    c.cri.pull_image(image)
    with c.cri.pod("files", runtime_handler="spin") as pod:
        run_app(c, pod, image, env=PY_SPIN_ENV)
        base = f"http://{pod.ip}:{APP_PORT}"
        assert curl(f"{base}/file?path=/data/layer.txt").body == from_data
        assert curl(f"{base}/file?path=/data/deep/archived.txt").body == from_archive
        assert curl(f"{base}/file?path=/static/hello.txt").body == b"Hello from a static file!\n"


def test_an_archive_is_unpacked_once_and_swept_with_its_image(registry, artifact_cluster: Cluster,  # noqa: F811
                                                                http_apps, pushed):
    """A files archive is unpacked into the mirror's archives/<layer>/, apart from the content-store blobs, and a
    later start links those same files without unpacking it again (its mirrored layer, removed here between the
    starts, is not read back); once the image is removed, the next start's sweep removes the unpacked archive."""
    c = artifact_cluster
    archived = b"r" * 500
    member = hashlib.sha256(archived).hexdigest()
    image = registry.ref("spin-test/py-spin-archive-reuse", "v1")

    def add_files(lock: dict[str, Any], layers: list[Blob]) -> None:
        layers.append(Blob.of_bytes(mt.ARCHIVE_LAYER, targz({"reuse/archived.txt": archived})))
        lock["components"][0]["files"] += [{"digest": f"sha256:{member}", "path": "data/reuse/archived.txt"}]

    push_modified(http_apps["py-spin"], image, add_files)
    c.cri.pull_image(image)
    layer = layer_digest(c, image, mt.ARCHIVE_LAYER).partition(":")[2]
    mirror = c.cache_dir / "content" / CRI_NAMESPACE
    unpacked = mirror / "archives" / layer / member
    inodes = []
    for name in ("unpack", "reuse"):
        with c.cri.pod(f"archive-{name}", runtime_handler="spin") as pod:
            run_app(c, pod, image, env=PY_SPIN_ENV)
            assert curl(f"http://{pod.ip}:{APP_PORT}/file?path=/data/reuse/archived.txt").body == archived
        inodes.append(unpacked.stat().st_ino)
        assert not (mirror / "sha256" / member).exists(), "an archive's file is among the content-store blobs"
        (mirror / "sha256" / layer).unlink(missing_ok=True)  # a start that unpacks the layer again streams it back
    assert inodes[0] == inodes[1]
    assert not (mirror / "sha256" / layer).exists(), "the second start read the archive layer again"
    assert [p.name for p in (mirror / "archives").iterdir() if p.name.startswith(".")] == [], "a staging dir is left"

    c.cri.remove_image(image)
    wait_for(lambda: not exists(c, f"sha256:{layer}"), timeout=30, what="containerd's GC removing the archive layer")
    c.cri.pull_image(pushed["js-echo"])
    with c.cri.pod("archive-swept", runtime_handler="spin") as pod:
        run_app(c, pod, pushed["js-echo"])
    assert not unpacked.parent.exists(), "the unpacked archive outlived its image"


def test_a_wkg_package_is_served_on_every_route(registry, artifact_cluster: Cluster, http_apps):  # noqa: F811
    """A single `application/wasm` layer (wkg) and no locked app: one HTTP component on /..., as Spin runs it."""
    c = artifact_cluster
    image = registry.ref("spin-test/js-echo-wkg", "v1")
    push_layers(image, [Blob.of_file(mt.WKG_WASM_LAYER, http_apps["js-echo"] / "app.wasm")])
    c.cri.pull_image(image)
    with c.cri.pod("wkg", runtime_handler="spin") as pod:
        run_app(c, pod, image)
        assert curl(f"http://{pod.ip}:{APP_PORT}/hello").body == b"Hello from JS!"


def test_missing_required_variable_fails_create_with_its_name(artifact_cluster: Cluster, pushed):
    c = artifact_cluster
    image = pushed["py-spin"]
    c.cri.pull_image(image)
    with c.cri.pod("no-var", runtime_handler="spin") as pod:
        with pytest.raises(CriError) as info:  # CRI creates the task (our Create) in StartContainer
            c.cri.run_container(pod, "app", image, command=["/"])
    assert "api_token" in str(info.value)
    assert "the locked app of image" in str(info.value)


@pytest.mark.parametrize(
    ("case", "change", "message"),
    [
        ("missing-digest",
         lambda lock, layers: layers.clear(),
         "is not in the image"),
        ("lock-version",
         lambda lock, layers: lock.update(spin_lock_version=9),
         "unknown spin_lock_version 9"),
        ("no-component",
         lambda lock, layers: lock["triggers"][0]["trigger_config"].update(component="ghost"),
         "runs component 'ghost', which the app does not contain"),
        ("unknown-trigger",
         lambda lock, layers: lock["triggers"][0].update(trigger_type="kafka"),
         "unknown trigger type 'kafka'"),
    ],
    ids=lambda value: value if isinstance(value, str) and " " not in value else "",
)
def test_broken_artifacts_fail_create_with_a_message_and_leave_nothing(registry, artifact_cluster: Cluster,  # noqa: F811
                                                                       http_apps, case, change, message):
    c = artifact_cluster
    image = registry.ref(f"spin-test/broken-{case}", "v1")
    push_modified(http_apps["js-echo"], image, change)
    c.cri.pull_image(image)
    with c.cri.pod(f"broken-{case}", runtime_handler="spin") as pod:
        with pytest.raises(CriError) as info:  # CRI creates the task (our Create) in StartContainer
            container = c.cri.create_container(pod, "app", image, command=["/"])
            c.cri.start_container(container)
        assert message in str(info.value)
        # ... and the user sees it in the container's log too (kubectl logs), not only in the CRI error.
        assert any(message in line for line in c.cri.container_log(container, "stderr"))
        assert c.cri.container_status(container).state == "CONTAINER_EXITED"
    staging = c.cache_dir / "staging"
    assert not [p for p in (staging.iterdir() if staging.exists() else []) if "-oci-" in p.name], \
        "a failed create left its locked-app directory behind"


# ---------------------------------------------------------------------------------------------------- the cache


def test_precompiled_blobs_live_in_the_content_store_and_die_with_the_image(registry,  # noqa: F811
                                                                           tmp_path_factory, shim_dir, http_apps):
    """Cold start compiles and labels; later tasks, and tasks after a containerd restart, load the blob; a new
    engine fingerprint recompiles; removing the image lets containerd's GC remove the blob."""
    image = registry.ref("spin-test/js-echo-cache", "v1")
    push_app(http_apps["js-echo"], image)
    workdir = tmp_path_factory.mktemp("oci-cache-21")
    cache_dir = tmp_path_factory.mktemp("shim-cache")

    with cluster("2.1", workdir, shim_dir, cache_dir, registry) as c:
        c.cri.pull_image(image)
        wasm = layer_digest(c, image, mt.WASM_LAYER)
        assert compiled_label(c, wasm) == {}
        with c.cri.pod("first", runtime_handler="spin") as pod:
            run_app(c, pod, image)
            assert curl(f"http://{pod.ip}:{APP_PORT}/hello").body == b"Hello from JS!"
        labels = compiled_label(c, wasm)
        [(lookup_key, compiled)] = [(k, v) for k, v in labels.items() if k.startswith(LABEL_PREFIX)]
        key = lookup_key.removeprefix(LABEL_PREFIX)
        assert labels[GC_REF_PREFIX + key] == compiled
        with c.content() as content:
            manifest_labels = content.info(manifest_digest(c, image)).labels
            assert compiled in manifest_labels.values()
            assert content.info(compiled).labels["containerd-shim-spin.python/precompiled-from"] == wasm
        with c.cri.pod("second", runtime_handler="spin") as pod:
            run_app(c, pod, image)
        assert c.cache_outcomes("js-echo") == ["compiled", "hit"]

    # containerd restarted (same root, so the same content store): still no compile.
    with cluster("2.1", workdir, shim_dir, cache_dir, registry) as c:
        with c.cri.pod("after-restart", runtime_handler="spin") as pod:
            run_app(c, pod, image)
        assert c.cache_outcomes("js-echo")[-1] == "hit"

    # A different engine fingerprint (here: the operator's salt) never loads the old blob.
    with cluster("2.1", workdir, shim_dir, cache_dir, registry, extra_env={CACHE_SALT_ENV: "rebuild-please"}) as c:
        with c.cri.pod("new-engine", runtime_handler="spin") as pod:
            run_app(c, pod, image)
        assert c.cache_outcomes("js-echo")[-1] == "compiled"
        keys = {k for k in compiled_label(c, wasm) if k.startswith(LABEL_PREFIX)}
        assert len(keys) == 2 and lookup_key in keys
        new_compiled = next(v for k, v in compiled_label(c, wasm).items() if k.startswith(LABEL_PREFIX) and k != lookup_key)

        # Removing the image (as kubelet's image GC does) lets containerd collect both compiled blobs.
        c.cri.remove_image(image)
        wait_for(lambda: not exists(c, compiled) and not exists(c, new_compiled) and not exists(c, wasm),
                   timeout=30, what="containerd's GC removing the compiled blobs with the image")


def test_a_corrupt_cached_blob_is_dropped_and_rebuilt(artifact_cluster: Cluster, pushed):
    c = artifact_cluster
    image = pushed["js-echo"]
    c.cri.pull_image(image)
    with c.cri.pod("warm", runtime_handler="spin") as pod:
        run_app(c, pod, image)
    wasm = layer_digest(c, image, mt.WASM_LAYER)
    compiled = next(v for k, v in compiled_label(c, wasm).items() if k.startswith(LABEL_PREFIX))
    mirrored = c.cache_dir / "content" / CRI_NAMESPACE / "sha256" / compiled.partition(":")[2]
    data = mirrored.read_bytes()
    mirrored.write_bytes(data[: len(data) // 2])  # truncated on the node's disk
    with c.cri.pod("after-corruption", runtime_handler="spin") as pod:
        run_app(c, pod, image)
        assert curl(f"http://{pod.ip}:{APP_PORT}/hello").body == b"Hello from JS!"
    assert c.cache_outcomes("js-echo")[-1] == "rebuilt"
    assert mirrored.stat().st_size == len(data)


def test_concurrent_first_starts_compile_once(tmp_path_factory, shim_dir, registry, http_apps):  # noqa: F811
    image = registry.ref("spin-test/js-echo-concurrent", "v1")
    push_app(http_apps["js-echo"], image)
    with cluster("2.1", tmp_path_factory.mktemp("oci-concurrent"), shim_dir, tmp_path_factory.mktemp("shim-cache"),
                 registry) as c:
        c.cri.pull_image(image)
        pods = [c.cri.run_pod(f"together-{i}", runtime_handler="spin") for i in range(2)]
        errors: list[BaseException] = []

        def start(pod: PodHandle) -> None:
            try:
                run_app(c, pod, image)
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(pod,)) for pod in pods]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        assert sorted(c.cache_outcomes("js-echo")) == ["compiled", "hit"]


# ---------------------------------------------------------------------------------------------------- containerd 1.6


def test_containerd_16_cannot_pull_artifacts_but_runs_the_image_form(tmp_path_factory, shim_dir, registry,  # noqa: F811
                                                                      pushed, http_apps):
    with cluster("1.6", tmp_path_factory.mktemp("oci-16"), shim_dir, tmp_path_factory.mktemp("shim-cache"),
                 registry) as c:
        with pytest.raises(CriError) as info:
            c.cri.pull_image(pushed["js-echo"])
        assert "mismatched image rootfs and manifest layers" in str(info.value)

        app = http_apps["js-echo"]
        rootfs = tmp_path_factory.mktemp("image-form")
        for name in ("spin.toml", "app.wasm"):
            (rootfs / name).write_bytes((app / name).read_bytes())
        image = "docker.io/spin-shim-test/js-echo-rootfs:v1"
        tar = rootfs.parent / f"{rootfs.name}.tar"
        build_image_tar(rootfs, tar, image, os_="wasip1", arch="wasm", entrypoint=["/"])
        import_image(c.ctrd, tar, all_platforms=True)
        with c.cri.pod("image-form", runtime_handler="spin") as pod:
            run_app(c, pod, image)
            assert curl(f"http://{pod.ip}:{APP_PORT}/hello").body == b"Hello from JS!"
