"""A Wasm task is a container: its instance process lives in its own root, as the spec's user, with the spec's
seccomp profile and device rules, and owns its port (README "Security model").

Everything through `ctr run` on containerd 2.1 with the Spin Python SDK app (py-spin); crafted images are in
test_sandbox_attacks.py, the CRI side in test_sandbox_cri.py.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

import pytest

from tests.e2e.http_support import serving
from tests.e2e.sandbox_support import assert_specs_identity, bundle_spec

pytestmark = pytest.mark.e2e

ENV = {"SPIN_VARIABLE_API_TOKEN": "t"}


# -- the process: namespaces, root, credentials, seccomp, devices ------------------------------------


@pytest.fixture(scope="module")
def seccomp_task(containerd_21, images_21, http_apps):
    image = images_21.wasm_image("py-spin", {"/": http_apps["py-spin"]}, ["/"])
    with serving(containerd_21, image, "sandbox-root", ENV,
                 ctr_args=("--seccomp", "--cap-drop", "CAP_NET_RAW")) as task:
        yield task


def test_instance_process_has_its_own_mount_namespace_and_root(seccomp_task, http_apps):
    pid = seccomp_task.pid
    assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    assert os.readlink(f"/proc/{pid}/cwd") == "/"
    spec = bundle_spec(seccomp_task.daemon, seccomp_task.task_id)
    mount_tops = {m["destination"].strip("/").split("/")[0] for m in spec.get("mounts", [])}
    image_entries = set(os.listdir(http_apps["py-spin"]))
    visible = set(os.listdir(f"/proc/{pid}/root"))
    assert visible <= image_entries | mount_tops | {".spin-shim", ".spin"}, visible - image_entries - mount_tops
    for host_only in ("usr", "var", "work", "root", "sys", "proc"):
        assert host_only not in visible or host_only in mount_tops - {"sys", "proc"}
    # The node's cache and containerd's socket were bound in for the load only.
    shim_view = Path(f"/proc/{pid}/root/.spin-shim")
    assert not any((shim_view / "precompiled").iterdir())
    assert not (shim_view / "content").exists() or not any((shim_view / "content").iterdir())


def test_instance_process_has_the_specs_identity_capabilities_and_seccomp(seccomp_task):
    spec = bundle_spec(seccomp_task.daemon, seccomp_task.task_id)["process"]
    assert "CAP_NET_RAW" not in spec["capabilities"]["bounding"]
    status = assert_specs_identity(seccomp_task, seccomp_task.pid)
    assert status["Seccomp"] == "2"
    assert seccomp_task.get("/hello").status == 200  # and it still serves under the filter


def test_device_rules_of_the_spec_are_in_force(seccomp_task):
    devices = Path("/sys/fs/cgroup/devices/default") / seccomp_task.task_id / "devices.list"
    if not devices.exists():
        pytest.skip("no cgroup v1 devices controller on this node")
    rules = devices.read_text().split("\n")
    assert "a *:* rwm" not in rules
    assert "c 1:3 rwm" in rules  # /dev/null, one of the spec's allowed devices


def test_no_process_outside_the_task_can_join_its_port(seccomp_task):
    port = seccomp_task.port
    intruder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        with pytest.raises(OSError) as refused:
            intruder.bind(("127.0.0.1", port))
        assert refused.value.errno == errno.EADDRINUSE
    finally:
        intruder.close()
    assert seccomp_task.get("/hello").status == 200
