"""What a pod may leave behind once StopPodSandbox and RemovePodSandbox returned: nothing.

Shared by the runc-handler pods (tests/e2e/test_cri_runc_pods.py, the infrastructure's own check) and the Spin pods
(tests/e2e/test_cri_wasm_pods.py): the same list of places, whichever runtime ran the pod.
"""

from __future__ import annotations

from pathlib import Path

from cri_client import CriClient, PodHandle, pod_cgroups
from tests.e2e.support import assert_no_leaks, wait_until

from private_containerd import CNI_RESULT_CACHE, RUNC_STATE_ROOT, PrivateContainerd  # noqa: E402


def runc_shims(ctrd: PrivateContainerd) -> list[int]:
    """containerd-shim-runc-v2 processes of this daemon (owned_pids minus the daemon itself)."""
    return [pid for pid in ctrd.owned_pids() if pid != ctrd.pid]


def bridge_ports(bridge: str) -> list[str]:
    brif = Path("/sys/class/net") / bridge / "brif"
    return sorted(p.name for p in brif.iterdir()) if brif.is_dir() else []


def allocated_ips(ctrd: PrivateContainerd) -> list[str]:
    """host-local IPAM keeps one file per leased IP (plus last_reserved_ip.* and a lock) under its dataDir."""
    network = ctrd.cni_network
    assert network is not None
    data = ctrd.workdir / "cni" / "ipam" / network.name
    return sorted(p.name for p in data.iterdir() if p.name[0].isdigit()) if data.is_dir() else []


def assert_pod_left_nothing(ctrd: PrivateContainerd, client: CriClient, pod: PodHandle, container_ids: list[str],
                            sandbox_pid: int) -> None:
    """No shim, instance or container process, socket, mount (rootfs, netns), cgroup, runc state, veth, leased IP
    or libcni cache entry of the pod remains, and CRI no longer lists it."""
    assert_no_leaks(ctrd, [pod.id, *container_ids], namespace="k8s.io")
    assert wait_until(lambda: not runc_shims(ctrd)), f"runc shims left: {runc_shims(ctrd)}"
    assert not Path(f"/proc/{sandbox_pid}").exists(), "the pause process survived"
    assert not pod_cgroups(pod.config.linux.cgroup_parent), "pod cgroups left"
    assert not [d for d in (RUNC_STATE_ROOT / "k8s.io").glob("*") if d.name in (pod.id, *container_ids)]
    assert all(p.id != pod.id for p in client.list_pods())
    network = ctrd.cni_network
    assert network is not None
    assert bridge_ports(network.name) == [], "veth left on the bridge"
    assert allocated_ips(ctrd) == [], "pod IP not released"
    assert not list(CNI_RESULT_CACHE.glob(f"*-{pod.id}-*")), "libcni result cache left"
