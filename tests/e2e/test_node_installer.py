"""The node-installer DaemonSet (deploy/node-installer/) sets up a node through a real kubelet (issue 16, acceptance 4).

One module-scoped cluster (scripts/kube_cluster.py) on a private containerd 2.1 whose config.toml has no Spin runtime
yet, as a node has it before the installer. The installer image (scripts/build_installer_image.py: busybox, the
scripts, the cached bundle) is pushed to the session's registry on 127.0.0.1 and pulled by kubelet from there.
This test plays the node's supervisor (systemd's Restart=always, absent here): when the installer's SIGTERM ends
containerd, it starts containerd again on the same config.

- the DaemonSet's pod unpacks the bundle into the node's install dir, links the shim into a directory on
  containerd's PATH, adds the runtime to config.toml, and signals that containerd (not another one on the machine);
- after the restart, a pod with the RuntimeClass of deploy/ runs on that runtime, through the bundle's interpreter,
  and answers on its pod IP;
- a rerun of the installer (its pod deleted, the DaemonSet makes a new one) changes nothing and restarts nothing;
- the DaemonSet applied again with INSTALLER_ACTION=uninstall puts the config back byte for byte, removes the
  shim's link and the build, and restarts containerd, which then has no Spin runtime.
"""

from __future__ import annotations

import json
import os
import signal
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.e2e.bundle_support import cached_bundle
from tests.e2e.conftest import http_apps, shim_cache_dir  # noqa: F401  (fixtures)
from tests.e2e.cri_support import cri_ready
from tests.e2e.kube_support import (DEPLOY, Kube, container_id, eventually, http_get, namespace, pod_manifest,
                                     started_cluster)
from tests.e2e.registry_support import Registry, push_app, registry, trust_registry  # noqa: F401  (fixture)
from tests.e2e.support import RUNTIME, SHIM_NAME, wait_until

import build_bundle  # noqa: E402  (scripts/ is on sys.path via conftest)
from build_installer_image import build_installer_image  # noqa: E402
from kube_cluster import kube_bin_dir  # noqa: E402
from private_containerd import PrivateContainerd  # noqa: E402

pytestmark = pytest.mark.e2e

DAEMONSET = DEPLOY / "node-installer" / "daemonset.yaml"
#: The image lines of the DaemonSet that its comment tells users to replace.
EXAMPLE_IMAGE = "registry.example.com/containerd-shim-spin-installer:0.1.0"
DAEMONSET_NAME = "containerd-shim-spin-installer"
SELECTOR = "app.kubernetes.io/name=containerd-shim-spin-installer"
PUSH_NAMESPACE = "node-installer-push"  # where the image is imported to be pushed: not k8s.io, so kubelet pulls it
RUNTIME_PLUGIN = "io.containerd.cri.v1.runtime"
INSTALL_TIMEOUT_S = 240.0


@dataclass
class Node:
    kube: Kube
    ctrd: PrivateContainerd
    install_dir: Path
    bin_dir: Path
    bundle: Path

    @property
    def config(self) -> Path:
        return self.ctrd.config_path

    def daemonset(self, image: str, **env: str) -> str:
        """deploy/node-installer/daemonset.yaml as an operator applies it, with their image, pointed at this node's
        paths (a private containerd's config and PATH dir, an install dir of the test's own)."""
        text = DAEMONSET.read_text()
        assert text.count(f"image: {EXAMPLE_IMAGE}") == 2, "the DaemonSet no longer has the image lines to replace"
        manifest = yaml.safe_load(text.replace(EXAMPLE_IMAGE, image))
        # The node's PATH has Debian's containerd 1.6, not this private 2.1: install is told which one reads it.
        values = {"INSTALL_DIR": str(self.install_dir), "CONTAINERD_CONFIG": str(self.config),
                  "SHIM_BIN_DIR": str(self.bin_dir), "INSTALL_ARGS": "--containerd-version 2", **env}
        for variable in manifest["spec"]["template"]["spec"]["initContainers"][0]["env"]:
            variable["value"] = values.get(variable["name"], variable["value"])
        return json.dumps(manifest)

    def installer_pods(self) -> list[dict]:
        return self.kube.pods("kube-system", SELECTOR)

    def install_log(self, pod: dict) -> str:
        """The pod's last run of its init container, as `kubectl logs` shows it."""
        return self.kube.kubectl("logs", "-n", "kube-system", pod["metadata"]["name"], "-c", "install",
                                 check=False).stdout

    def installer_record(self) -> str:
        """What every run did, on the node (install.sh appends it): kubelet keeps only the last run's log of an
        init container, and after the containerd restart the first run asked for, it runs it again."""
        return (self.install_dir / "installer.log").read_text()

    def wait_installer_ready(self, replacing: str = "") -> dict:
        """The DaemonSet's one pod (not `replacing`, a pod deleted just before) Running with its idle container
        Ready, i.e. its init container succeeded."""
        result = self.kube.kubectl("rollout", "status", "-n", "kube-system", f"daemonset/{DAEMONSET_NAME}",
                                   f"--timeout={INSTALL_TIMEOUT_S:.0f}s", check=False, timeout=INSTALL_TIMEOUT_S + 30)
        assert result.returncode == 0, f"the installer never got Ready: {result.stderr}\n{self.kube.describe('kube-system')}"

        def ready() -> dict | None:
            pods = [pod for pod in self.installer_pods() if pod["metadata"]["name"] != replacing
                    and "deletionTimestamp" not in pod["metadata"] and pod["status"].get("phase") == "Running"
                    and all(status.get("ready") for status in pod["status"].get("containerStatuses", [{}]))]
            return pods[0] if len(pods) == 1 else None

        return eventually(ready, timeout=60, what="one Ready installer pod")

    def build_dirs(self) -> list[Path]:
        return sorted(path for path in self.install_dir.iterdir() if path.is_dir())


def _processes_run_from(directory: Path) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/exe").startswith(f"{directory}/"):
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def _stop_processes_run_from(directory: Path) -> None:
    """The bundle's warm fork server outlives containerd by design: stopped by pid, found by its executable."""
    for pid in _processes_run_from(directory):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, shim_cache_dir: Path, registry: Registry,  # noqa: F811
         http_apps: dict[str, Path]) -> Iterator[Node]:  # noqa: F811
    if os.geteuid() != 0:
        pytest.skip("end-to-end tests need root (containerd, kubelet, mounts)")
    bundle = cached_bundle()
    try:
        bin_dir = kube_bin_dir()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"scripts/build_kube.sh failed ({exc}); run it to see why")
    workdir = tmp_path_factory.mktemp("node-installer")
    node_bin = workdir / "node-bin"
    node_bin.mkdir()
    install_dir = workdir / "opt" / "containerd-shim-spin"
    ctrd = PrivateContainerd("2.1", workdir / "containerd", node_bin, debug=True, spin_runtime=False,
                             extra_env={"SPIN_SHIM_CACHE_DIR": str(shim_cache_dir)})
    ctrd.start()
    try:
        assert RUNTIME not in ctrd.config_path.read_text()
        with cri_ready(ctrd):
            trust_registry(ctrd, registry)
            app_image = registry.ref("spin-test/py-spin-installer", "v1")
            push_app(http_apps["py-spin"], app_image)
            with started_cluster(ctrd, workdir, bin_dir) as cluster:
                try:
                    yield Node(Kube(cluster, ctrd, app_image, ""), ctrd, install_dir, node_bin, bundle)
                finally:
                    cluster.kubectl("delete", "daemonset", "-n", "kube-system", DAEMONSET_NAME,
                                    "--ignore-not-found", "--wait=true", "--timeout=60s", check=False, timeout=90)
    finally:
        ctrd.stop()
        _stop_processes_run_from(install_dir)


@dataclass
class Installed:
    image: str
    config_before: bytes
    containerd_pid_before: int
    pod: dict
    log: str


def _restart_when_signalled(node: Node) -> None:
    """The node's supervisor: containerd ends on the installer's SIGTERM and is started again on the same config."""
    if not wait_until(lambda: node.ctrd.pid is None, timeout=INSTALL_TIMEOUT_S, interval=0.2):
        logs = [node.install_log(pod) for pod in node.installer_pods()]
        pytest.fail(f"the installer did not restart containerd; its logs: {logs}\n{node.kube.describe('kube-system')}")
    node.ctrd._spawn_daemon()  # what restart_daemon() does after its own SIGTERM; here the installer sent it
    node.ctrd._wait_ready()


@pytest.fixture(scope="module")
def installed(node: Node, registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Installed:  # noqa: F811
    image = registry.ref("spin-test/node-installer", build_bundle.read_manifest(node.bundle)["source_hash"])
    tar = build_installer_image(image, node.bundle, tmp_path_factory.mktemp("installer-image"))
    node.ctrd.ctr("images", "import", str(tar), namespace=PUSH_NAMESPACE)
    node.ctrd.ctr("images", "push", "--plain-http", image, namespace=PUSH_NAMESPACE)
    pid_before, config_before = node.ctrd.pid, node.config.read_bytes()
    assert pid_before is not None
    node.kube.kubectl("apply", "-f", "-", input=node.daemonset(image))
    _restart_when_signalled(node)
    pod = node.wait_installer_ready()
    return Installed(image, config_before, pid_before, pod, node.installer_record())


def test_the_installer_puts_the_bundle_on_the_node_and_the_runtime_in_its_config(node: Node,
                                                                                installed: Installed) -> None:
    manifest = build_bundle.read_manifest(node.bundle)
    builds = node.build_dirs()
    assert [path.name for path in builds] == [f"{manifest['version']}-{manifest['source_hash']}"]
    assert json.loads((builds[0] / "BUNDLE.json").read_text()) == manifest
    entry = builds[0] / "bin" / SHIM_NAME
    assert os.readlink(node.bin_dir / SHIM_NAME) == str(entry)
    runtimes = tomllib.loads(node.config.read_text())["plugins"][RUNTIME_PLUGIN]["containerd"]["runtimes"]
    assert runtimes["spin"]["runtime_type"] == RUNTIME
    assert runtimes["runc"]["runtime_type"] == "io.containerd.runc.v2"  # the rest of the config is kept
    # The first run: it unpacked the build, changed the config and signalled this containerd, and no other.
    first_run = installed.log.split("sending SIGTERM", 1)
    assert "unpacked containerd-shim-spin-" in first_run[0], installed.log
    assert first_run[1].startswith(f" to containerd (pid {installed.containerd_pid_before},"), installed.log
    statuses = installed.pod["status"]["initContainerStatuses"]
    assert statuses[0]["state"]["terminated"]["exitCode"] == 0, statuses


def test_a_spin_pod_with_the_runtime_class_serves_after_the_restart(node: Node, installed: Installed) -> None:
    node.kube.kubectl("apply", "-f", str(DEPLOY / "runtime-class.yaml"))
    with namespace(node.kube) as ns:
        node.kube.apply(pod_manifest("hello", node.kube.app_image), ns)
        pod = node.kube.wait_pod_ready(ns, "hello")
        app = container_id(pod, "app")
        assert node.kube.container_runtime(app) == RUNTIME
        assert http_get(pod["status"]["podIP"], 80, "/hello") == (200, "Hello from Python!")
        interpreter = node.build_dirs()[0] / "bin" / build_bundle.PY_NAME
        assert os.readlink(f"/proc/{node.kube.task_pid(app)}/exe") == str(interpreter)


def test_a_rerun_changes_nothing_and_restarts_nothing(node: Node, installed: Installed) -> None:
    config, pid = node.config.read_bytes(), node.ctrd.pid
    first = installed.pod["metadata"]["name"]
    node.kube.kubectl("delete", "pod", "-n", "kube-system", first, "--wait=true", "--timeout=60s", timeout=90)
    pod = node.wait_installer_ready(replacing=first)
    log = eventually(lambda: node.install_log(pod), what="the new installer pod's log")
    assert "is already this build" in log and "unchanged: containerd needs no restart" in log, log
    assert node.installer_record().count("sending SIGTERM") == 1
    assert node.config.read_bytes() == config
    assert node.ctrd.pid == pid
    assert len(node.build_dirs()) == 1


def test_the_daemonset_with_the_uninstall_action_reverts_the_node(node: Node, installed: Installed) -> None:
    _stop_processes_run_from(node.install_dir)  # the warm fork server of the Spin pods (gone) keeps its build
    assert wait_until(lambda: not _processes_run_from(node.install_dir), timeout=15)
    signalled_before = node.installer_record().count("sending SIGTERM")
    node.kube.kubectl("apply", "-f", "-", input=node.daemonset(installed.image, INSTALLER_ACTION="uninstall",
                                                                INSTALL_ARGS=""))
    _restart_when_signalled(node)
    node.wait_installer_ready()
    assert node.config.read_bytes() == installed.config_before
    assert not os.path.lexists(node.bin_dir / SHIM_NAME)
    assert node.build_dirs() == [], node.installer_record()
    assert node.installer_record().count("sending SIGTERM") == signalled_before + 1
    # A rerun (the pod deleted, the DaemonSet makes a new one) finds nothing to uninstall and restarts nothing.
    pid, pod = node.ctrd.pid, node.wait_installer_ready()
    node.kube.kubectl("delete", "pod", "-n", "kube-system", pod["metadata"]["name"], "--wait=true", "--timeout=60s",
                      timeout=90)
    rerun = node.wait_installer_ready(replacing=pod["metadata"]["name"])
    assert "nothing to uninstall" in node.install_log(rerun), node.install_log(rerun)
    assert node.ctrd.pid == pid and node.config.read_bytes() == installed.config_before
    assert RUNTIME not in node.config.read_text()
