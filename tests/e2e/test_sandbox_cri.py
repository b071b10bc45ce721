"""Kubernetes volumes reach a Wasm task, and CRI's security settings hold for it (containerd 1.6, 1.7, 2.1).

kubelet hands CRI its volumes as host paths to bind (configMaps, Secrets, emptyDir, PVCs). A SpinKube pod gets its
runtime config Secret at /runtime-config.toml, with spin-operator's `[[config_provider]] type = "env"` table; here
a `[key_value_store.default]` puts the store on a second, writable volume, whose host directory then holds the data
across containers; a third volume replaces the image's /static, which the app's `files` map; a fourth is a tmpfs
(an emptyDir with medium Memory). The container runs with CRI's RuntimeDefault seccomp profile.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from proto.k8s.cri.v1 import api_pb2 as cri
from tests.e2e.http_support import curl
from tests.e2e.support import wait_until
from tests.e2e.registry_support import registry  # noqa: F401  (fixture)
from tests.e2e.test_cri_wasm_pods import Node, _rootfs_image, node, py_spin_artifact  # noqa: F401  (fixtures)

pytestmark = pytest.mark.e2e

#: What spin-operator renders for a SpinApp without variables providers (internal/controller tests), plus a
#: key-value store on a volume.
RUNTIME_CONFIG = """\
[[config_provider]]
type = 'env'
prefix = 'SPIN_VARIABLE_'

[key_value_store.default]
type = "spin"
path = "/data/kv.db"
"""


@pytest.fixture
def volumes(tmp_path: Path):
    config = tmp_path / "secret" / "runtime-config.toml"
    config.parent.mkdir()
    config.write_text(RUNTIME_CONFIG)
    data = tmp_path / "pvc"
    data.mkdir()
    static = tmp_path / "configmap"
    static.mkdir()
    (static / "hello.txt").write_text("from a volume\n")
    memory = tmp_path / "empty-dir-memory"
    memory.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(memory)], check=True)
    try:
        yield {"config": config, "data": data, "static": static, "memory": memory}
    finally:
        subprocess.run(["umount", "-l", str(memory)], check=False)


def _mounts(volumes: dict[str, Path]) -> list[cri.Mount]:
    return [
        cri.Mount(container_path="/runtime-config.toml", host_path=str(volumes["config"]), readonly=True),
        cri.Mount(container_path="/data", host_path=str(volumes["data"])),
        cri.Mount(container_path="/static", host_path=str(volumes["static"]), readonly=True),
        cri.Mount(container_path="/scratch", host_path=str(volumes["memory"])),
    ]


def _status(pid: int) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if ":\t" in line)


def _start(node: Node, pod, volumes: dict[str, Path], attempt: int, image: str) -> str:  # noqa: F811
    spec = node.spec
    container = node.cri.run_container(
        pod, "spin-volumes", image, command=spec.command, env=spec.env, attempt=attempt,
        memory_limit=spec.memory_limit, millicpu=spec.millicpu, mounts=_mounts(volumes),
        security_context=cri.LinuxContainerSecurityContext(
            seccomp=cri.SecurityProfile(profile_type=cri.SecurityProfile.RuntimeDefault)))
    assert wait_until(lambda: node.ready(pod), timeout=120, interval=0.2), node.cri.container_log(container)
    return container


@pytest.fixture(scope="module")
def rootfs_image(node: Node, http_apps, tmp_path_factory) -> str:  # noqa: F811
    """py-spin with spin.toml in the image root on every version: its `files` come from the container's /static,
    which a volume can replace (an artifact's files come from its lock instead)."""
    if node.ctrd.version == "1.6":
        return node.app_image
    return _rootfs_image(node.ctrd, http_apps["py-spin"], tmp_path_factory.mktemp("py-spin-rootfs"))


def test_volumes_reach_the_app_and_its_key_value_data_stays_in_the_volume(node: Node, volumes,  # noqa: F811
                                                                          rootfs_image):
    _serve_from_volumes(node, volumes, rootfs_image, files_from_volume=True)


def test_an_artifacts_runtime_config_and_key_value_store_come_from_volumes(node: Node, volumes):  # noqa: F811
    if node.ctrd.version == "1.6":
        pytest.skip("containerd 1.6 cannot pull Spin artifacts (the rootfs form runs in the test above)")
    _serve_from_volumes(node, volumes, node.app_image, files_from_volume=False)


def _serve_from_volumes(node: Node, volumes: dict[str, Path], image: str, *, files_from_volume: bool) -> None:  # noqa: F811
    cri_client = node.cri
    with cri_client.pod("spin-volumes", runtime_handler=node.spec.handler) as pod:
        first = _start(node, pod, volumes, 0, image)
        if files_from_volume:
            # The files mapping of /static reads the volume that replaced the image's directory.
            assert node.get(pod, "/file?path=/static/hello.txt").body == b"from a volume\n"
        # Variables still resolve from the env through spin-operator's provider table.
        assert node.get(pod, "/vars?names=token").json()["token"] == node.spec.env["API_TOKEN"]
        assert curl(f"http://{pod.ip}:{node.spec.port}/kv/greeting", data=b"kept in the volume").status == 200
        assert (volumes["data"] / "kv.db").is_file()  # the store is the volume's file on the node

        pid = int(_task_pid(node, first))
        assert _status(pid)["Seccomp"] == "2"  # CRI's RuntimeDefault profile
        assert os.stat(f"/proc/{pid}/root/scratch").st_dev == os.stat(volumes["memory"]).st_dev
        assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")

        cri_client.stop_container(first, timeout=10)
        cri_client.remove_container(first)
        _start(node, pod, volumes, 1, image)
        answer = node.get(pod, "/kv/greeting")
        assert (answer.status, answer.body) == (200, b"kept in the volume")
    assert (volumes["config"]).read_text() == RUNTIME_CONFIG  # the read-only volume was not written


def _task_pid(node: Node, container: str) -> str:  # noqa: F811
    from private_containerd import CRI_NAMESPACE

    listing = node.ctrd.ctr("tasks", "ls", namespace=CRI_NAMESPACE).stdout
    for line in listing.splitlines():
        fields = line.split()
        if fields and fields[0] == container:
            return fields[1]
    raise AssertionError(f"{container} not in {listing}")
