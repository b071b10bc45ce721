"""Spin pods through containerd's CRI plugin, driven step for step as kubelet drives them (issue 5).

Each containerd (1.6, 1.7, 2.1) runs with a config.toml made by the node installer (`containerd-shim-spin-v2
install`, run twice on the node's config before containerd starts; tests/e2e/node_install_support.py), a CNI
bridge, and the sample app of deploy/sample-app.yaml: py-spin, pulled as a Spin OCI artifact from a registry on
127.0.0.1 on 1.7 and 2.1, and as an image with spin.toml in its root on 1.6 (which cannot pull artifacts).

What a platform engineer expects of a pod, whatever runs it: it answers on its pod IP and to its sidecars on
127.0.0.1, its output is in the CRI log, stats and resource updates reach its cgroup, a memory limit is enforced and
reported as OOMKilled, StopContainer honours the grace period, a restarted containerd finds it again, and a removed
pod leaves nothing behind.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from cri_client import CriClient, PodHandle
from tests.e2e.conftest import REPO, VERSIONS
from tests.e2e.cri_support import BUSYBOX_REF, build_busybox_tar, import_image
from tests.e2e.http_support import HEALTH_PATH, Response, curl
from tests.e2e.node_install_support import installed_cri_containerd
from tests.e2e.pod_checks import assert_pod_left_nothing
from tests.e2e.registry_support import Registry, push_app, registry, trust_registry  # noqa: F401  (fixture)
from tests.e2e.support import shim_processes, wait_until

from mkoci import build_image_tar  # noqa: E402  (scripts/ is on sys.path)
from private_containerd import CRI_NAMESPACE, PrivateContainerd  # noqa: E402

pytestmark = pytest.mark.e2e

MiB = 1 << 20
DEPLOY = REPO / "deploy"
SERVE_TIMEOUT_S = 120.0  # the first start on a containerd compiles py-spin (~5 s alone, more on a busy machine)


# ------------------------------------------------------------------------------------------------ the manifests

def _manifests() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(RuntimeClass, Deployment, Service) from deploy/: the tests run exactly the pod they document."""
    runtime_class = yaml.safe_load((DEPLOY / "runtime-class.yaml").read_text())
    documents = {doc["kind"]: doc for doc in yaml.safe_load_all((DEPLOY / "sample-app.yaml").read_text())}
    return runtime_class, documents["Deployment"], documents["Service"]


def _quantity(text: str) -> int:
    """A Kubernetes quantity as CRI gets it: memory in bytes ("256Mi"), CPU in millicores ("500m")."""
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "m": 1}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(text.removesuffix(suffix)) * factor
    return int(text) * 1000  # whole CPUs


@dataclass(frozen=True)
class AppSpec:
    """The Deployment's Spin container, as kubelet turns it into CRI calls."""

    handler: str
    command: list[str]
    env: dict[str, str]
    port: int
    memory_limit: int
    millicpu: int
    readiness_path: str
    readiness_port: int
    grace_s: int


def app_spec() -> AppSpec:
    runtime_class, deployment, _ = _manifests()
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    limits = container["resources"]["limits"]
    probe = container["readinessProbe"]["httpGet"]
    return AppSpec(
        handler=runtime_class["handler"],
        command=container["command"],
        env={item["name"]: item["value"] for item in container["env"]},
        port=container["ports"][0]["containerPort"],
        memory_limit=_quantity(limits["memory"]),
        millicpu=_quantity(limits["cpu"]),
        readiness_path=probe["path"],
        readiness_port=probe["port"],
        grace_s=pod["terminationGracePeriodSeconds"],
    )


def test_the_manifests_agree_with_each_other_and_with_the_installer():
    runtime_class, deployment, service = _manifests()
    pod = deployment["spec"]["template"]
    spec = app_spec()
    assert pod["spec"]["runtimeClassName"] == runtime_class["metadata"]["name"]
    assert spec.handler == "spin"  # the runtime name `containerd-shim-spin-v2 install` adds by default
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == spec.port == spec.readiness_port
    assert spec.readiness_path == HEALTH_PATH
    container = pod["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"] == container["readinessProbe"]["httpGet"]


# ------------------------------------------------------------------------------------------------ fixtures

@dataclass
class Node:
    """One containerd as a node has it after the installer, with the sample app and a busybox sidecar image."""

    ctrd: PrivateContainerd
    cri: CriClient
    app_image: str
    spec: AppSpec

    def run_app_pod(self, name: str, **options: Any) -> tuple[PodHandle, str]:
        """RunPodSandbox with the RuntimeClass handler, then the manifest's container; waits until the readiness
        probe passes. The caller tears the pod down (cri.pod() or teardown_pod)."""
        pod = self.cri.run_pod(name, runtime_handler=self.spec.handler)
        container = self.start_app(pod, **options)
        return pod, container

    def start_app(self, pod: PodHandle, *, attempt: int = 0, memory_limit: int | None = None) -> str:
        spec = self.spec
        container = self.cri.run_container(
            pod, "spin-hello", self.app_image, command=spec.command, env=spec.env, attempt=attempt,
            memory_limit=memory_limit or spec.memory_limit, millicpu=spec.millicpu)
        assert wait_until(lambda: self.ready(pod), timeout=SERVE_TIMEOUT_S, interval=0.2), \
            f"readiness probe never passed; container: {self.cri.container_status(container)}; log: " \
            f"{self.cri.container_log(container)}"
        return container

    def ready(self, pod: PodHandle) -> bool:
        """kubelet's httpGet readiness probe: a 2xx/3xx from the pod IP within a second."""
        try:
            status = curl(f"http://{pod.ip}:{self.spec.readiness_port}{self.spec.readiness_path}", timeout=1).status
        except Exception:  # noqa: BLE001 - connection refused, timeout: not ready yet
            return False
        return 200 <= status < 400

    def get(self, pod: PodHandle, path: str, timeout: float = 30.0) -> Response:
        return curl(f"http://{pod.ip}:{self.spec.port}{path}", timeout=timeout)


def _rootfs_image(ctrd: PrivateContainerd, app: Path, workdir: Path) -> str:
    """The app as an image with spin.toml and its files in the root (the form containerd 1.6 can pull)."""
    rootfs = workdir / "rootfs"
    shutil.copytree(app, rootfs)
    image = "docker.io/spin-shim-test/py-spin-rootfs:v1"
    tar = workdir / "py-spin-rootfs.tar"
    build_image_tar(rootfs, tar, image, os_="wasip1", arch="wasm", entrypoint=["/"])
    import_image(ctrd, tar, all_platforms=True)
    return image


@pytest.fixture(scope="module")
def py_spin_artifact(registry: Registry, http_apps: dict[str, Path]) -> str:  # noqa: F811
    ref = registry.ref("spin-test/py-spin-k8s", "v1")
    push_app(http_apps["py-spin"], ref)
    return ref


@pytest.fixture(scope="module", params=VERSIONS)
def node(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, registry: Registry,  # noqa: F811
         http_apps: dict[str, Path]) -> Iterator[Node]:
    version = request.param
    workdir = tmp_path_factory.mktemp(f"k8s-{version}")
    with installed_cri_containerd(version, workdir, tmp_path_factory.mktemp("shim-cache")) as (ctrd, client):
        import_image(ctrd, build_busybox_tar(tmp_path_factory.mktemp("busybox")))
        if version == "1.6":
            image = _rootfs_image(ctrd, http_apps["py-spin"], tmp_path_factory.mktemp("py-spin-image"))
        else:
            trust_registry(ctrd, registry)
            image = request.getfixturevalue("py_spin_artifact")
            client.pull_image(image)
        yield Node(ctrd, client, image, app_spec())


# ------------------------------------------------------------------------------------------------ helpers

def _in_background(call: Callable[[], Response]) -> tuple[threading.Thread, list[Any]]:
    results: list[Any] = []

    def run() -> None:
        try:
            results.append(call())
        except Exception as exc:  # noqa: BLE001 - the test inspects what happened
            results.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, results


def _cgroup_of(pid: int, controller: str) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path
    raise AssertionError(f"pid {pid} has no {controller} cgroup")


def _task_pids(ctrd: PrivateContainerd, container: str) -> list[int]:
    """`ctr tasks ps`: containerd asks the shim (Pids) for the task's processes."""
    lines = ctrd.ctr("tasks", "ps", container, namespace=CRI_NAMESPACE).stdout.splitlines()[1:]
    return [int(line.split()[0]) for line in lines if line.strip()]


def _shim_daemons(ctrd: PrivateContainerd) -> list[int]:
    """Our shim daemons (not their instance processes, which are forks of a daemon and carry its argv)."""
    ours = set(shim_processes(ctrd))
    return [pid for pid in ours if _parent(pid) not in ours]


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _exited(cri: CriClient, container: str) -> bool:
    return cri.container_status(container).state == "CONTAINER_EXITED"


# ------------------------------------------------------------------------------------------------ acceptance 1

def test_pod_serves_its_ip_and_a_sidecar_on_localhost_with_logs_and_stats(node: Node):
    cri, ctrd = node.cri, node.ctrd
    with cri.pod("spin-hello", runtime_handler=node.spec.handler) as pod:
        app = node.start_app(pod)
        sidecar = cri.run_container(pod, "sidecar", BUSYBOX_REF, command=["sh", "-c", (
            "while true; do wget -q -O - http://127.0.0.1:80/hello && echo; sleep 0.5; done")])

        # The pod IP (what a Service's endpoints point at) and the readiness probe's answer.
        assert node.get(pod, "/hello").body == b"Hello from Python!"
        health = curl(f"http://{pod.ip}:{node.spec.readiness_port}{node.spec.readiness_path}")
        assert (health.status, health.body) == (200, b"OK")
        # A sidecar in the same network namespace reaches the app on 127.0.0.1.
        assert wait_until(lambda: "Hello from Python!" in cri.container_log(sidecar, "stdout"), timeout=30), \
            cri.container_log(sidecar)

        # The guest's own output is in the container's CRI log (what `kubectl logs` reads).
        assert node.get(pod, "/log").body == b"logged"
        assert wait_until(lambda: "py-spin stdout marker" in cri.container_log(app, "stdout"), timeout=10)
        assert "py-spin stderr marker" in cri.container_log(app, "stderr")

        # The instance processes are in the container's cgroup, inside the pod's, and in the pod's netns.
        pids = _task_pids(ctrd, app)
        assert pids
        sandbox_pid = int(cri.pod_info(pod.id)["pid"])
        pod_netns = Path(f"/proc/{sandbox_pid}/ns/net").stat().st_ino
        for pid in pids:
            assert _cgroup_of(pid, "memory") == f"{pod.config.linux.cgroup_parent}/{app}"
            assert Path(f"/proc/{pid}/ns/net").stat().st_ino == pod_netns
        # One shim daemon for the whole pod: pause, the app and the sidecar.
        assert len(_shim_daemons(ctrd)) == 1, _shim_daemons(ctrd)

        # ContainerStats: what kubelet's summary API and `kubectl top` are built from.
        for _ in range(5):
            node.get(pod, "/hello")
        stats = cri.container_stats(app)
        assert stats.attributes.id == app
        assert stats.memory.working_set_bytes.value > 1 * MiB
        assert stats.cpu.usage_core_nano_seconds.value > 0

        # UpdateContainerResources reaches the container's cgroup.
        limit_file = Path("/sys/fs/cgroup/memory") / pod.config.linux.cgroup_parent.strip("/") / app / \
            "memory.limit_in_bytes"
        assert int(limit_file.read_text()) == node.spec.memory_limit
        cri.update_container_resources(app, memory_limit=384 * MiB, millicpu=node.spec.millicpu)
        assert int(limit_file.read_text()) == 384 * MiB
        assert node.get(pod, "/hello").status == 200


# ------------------------------------------------------------------------------------------------ acceptance 2

def test_a_guest_over_its_memory_limit_is_oom_killed_and_the_container_restarts(node: Node):
    cri = node.cri
    with cri.pod("oom", runtime_handler=node.spec.handler) as pod:
        first = node.start_app(pod)
        with pytest.raises(Exception):  # noqa: B017 - the worker dies mid-request: reset, or empty reply
            node.get(pod, "/alloc", timeout=60)
        assert wait_until(lambda: _exited(cri, first), timeout=30), cri.container_status(first)
        status = cri.container_status(first)
        # CRI sets OOMKilled only from the shim's /tasks/oom event (containerd's TaskOOM).
        assert (status.exit_code, status.reason) == (137, "OOMKilled"), status
        # kubelet restarts it as attempt 1 in the same sandbox, and the pod serves again.
        second = node.start_app(pod, attempt=1)
        assert node.get(pod, "/hello").body == b"Hello from Python!"
        assert cri.container_status(second).state == "CONTAINER_RUNNING"


def test_stop_container_lets_an_in_flight_request_finish_within_the_grace_period(node: Node):
    cri = node.cri
    with cri.pod("graceful", runtime_handler=node.spec.handler) as pod:
        app = node.start_app(pod)
        thread, results = _in_background(lambda: node.get(pod, "/sleep?ms=4000", timeout=60))
        time.sleep(1.0)  # the request is in the guest now
        cri.stop_container(app, timeout=node.spec.grace_s)
        thread.join(timeout=60)
        assert results and isinstance(results[0], Response), results
        assert (results[0].status, results[0].body) == (200, b"slept 4000 ms")
        status = cri.container_status(app)
        # SIGTERM, drained, exited by itself: 0 (Completed), not SIGKILL's 137.
        assert (status.state, status.exit_code, status.reason) == ("CONTAINER_EXITED", 0, "Completed"), status


def test_stop_container_kills_what_outlives_the_grace_period(node: Node):
    cri = node.cri
    with cri.pod("impatient", runtime_handler=node.spec.handler) as pod:
        app = node.start_app(pod)
        thread, results = _in_background(lambda: node.get(pod, "/sleep?ms=60000", timeout=90))
        time.sleep(1.0)
        started = time.monotonic()
        cri.stop_container(app, timeout=2)
        stopped_after = time.monotonic() - started
        status = cri.container_status(app)
        assert (status.exit_code, status.reason) == (137, "Error"), status
        assert stopped_after < 30, f"StopContainer took {stopped_after:.1f} s with a 2 s grace period"
        thread.join(timeout=30)
        assert results and not isinstance(results[0], Response), results  # the connection died with the guest


def test_stop_and_remove_pod_leave_nothing_behind(node: Node):
    cri, ctrd = node.cri, node.ctrd
    pod, app = node.run_app_pod("teardown")
    sidecar = cri.run_container(pod, "sidecar", BUSYBOX_REF, command=["sleep", "300"])
    sandbox_pid = int(cri.pod_info(pod.id)["pid"])
    pids = _task_pids(ctrd, app)
    cri.stop_pod(pod.id)
    assert cri.pod_status(pod.id).state == 1  # SANDBOX_NOTREADY
    assert all(_exited(cri, c) for c in (app, sidecar))
    cri.remove_pod(pod.id)
    assert_pod_left_nothing(ctrd, cri, pod, [app, sidecar], sandbox_pid)
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()], "instance processes survived"
    assert not shim_processes(ctrd)


# ------------------------------------------------------------------------------------------------ acceptance 3

def test_a_containerd_restart_keeps_the_pod_serving_and_cri_still_manages_it(node: Node):
    cri, ctrd = node.cri, node.ctrd
    pod, app = node.run_app_pod("survivor")
    try:
        shim_before = _shim_daemons(ctrd)
        answers: list[int] = []
        stop = threading.Event()

        def keep_asking() -> None:
            while not stop.is_set():
                try:
                    answers.append(node.get(pod, "/hello", timeout=5).status)
                except Exception:  # noqa: BLE001
                    answers.append(0)
                time.sleep(0.1)

        asker = threading.Thread(target=keep_asking, daemon=True)
        asker.start()
        ctrd.restart_daemon()
        time.sleep(1.0)
        stop.set()
        asker.join(timeout=30)
        assert answers and set(answers) == {200}, f"answers while containerd restarted: {answers}"

        # The same shim serves on; containerd reconnected to it (Connect) and asks it for the task's pids.
        assert _shim_daemons(ctrd) == shim_before
        assert wait_until(lambda: cri.pod_status(pod.id).state == 0, timeout=30)  # SANDBOX_READY
        assert {c.id: c.state for c in cri.list_containers(pod.id)}[app] == 1  # CONTAINER_RUNNING
        assert _task_pids(ctrd, app)
        assert cri.container_stats(app).memory.working_set_bytes.value > 0
        assert node.ready(pod)

        cri.stop_container(app, timeout=node.spec.grace_s)
        status = cri.container_status(app)
        assert (status.state, status.exit_code) == ("CONTAINER_EXITED", 0), status
        sandbox_pid = int(cri.pod_info(pod.id)["pid"])
    finally:
        cri.teardown_pod(pod.id)
    assert_pod_left_nothing(ctrd, cri, pod, [app], sandbox_pid)
