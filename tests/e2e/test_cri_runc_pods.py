"""The CRI test infrastructure against the node's own runc shim, on containerd 1.6, 1.7 and 2.1.

What kubelet relies on, checked with handler "runc" so that a failure here is the infrastructure's (pause image,
CNI bridge, CRI client, log reader, teardown), never the Spin shim's: pods get an IP in the daemon's own subnet and
the host reaches them, container output lands in the CRI log file, exit codes become Completed / Error, stats and
resource limits work, and StopPodSandbox + RemovePodSandbox (and stopping the daemon) leave nothing behind.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import VERSIONS, running_containerd
from cri_client import CriClient, CriError, PodHandle, pod_cgroups, remove_pod_cgroups
from tests.e2e.cri_support import (  # noqa: F401  (fixtures)
    HTTPD_INDEX,
    HTTPD_ROOT,
    cri_busybox,
    cri_containerd,
    wait_network_ready,
)
from tests.e2e.pod_checks import assert_pod_left_nothing, bridge_ports
from tests.e2e.support import mounts_under, wait_until

from private_containerd import CNI_CLAIM_DIR, CNI_RESULT_CACHE, PrivateContainerd  # noqa: E402

pytestmark = pytest.mark.e2e

MiB = 1 << 20
HTTP_PORT = 8080


def _curl(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", "3", url], capture_output=True, text=True, check=False)


def _exited(client: CriClient, container_id: str) -> bool:
    return client.container_status(container_id).state == "CONTAINER_EXITED"


def _v1_cgroup(pod: PodHandle, controller: str) -> Path:
    """The pod's cgroup in a v1 controller hierarchy (these machines are cgroup v1 hybrid: v1 controllers under
    /sys/fs/cgroup/<controller>, cgroup2 only at /sys/fs/cgroup/unified)."""
    hierarchy = Path("/sys/fs/cgroup") / controller
    if not hierarchy.is_dir():
        pytest.skip(f"no cgroup v1 {controller} hierarchy on this host")
    return hierarchy / pod.config.linux.cgroup_parent.strip("/")


def test_runtime_and_network_are_ready(cri_containerd: tuple[PrivateContainerd, CriClient]) -> None:
    ctrd, client = cri_containerd
    version = client.version()
    assert version.runtime_name == "containerd"
    assert version.runtime_version.startswith(ctrd.version + ".")
    assert version.runtime_api_version == "v1"
    conditions = client.status()
    assert conditions["RuntimeReady"][0] and conditions["NetworkReady"][0], conditions


def test_pod_gets_an_ip_in_its_daemons_subnet_and_the_host_reaches_it(
    cri_containerd: tuple[PrivateContainerd, CriClient], cri_busybox: str
) -> None:
    ctrd, client = cri_containerd
    network = ctrd.cni_network
    assert network is not None
    with client.pod("web") as pod:
        assert network.contains(pod.ip), f"pod ip {pod.ip} not in {network.subnet}"
        assert bridge_ports(network.name), "the pod's veth is not on the daemon's bridge"
        server = client.run_container(pod, "httpd", cri_busybox,
                                      command=["httpd", "-f", "-p", str(HTTP_PORT), "-h", HTTPD_ROOT])
        url = f"http://{pod.ip}:{HTTP_PORT}/"
        assert wait_until(lambda: _curl(url).returncode == 0, timeout=15), _curl(url).stderr
        assert _curl(url).stdout == HTTPD_INDEX
        assert client.container_status(server).state == "CONTAINER_RUNNING"
        # The pod's own loopback is up: CRI attaches its loopback network beside the bridge.
        exit_code, stdout, _ = client.exec_sync(server, ["ip", "-o", "addr", "show", "lo"])
        assert exit_code == 0 and b"127.0.0.1" in stdout, stdout
        exit_code, stdout, _ = client.exec_sync(server, ["wget", "-q", "-O", "-", f"http://127.0.0.1:{HTTP_PORT}/"])
        assert exit_code == 0 and stdout.decode() == HTTPD_INDEX
        client.stop_container(server, timeout=2)
        state = client.container_status(server)
        assert state.state == "CONTAINER_EXITED"


def test_output_goes_to_the_cri_log_and_exit_codes_become_reasons(
    cri_containerd: tuple[PrivateContainerd, CriClient], cri_busybox: str
) -> None:
    _, client = cri_containerd
    with client.pod("batch") as pod:
        done = client.run_container(pod, "done", cri_busybox,
                                    command=["sh", "-c", "echo to-stdout; echo to-stderr >&2; echo second-line"])
        failed = client.run_container(pod, "failed", cri_busybox, command=["sh", "-c", "echo failing; exit 3"])
        assert wait_until(lambda: _exited(client, done) and _exited(client, failed), timeout=15)

        ok = client.container_status(done)
        assert (ok.exit_code, ok.reason) == (0, "Completed")
        assert ok.log_path == pod.log_directory / "done" / "0.log"
        assert client.container_log(done, "stdout") == ["to-stdout", "second-line"]
        assert client.container_log(done, "stderr") == ["to-stderr"]
        assert sorted(client.container_log(done)) == ["second-line", "to-stderr", "to-stdout"]

        bad = client.container_status(failed)
        assert (bad.exit_code, bad.reason) == (3, "Error")
        # Both set; not ordered: for a process this short, containerd may stamp started_at after the exit.
        assert bad.started_at_ns > 0 and bad.finished_at_ns > 0
        assert client.container_log(failed) == ["failing"]

        client.remove_container(done)
        assert {c.id for c in client.list_containers(pod.id)} == {failed}


def test_stats_and_resource_limits(cri_containerd: tuple[PrivateContainerd, CriClient], cri_busybox: str) -> None:
    _, client = cri_containerd
    with client.pod("limits") as pod:
        # A short busy loop, then sleep: CPU time is non-zero, and the container stays up for the stats call.
        busy = client.run_container(pod, "busy", cri_busybox, memory_limit=64 * MiB, millicpu=500,
                                    command=["sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 300"])
        limit_file = _v1_cgroup(pod, "memory") / busy / "memory.limit_in_bytes"
        assert int(limit_file.read_text()) == 64 * MiB

        def cpu_used() -> bool:
            return client.container_stats(busy).cpu.usage_core_nano_seconds.value > 0

        assert wait_until(cpu_used, timeout=10)
        stats = client.container_stats(busy)
        assert stats.attributes.id == busy
        assert stats.attributes.metadata.name == "busy"
        assert stats.memory.working_set_bytes.value > 0
        assert stats.memory.timestamp > 0 and stats.cpu.timestamp > 0

        client.update_container_resources(busy, memory_limit=128 * MiB, millicpu=250)
        assert int(limit_file.read_text()) == 128 * MiB
        assert int((_v1_cgroup(pod, "cpu") / busy / "cpu.cfs_quota_us").read_text()) == 25_000


def test_stop_and_remove_pod_leave_nothing_behind(
    cri_containerd: tuple[PrivateContainerd, CriClient], cri_busybox: str
) -> None:
    ctrd, client = cri_containerd
    pod = client.run_pod("teardown")
    sleeper = client.run_container(pod, "sleeper", cri_busybox, command=["sleep", "300"])
    sandbox_pid = int(client.pod_info(pod.id)["pid"])
    assert Path(f"/proc/{sandbox_pid}").exists()
    # netns_mounts_under_state_dir: the pod netns is a bind mount in our state dir, not in /var/run/netns.
    assert [m for m in mounts_under(ctrd.state_dir) if "/netns/" in m], "no pod netns mount under the state dir"
    client.stop_pod(pod.id)
    assert client.pod_status(pod.id).state == 1  # SANDBOX_NOTREADY
    assert client.container_status(sleeper).state == "CONTAINER_EXITED"
    client.remove_pod(pod.id)
    assert_pod_left_nothing(ctrd, client, pod, [sleeper], sandbox_pid)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("pod_left_running", [False, True], ids=["pod-removed", "pod-left-running"])
def test_stopping_the_daemon_removes_its_bridge(
    version: str, pod_left_running: bool, tmp_path: Path, shim_dir: Path, shim_cache_dir: Path
) -> None:
    """Also when a test dies with its pod still up: stop() must still free the bridge, netns and slot claim."""
    with running_containerd(version, tmp_path / "w", shim_dir, shim_cache_dir) as ctrd:
        network = ctrd.enable_cni()
        ctrd.import_pause_image()
        client = CriClient(ctrd)
        try:
            wait_network_ready(client)
            pod = client.run_pod("bridge-owner")
            assert Path("/sys/class/net", network.name).exists()
            if not pod_left_running:
                client.teardown_pod(pod.id)
        finally:
            client.close()
        cgroup_parent = pod.config.linux.cgroup_parent
    assert not Path("/sys/class/net", network.name).exists(), f"bridge {network.name} left"
    assert not (CNI_CLAIM_DIR / network.name).exists(), "CNI slot claim left"
    assert not list(CNI_RESULT_CACHE.glob(f"{network.name}-*"))
    assert not list(CNI_RESULT_CACHE.glob(f"*-{pod.id}-*")), "libcni result cache left"
    assert not mounts_under(tmp_path)
    assert ctrd.cni_network is None
    # containerd never removes the pod-level cgroup (kubelet does, and so does CriClient.remove_pod); after a
    # daemon stop with the pod up it can be removed, which proves runc's container cgroups under it are gone.
    remove_pod_cgroups(cgroup_parent)
    assert not pod_cgroups(cgroup_parent)


def test_image_status_and_a_failed_pull_carry_containerds_answer(
    cri_containerd: tuple[PrivateContainerd, CriClient], cri_busybox: str
) -> None:
    _, client = cri_containerd
    image = client.image_status(cri_busybox)
    assert image is not None and cri_busybox in image.repo_tags
    assert image.id.startswith("sha256:")
    assert any(cri_busybox in i.repo_tags for i in client.list_images())
    assert client.image_status("docker.io/spin-shim-test/never-imported:1") is None
    with pytest.raises(CriError) as failure:
        client.pull_image("127.0.0.1:1/spin-shim-test/unreachable:1", timeout=30)
    assert "127.0.0.1:1" in failure.value.details, failure.value


def test_host_network_pod_runs_without_a_pod_ip(
    cri_containerd: tuple[PrivateContainerd, CriClient], cri_busybox: str
) -> None:
    """kubelet leaves the hostname empty for hostNetwork pods (kubelet kuberuntime_sandbox.go
    generatePodSandboxConfig); runc refuses one without a private UTS namespace (runc
    libcontainer/configs/validate/validator.go)."""
    ctrd, client = cri_containerd
    network = ctrd.cni_network
    assert network is not None
    with client.pod("hostnet", host_network=True) as pod:
        assert pod.ip == ""
        assert bridge_ports(network.name) == []
        done = client.run_container(pod, "ifaces", cri_busybox, command=["ip", "-o", "link"])
        assert wait_until(lambda: _exited(client, done), timeout=15)
        assert client.container_status(done).exit_code == 0
        host_interfaces = {name for name in os.listdir("/sys/class/net") if name != "lo"}
        seen = {line.split(":")[1].strip().split("@")[0] for line in client.container_log(done)}
        assert host_interfaces & seen, f"the host's interfaces are not visible: {seen}"
