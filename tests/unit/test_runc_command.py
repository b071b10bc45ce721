"""The runc argv both the daemon and `delete` build, and the one rule that picks the cgroup driver for both kinds of task."""

from pathlib import Path

import pytest

from shim.kernel.cgroups import Cgroup, expand_systemd_path, uses_systemd_driver
from shim.runc.command import exec_args, force_delete_args, global_args, runc_root


@pytest.mark.parametrize("cgroups_path", [
    "kubepods-besteffort-pod1.slice:cri-containerd:abc",  # CRI under kubelet's systemd driver
    "system.slice:runc:abc",
    ":cri-containerd:abc",  # empty slice: runc takes system.slice
])
def test_a_slice_prefix_name_path_uses_systemd_without_the_option(cgroups_path):
    assert uses_systemd_driver(cgroups_path, False)


@pytest.mark.parametrize("cgroups_path", [
    "/kubepods/besteffort/pod1/abc",  # cgroupfs, absolute
    "/spin-shim-test-pods/pod1/abc",
    "default/abc",  # ctr run: relative, no colon
    "",
    None,
])
def test_a_cgroupfs_path_uses_cgroupfs_unless_the_option_says_systemd(cgroups_path):
    assert not uses_systemd_driver(cgroups_path, False)
    assert uses_systemd_driver(cgroups_path, True)  # SystemdCgroup = true, as the runc shim obeys it


def test_wasm_cgroup_expands_a_systemd_path_by_the_same_rule():
    path = "kubepods-besteffort-pod1.slice:cri-containerd:abc"
    assert Cgroup.from_spec(path, systemd=False).rel_path == expand_systemd_path(path)
    assert Cgroup.from_spec("/a/b", systemd=False).rel_path == "/a/b"


def test_global_args_carry_root_log_and_the_cgroup_driver():
    root = runc_root("k8s.io")
    assert root == Path("/run/containerd/runc/k8s.io")
    assert global_args("/usr/sbin/runc", root, Path("/b/log.json"), systemd_cgroup=False) == [
        "/usr/sbin/runc", "--root", "/run/containerd/runc/k8s.io", "--log", "/b/log.json", "--log-format", "json"]
    assert global_args("runc", root, Path("/b/log.json"), systemd_cgroup=True)[-1] == "--systemd-cgroup"


def test_exec_args_are_go_runcs_detached_exec():
    assert exec_args("c1", Path("/b/p.json"), Path("/b/e1.pid"), None) == [
        "exec", "--process", "/b/p.json", "--detach", "--pid-file", "/b/e1.pid", "c1"]
    assert exec_args("c1", Path("/b/p.json"), Path("/b/e1.pid"), "/tmp/x/console.sock") == [
        "exec", "--process", "/b/p.json", "--console-socket", "/tmp/x/console.sock",
        "--detach", "--pid-file", "/b/e1.pid", "c1"]


def test_force_delete_args():
    assert force_delete_args("c1") == ["delete", "--force", "c1"]
