"""Fixtures for the tests that run pods through a real kubelet (scripts/kube_cluster.py) on a private containerd
whose config.toml the shim's installer wrote.

    from tests.e2e.kube_support import kube  # noqa: F401  (fixture)

`kube` is one cluster per test module on containerd 2.1 (`kube_17` the same on 1.7): the RuntimeClass of deploy/
applied, the py-spin app pushed as a Spin OCI artifact to the session's registry on 127.0.0.1, busybox imported for
sidecars. Each test works in a namespace of its own, deleted when it ends, and checks what it left through CRI.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.cri_support import BUSYBOX_REF, build_busybox_tar, import_image
from tests.e2e.node_install_support import installed_cri_containerd
from tests.e2e.registry_support import Registry, push_app, trust_registry
from tests.e2e.support import started_or_failed
from kube_cluster import KubeCluster, KubeClusterError, kube_bin_dir  # noqa: E402  (scripts/ is on sys.path)
from private_containerd import CRI_NAMESPACE, PrivateContainerd  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
#: The image line of deploy/sample-app.yaml that its comment tells users to replace with theirs.
SAMPLE_IMAGE = "registry.example.com/spin-apps/py-spin:v1"
READY_TIMEOUT_S = 180


@dataclass
class Kube:
    cluster: KubeCluster
    ctrd: PrivateContainerd
    app_image: str
    busybox_image: str

    def kubectl(self, *args: str, **options) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl(*args, **options)

    def get(self, *args: str) -> dict:
        return self.cluster.kubectl_json("get", *args)

    def apply(self, manifest: str, namespace: str) -> None:
        self.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)

    def sample_app(self) -> str:
        """deploy/sample-app.yaml as a user applies it: with their image in place of the example one."""
        text = (DEPLOY / "sample-app.yaml").read_text()
        assert SAMPLE_IMAGE in text, "deploy/sample-app.yaml no longer names the image its comment says to replace"
        return text.replace(SAMPLE_IMAGE, self.app_image)

    def pods(self, namespace: str, selector: str = "") -> list[dict]:
        args = ["pods", "-n", namespace] + (["-l", selector] if selector else [])
        return self.get(*args)["items"]

    def wait_rollout(self, namespace: str, deployment: str, timeout: int = READY_TIMEOUT_S) -> None:
        result = self.kubectl("rollout", "status", "-n", namespace, f"deployment/{deployment}",
                              f"--timeout={timeout}s", check=False, timeout=timeout + 30)
        assert result.returncode == 0, f"{deployment} not rolled out: {result.stderr}\n{self.describe(namespace)}"

    def wait_pod_ready(self, namespace: str, pod: str, timeout: int = READY_TIMEOUT_S) -> dict:
        result = self.kubectl("wait", "-n", namespace, f"pod/{pod}", "--for=condition=Ready",
                              f"--timeout={timeout}s", check=False, timeout=timeout + 30)
        assert result.returncode == 0, f"{pod} not Ready: {result.stderr}\n{self.describe(namespace)}"
        return self.get("pod", "-n", namespace, pod)

    def describe(self, namespace: str) -> str:
        """What a user would look at when a pod is stuck: the namespace's pods and events."""
        pods = self.kubectl("describe", "pods", "-n", namespace, check=False).stdout
        events = self.kubectl("get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False).stdout
        return f"{pods[-6000:]}\n{events[-3000:]}"

    def container_runtime(self, container_id: str) -> str:
        """The containerd runtime a container of the pod runs with, as containerd recorded it."""
        info = json.loads(self.ctrd.ctr("containers", "info", container_id, namespace=CRI_NAMESPACE).stdout)
        return info["Runtime"]["Name"]

    def task_pid(self, container_id: str) -> int:
        """The pid of a container's task (for a Wasm container: its instance process), as containerd reports it."""
        for line in self.ctrd.ctr("tasks", "ls", namespace=CRI_NAMESPACE).stdout.splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == container_id:
                return int(fields[1])
        raise AssertionError(f"no task for container {container_id}")

    def containers(self) -> set[str]:
        """Every container CRI keeps in containerd (pause sandboxes included), by id: what a test must not add to."""
        out = self.ctrd.ctr("containers", "ls", "-q", namespace=CRI_NAMESPACE).stdout.split()
        return set(out)


def container_id(pod: dict, name: str) -> str:
    for status in pod["status"].get("containerStatuses", []):
        if status["name"] == name:
            return status["containerID"].removeprefix("containerd://")
    raise AssertionError(f"no status for container {name} in {pod['metadata']['name']}")


def http_get(host: str, port: int, path: str, *, timeout: float = 30.0) -> tuple[int, str]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        conn.close()


def eventually(check, *, timeout: float = 60.0, interval: float = 0.5, what: str = "condition"):
    """The first truthy result of check() within timeout; the last exception or value otherwise fails the test."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
            last = result
        except Exception as exc:  # noqa: BLE001 - retried until the deadline, then reported
            last = exc
        time.sleep(interval)
    raise AssertionError(f"{what} not reached in {timeout:.0f} s; last: {last!r}")


@contextlib.contextmanager
def namespace(kube: Kube) -> Iterator[str]:
    """A namespace of the test's own, deleted (and its pods gone from CRI) when the test ends."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    kube.kubectl("create", "namespace", name)
    eventually(lambda: kube.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
               what=f"the default ServiceAccount of {name}")
    try:
        yield name
    finally:
        kube.kubectl("delete", "namespace", name, "--wait=true", "--timeout=120s", check=False, timeout=180)


def pod_manifest(name: str, image: str, *, containers: list[dict] | None = None, volumes: list[dict] | None = None,
                 **spin_fields) -> str:
    """A Pod of the Spin app (RuntimeClass of deploy/), with extra containers beside it; JSON is YAML."""
    spin = {"name": "app", "image": image, "command": ["/"], "env": [{"name": "API_TOKEN", "value": "t"}],
            "ports": [{"containerPort": 80}],
            "readinessProbe": {"httpGet": {"path": "/.well-known/spin/health", "port": 80}, "periodSeconds": 2}}
    spin.update(spin_fields)
    spec = {"runtimeClassName": "wasmtime-spin-v2", "containers": [spin, *(containers or [])],
            "terminationGracePeriodSeconds": 10}
    if volumes:
        spec["volumes"] = volumes
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
                       "spec": spec})


def busybox_sidecar(kube: Kube) -> dict:
    """A busybox container that idles beside the app: what `kubectl exec` and crictl exec go into."""
    return {"name": "sidecar", "image": kube.busybox_image, "imagePullPolicy": "Never", "command": ["sleep", "3600"]}


_FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+) -> ")


def forwarded_port(process: subprocess.Popen[str], timeout: float = 30.0) -> int:
    """The local port `kubectl port-forward ... :<port>` chose, read from its first line."""
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        match = _FORWARDING.search(line)
        if match:
            return int(match.group(1))
        if not line and process.poll() is not None:
            break
    raise AssertionError(f"kubectl port-forward printed no port (rc {process.poll()})")


@contextlib.contextmanager
def running_kube(version: str, tmp_path_factory: pytest.TempPathFactory, shim_cache_dir: Path, registry: Registry,
                 http_apps: dict[str, Path]) -> Iterator[Kube]:
    try:
        bin_dir = kube_bin_dir()
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"scripts/build_kube.sh failed ({exc.returncode}); run it to see why")
    workdir = tmp_path_factory.mktemp(f"kube-{version}")
    with installed_cri_containerd(version, workdir / "containerd", shim_cache_dir) as (ctrd, _client):
        trust_registry(ctrd, registry)
        app_image = registry.ref("spin-test/py-spin-kube", "v1")
        push_app(http_apps["py-spin"], app_image)
        import_image(ctrd, build_busybox_tar(tmp_path_factory.mktemp("busybox-kube")))
        with started_cluster(ctrd, workdir, bin_dir) as cluster:
            cluster.kubectl("apply", "-f", str(DEPLOY / "runtime-class.yaml"))
            yield Kube(cluster, ctrd, app_image, BUSYBOX_REF)


def started_cluster(ctrd: PrivateContainerd, workdir: Path,
                    bin_dir: Path) -> contextlib.AbstractContextManager[KubeCluster]:
    """A kube-apiserver and a kubelet on ``ctrd``, stopped when the block ends; a start that fails fails the test
    with what the cluster reported (its components' logs)."""
    return started_or_failed(KubeCluster(ctrd, workdir, bin_dir=bin_dir), KubeClusterError)


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory, shim_cache_dir: Path, registry: Registry,
         http_apps: dict[str, Path]) -> Iterator[Kube]:
    """The node on containerd 2.1, where every kubelet test runs."""
    with running_kube("2.1", tmp_path_factory, shim_cache_dir, registry, http_apps) as started:
        yield started


@pytest.fixture(scope="module")
def kube_17(tmp_path_factory: pytest.TempPathFactory, shim_cache_dir: Path, registry: Registry,
            http_apps: dict[str, Path]) -> Iterator[Kube]:
    """The same node on containerd 1.7 (its CRI plugin and config schema differ), for the smoke test."""
    with running_kube("1.7", tmp_path_factory, shim_cache_dir, registry, http_apps) as started:
        yield started


__all__ = ["Kube", "busybox_sidecar", "container_id", "eventually", "forwarded_port", "http_get", "kube", "kube_17",
           "namespace", "pod_manifest", "running_kube"]
