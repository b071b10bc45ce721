"""Linux containers (pause, sidecars) through our shim: `ctr run --runtime io.containerd.spin.v2` of a
busybox image runs it with runc, as containerd-shim-runc-v2 would, on containerd 1.6, 1.7 and 2.1.

Each test ends with the leak check plus what only a native task can leave: runc state under
/run/containerd/runc/<namespace> and the container's own processes.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from google.protobuf import any_pb2, empty_pb2
from mkoci import build_image_tar  # scripts/ is on sys.path through conftest

from proto.containerd.task.v2 import shim_pb2
from shim.cli.start import socket_path
from shim.ttrpc.client import TtrpcClient
from shim.ttrpc.status import Code, RpcError
from tests.e2e.support import (
    RUNTIME,
    assert_no_leaks,
    busybox_rootfs,
    task_cgroups,
    wait_until,
)

pytestmark = pytest.mark.e2e

APPLETS = ("sh", "echo", "sleep", "cat", "true", "head", "tr")
RUNC_STATE_ROOT = Path("/run/containerd/runc")
SANDBOX_ANNOTATION = "io.kubernetes.cri.container-type=sandbox"


@pytest.fixture(scope="module")
def busybox_image(containerd, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A linux/amd64 busybox image with applet links and the usual mount points, imported once."""
    base = tmp_path_factory.mktemp("busybox-native")
    rootfs = busybox_rootfs(base / "rootfs", APPLETS)
    ref = "docker.io/spin-shim-test/busybox-native:latest"
    tar = base / "busybox.tar"
    build_image_tar(rootfs, tar, ref, entrypoint=["/bin/sh"])
    containerd.ctr("images", "import", str(tar))
    return ref


def _run(containerd, image: str, task_id: str, *args: str, flags: tuple[str, ...] = ()):
    return containerd.ctr("run", "--rm", "--runtime", RUNTIME, *flags, image, task_id, *args, check=False)


def _task_fields(containerd, task_id: str) -> list[str]:
    for line in containerd.ctr("tasks", "ls").stdout.splitlines()[1:]:
        fields = line.split()
        if fields and fields[0] == task_id:
            return fields
    return []


def _remove(containerd, task_id: str) -> None:
    containerd.ctr("tasks", "rm", "-f", task_id, check=False)
    containerd.ctr("containers", "rm", task_id, check=False)


def _alive(pid: int) -> bool:
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())  # a zombie has an empty cmdline
    except OSError:
        return False


def _assert_nothing_left(containerd, task_id: str, pids: tuple[int, ...] = ()) -> None:
    assert_no_leaks(containerd, [task_id])
    assert not (RUNC_STATE_ROOT / "default" / task_id).exists(), "runc state left"
    assert not [pid for pid in pids if _alive(pid)], "container processes left"


def test_echo_output_reaches_ctr(containerd, busybox_image):
    result = _run(containerd, busybox_image, "native-echo", "/bin/echo", "hello-from-runc")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hello-from-runc"
    _assert_nothing_left(containerd, "native-echo")


def test_exit_code_is_reported(containerd, busybox_image):
    result = _run(containerd, busybox_image, "native-exit3", "sh", "-c", "echo to-stderr >&2; exit 3")
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert "to-stderr" in result.stderr
    _assert_nothing_left(containerd, "native-exit3")


def test_oom_kill_under_the_memory_limit_is_reported(containerd, busybox_image):
    task_id = "native-oom"
    result = _run(containerd, busybox_image, task_id, "sh", "-c", "x=$(head -c 268435456 /dev/zero | tr '\\0' a)",
                  flags=("--memory-limit", str(32 << 20)))
    assert result.returncode == 137, (result.stdout, result.stderr)
    assert f"task {task_id} exited with 137 (OOM killed)" in containerd.log_path.read_text()
    _assert_nothing_left(containerd, task_id)


def test_detached_sleep_ps_metrics_sigkill(containerd, busybox_image):
    task_id = "native-sleep"
    try:
        containerd.ctr("run", "-d", "--runtime", RUNTIME, busybox_image, task_id, "sleep", "1000")
        fields = _task_fields(containerd, task_id)
        assert fields and fields[2] == "RUNNING", fields
        pid = int(fields[1])
        # `runc start` returns once it told runc's init to exec; the exec itself may still be under way.
        assert wait_until(lambda: Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == b"sleep",
                          timeout=5), Path(f"/proc/{pid}/cmdline").read_bytes()
        # runc ran it: its state is where the runc shim keeps it, in its own pid namespace.
        assert (RUNC_STATE_ROOT / "default" / task_id / "state.json").exists()
        assert os.readlink(f"/proc/{pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
        memory = [p for p in task_cgroups(task_id) if "memory" in str(p)]
        assert memory and str(pid) in (memory[0] / "cgroup.procs").read_text().split()

        assert str(pid) in containerd.ctr("tasks", "ps", task_id).stdout.split()
        metrics = containerd.ctr("tasks", "metrics", task_id).stdout
        assert "memory.usage_in_bytes" in metrics or "memory.usage" in metrics, metrics
        assert "pids.current" in metrics or "pids" in metrics, metrics

        containerd.ctr("tasks", "kill", "-s", "SIGKILL", task_id)
        assert wait_until(lambda: _task_fields(containerd, task_id)[2:3] == ["STOPPED"], timeout=15)
        deleted = containerd.ctr("tasks", "rm", task_id, check=False)
        # ctr 1.x exits with the task's status; 2.x exits 0 and warns with it.
        assert deleted.returncode == 137 or "exit code 137" in deleted.stderr, (deleted.returncode, deleted.stderr)
        containerd.ctr("containers", "rm", task_id)
    finally:
        _remove(containerd, task_id)
    _assert_nothing_left(containerd, task_id, (pid,))


def test_kill_all_and_force_remove_of_a_process_tree(containerd, busybox_image):
    task_id = "native-tree"
    try:
        containerd.ctr("run", "-d", "--runtime", RUNTIME, busybox_image, task_id,
                       "sh", "-c", "sleep 1000 & sleep 1000 & wait")
        assert wait_until(lambda: len(containerd.ctr("tasks", "ps", task_id).stdout.splitlines()) >= 4)
        pids = tuple(int(line.split()[0]) for line in containerd.ctr("tasks", "ps", task_id).stdout.splitlines()[1:])
        containerd.ctr("tasks", "kill", "--all", "-s", "SIGKILL", task_id)
        assert wait_until(lambda: _task_fields(containerd, task_id)[2:3] == ["STOPPED"], timeout=15)
        containerd.ctr("tasks", "rm", "-f", task_id, check=False)
        containerd.ctr("containers", "rm", task_id)
    finally:
        _remove(containerd, task_id)
    _assert_nothing_left(containerd, task_id, pids)


def _update(containerd, task_id: str, resources: dict) -> None:
    """Update as CRI sends it (ctr has no command for it): LinuxResources as typeurl's JSON."""
    request = shim_pb2.UpdateTaskRequest(id=task_id, resources=any_pb2.Any(
        type_url="types.containerd.io/opencontainers/runtime-spec/1/LinuxResources",
        value=json.dumps(resources).encode()))

    async def call() -> None:
        client = await TtrpcClient.connect(socket_path(containerd.address, "default", task_id))
        try:
            await client.call("containerd.task.v2.Task", "Update", request, empty_pb2.Empty, timeout=10,
                              metadata={"containerd-namespace-ttrpc": "default"})
        finally:
            client.close()

    asyncio.run(call())


def test_update_sets_limits_through_runc_and_reports_its_refusal(containerd, busybox_image):
    task_id = "native-update"
    try:
        containerd.ctr("run", "-d", "--runtime", RUNTIME, busybox_image, task_id, "sleep", "1000")
        pid = int(_task_fields(containerd, task_id)[1])
        _update(containerd, task_id, {"memory": {"limit": 64 << 20}, "pids": {"limit": 50}})
        memory = [p for p in task_cgroups(task_id) if "memory" in str(p)]
        assert int((memory[0] / "memory.limit_in_bytes").read_text()) == 64 << 20
        with pytest.raises(RpcError) as refused:
            _update(containerd, task_id, {"cpu": {"cpus": "4095"}})  # no such CPU here
        assert refused.value.code == Code.INVALID_ARGUMENT
        assert refused.value.message.startswith("runc update failed: ") and "cpuset" in refused.value.message, \
            refused.value.message
        containerd.ctr("tasks", "kill", "-s", "SIGKILL", task_id)
        assert wait_until(lambda: _task_fields(containerd, task_id)[2:3] == ["STOPPED"], timeout=15)
    finally:
        _remove(containerd, task_id)
    _assert_nothing_left(containerd, task_id, (pid,))


def test_cri_sandbox_runs_natively_and_is_removed_by_force(containerd, busybox_image):
    """The pause container's path: chosen by the annotation alone, deleted while still running."""
    task_id = "native-sandbox"
    try:
        containerd.ctr("run", "-d", "--runtime", RUNTIME, "--annotation", SANDBOX_ANNOTATION,
                       busybox_image, task_id, "sleep", "1000")
        pid = int(_task_fields(containerd, task_id)[1])
        assert (RUNC_STATE_ROOT / "default" / task_id / "state.json").exists()
        containerd.ctr("tasks", "rm", "-f", task_id)
        containerd.ctr("containers", "rm", task_id)
    finally:
        _remove(containerd, task_id)
    _assert_nothing_left(containerd, task_id, (pid,))


def test_missing_binary_of_a_sandbox_fails_with_runcs_message(containerd, busybox_image):
    result = _run(containerd, busybox_image, "native-missing", "/nonexistent",
                  flags=("--annotation", SANDBOX_ANNOTATION))
    containerd.ctr("containers", "rm", "native-missing", check=False)  # --rm skips it after a failed create
    assert result.returncode != 0, result.stdout
    error = [line for line in result.stderr.splitlines() if line.startswith("ctr: ")][-1]
    assert "runc create failed" in error and '"/nonexistent"' in error and "no such file" in error, error
    _assert_nothing_left(containerd, "native-missing")


def test_bad_working_directory_fails_with_runcs_message(containerd, busybox_image):
    result = _run(containerd, busybox_image, "native-badcwd", "/bin/true", flags=("--cwd", "/bin/busybox"))
    containerd.ctr("containers", "rm", "native-badcwd", check=False)
    assert result.returncode != 0, result.stdout
    error = [line for line in result.stderr.splitlines() if line.startswith("ctr: ")][-1]
    assert "runc create failed" in error and "not a directory" in error, error
    _assert_nothing_left(containerd, "native-badcwd")
