"""`ctr` drives Wasm command tasks through our shim on containerd 1.6, 1.7 and 2.1.

Issue 2, acceptance 1-3: run --rm with the guest's output and exit code, the detached
lifecycle (ls, ps, metrics, kill with SIGTERM and SIGKILL, rm), and a shim daemon killed
under a running task, each followed by a check that nothing leaked.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.e2e.support import (
    RUNTIME,
    assert_no_leaks,
    shim_processes,
    task_cgroups,
    wait_until,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def hello_image(images, guests) -> str:
    return images.wasm_image("hello", {"/hello.wasm": guests["hello.wasm"]}, ["/hello.wasm"])


@pytest.fixture(scope="module")
def p2_image(images, guests) -> str:
    return images.wasm_image("hello-p2", {"/hello-p2.wasm": guests["hello-component.wasm"]}, ["/hello-p2.wasm"])


@pytest.fixture(scope="module")
def loop_image(images, guests) -> str:
    return images.wasm_image("loop", {"/loop.wasm": guests["loop.wasm"]}, ["/loop.wasm"])


@pytest.fixture(scope="module")
def sleep_image(images, guests) -> str:
    return images.wasm_image("sleep", {"/sleep.wasm": guests["sleep.wasm"]}, ["/sleep.wasm"])


def _task_line(containerd, task_id: str) -> list[str]:
    for line in containerd.ctr("tasks", "ls").stdout.splitlines()[1:]:
        fields = line.split()
        if fields and fields[0] == task_id:
            return fields
    return []


def _task_status(containerd, task_id: str) -> str | None:
    fields = _task_line(containerd, task_id)
    return fields[2] if len(fields) >= 3 else None


def _remove(containerd, task_id: str) -> None:
    containerd.ctr("tasks", "rm", "-f", task_id, check=False)
    containerd.ctr("containers", "rm", task_id, check=False)


def test_run_rm_prints_guest_stdout_and_exits_zero(containerd, hello_image):
    result = containerd.ctr("run", "--rm", "--runtime", RUNTIME, hello_image, "run-ok",
                            "/hello.wasm", "greet", check=False)
    assert result.returncode == 0, result.stderr
    assert "hello from wasm" in result.stdout
    assert "greet" in result.stdout  # the task's args reach the guest
    assert_no_leaks(containerd, ["run-ok"])


def test_run_rm_returns_the_guest_exit_code(containerd, hello_image):
    result = containerd.ctr("run", "--rm", "--runtime", RUNTIME, hello_image, "run-exit3",
                            "/hello.wasm", "exit", "3", check=False)
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert "hello from wasm" in result.stdout
    assert_no_leaks(containerd, ["run-exit3"])


def test_run_rm_passes_the_task_env(containerd, hello_image):
    result = containerd.ctr("run", "--rm", "--runtime", RUNTIME, "--env", "GREETING=from-env",
                            hello_image, "run-env", check=False)
    assert result.returncode == 0, result.stderr
    assert "from-env" in result.stdout
    assert_no_leaks(containerd, ["run-env"])


def test_run_rm_of_a_wasi_p2_command_component(containerd, p2_image):
    ok = containerd.ctr("run", "--rm", "--runtime", RUNTIME, p2_image, "run-p2",
                        "/hello-p2.wasm", "greet", check=False)
    assert ok.returncode == 0, ok.stderr
    assert "hello from wasm component" in ok.stdout
    failing = containerd.ctr("run", "--rm", "--runtime", RUNTIME, p2_image, "run-p2-fail",
                             "/hello-p2.wasm", "exit", "7", check=False)
    assert failing.returncode == 7, (failing.stdout, failing.stderr)
    assert_no_leaks(containerd, ["run-p2", "run-p2-fail"])


def test_detached_lifecycle_ls_ps_metrics_kill_rm(containerd, loop_image):
    task_id = "detached-loop"
    try:
        containerd.ctr("run", "-d", "--runtime", RUNTIME, loop_image, task_id)
        fields = _task_line(containerd, task_id)
        assert fields and fields[2] == "RUNNING", fields
        pid = int(fields[1])
        assert os.path.exists(f"/proc/{pid}")
        # The instance process lives in the task's cgroup, like a runc container's init.
        assert task_cgroups(task_id), "task cgroup missing"
        memory_procs = [p / "cgroup.procs" for p in task_cgroups(task_id) if "memory" in str(p)]
        assert memory_procs and str(pid) in memory_procs[0].read_text().split()
        # Without --net-host the spec asks for a new network namespace: the instance has its own.
        assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")

        ps = containerd.ctr("tasks", "ps", task_id).stdout
        assert str(pid) in ps.split()

        metrics = containerd.ctr("tasks", "metrics", task_id).stdout
        assert "memory.usage_in_bytes" in metrics or "memory.usage" in metrics, metrics
        assert "pids.current" in metrics or "pids" in metrics, metrics

        containerd.ctr("tasks", "kill", task_id)  # SIGTERM: interrupts the busy guest
        assert wait_until(lambda: _task_status(containerd, task_id) == "STOPPED", timeout=15)
        assert not os.path.exists(f"/proc/{pid}/cmdline") or \
            not open(f"/proc/{pid}/cmdline", "rb").read()
        containerd.ctr("tasks", "rm", task_id)
        containerd.ctr("containers", "rm", task_id)
    finally:
        _remove(containerd, task_id)
    assert_no_leaks(containerd, [task_id])


def test_a_systemd_style_cgroup_path_is_placed_where_systemd_would_put_it(containerd, loop_image):
    """kubelet with the systemd cgroup driver makes CRI write `slice:prefix:name` paths; the instance process must
    land in the scope systemd would create (runc's fs driver expands it the same way), limited and measured there."""
    task_id = "systemd-path"
    slices = ["spinshimtest.slice", "spinshimtest-ctr.slice"]
    scope = f"spin-{task_id}.scope"
    memory = Path("/sys/fs/cgroup/memory")
    leaf = memory.joinpath(*slices, scope)
    try:
        containerd.ctr("run", "-d", "--runtime", RUNTIME, "--cgroup", f"{slices[-1]}:spin:{task_id}",
                       "--memory-limit", str(96 << 20), loop_image, task_id)
        pid = int(_task_line(containerd, task_id)[1])
        assert str(pid) in (leaf / "cgroup.procs").read_text().split()
        assert int((leaf / "memory.limit_in_bytes").read_text()) == 96 << 20
        assert "memory" in containerd.ctr("tasks", "metrics", task_id).stdout
        containerd.ctr("tasks", "kill", "-s", "SIGKILL", task_id)
        assert wait_until(lambda: _task_status(containerd, task_id) == "STOPPED", timeout=15)
    finally:
        _remove(containerd, task_id)
        # The slices are systemd's (kubelet's) on a real node; here nobody else removes them.
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            for depth in range(len(slices), 0, -1):
                directory = hierarchy.joinpath(*slices[:depth])
                if directory.is_dir():
                    directory.rmdir()
    assert not leaf.exists(), "the scope was left behind"
    assert_no_leaks(containerd, [task_id])


def test_guest_blocked_in_a_host_call_needs_sigkill(containerd, sleep_image):
    task_id = "detached-sleep"
    try:
        containerd.ctr("run", "-d", "--runtime", RUNTIME, sleep_image, task_id)
        assert _task_status(containerd, task_id) == "RUNNING"
        containerd.ctr("tasks", "kill", task_id)
        time.sleep(2)  # SIGTERM cannot interrupt a guest inside a host call
        assert _task_status(containerd, task_id) == "RUNNING"
        containerd.ctr("tasks", "kill", "--signal", "SIGKILL", task_id)
        assert wait_until(lambda: _task_status(containerd, task_id) == "STOPPED", timeout=15)
        containerd.ctr("tasks", "rm", task_id)
        containerd.ctr("containers", "rm", task_id)
    finally:
        _remove(containerd, task_id)
    assert_no_leaks(containerd, [task_id])


def test_kill_all_and_force_remove_of_a_running_task(containerd, loop_image):
    task_id = "detached-force"
    try:
        containerd.ctr("run", "-d", "--runtime", RUNTIME, loop_image, task_id)
        containerd.ctr("tasks", "kill", "--all", "--signal", "SIGKILL", task_id)
        assert wait_until(lambda: _task_status(containerd, task_id) == "STOPPED", timeout=15)
        containerd.ctr("tasks", "rm", "-f", task_id)
        containerd.ctr("containers", "rm", task_id)
    finally:
        _remove(containerd, task_id)
    assert_no_leaks(containerd, [task_id])


def test_shim_daemon_killed_under_a_running_task(containerd, loop_image):
    task_id = "shim-sigkill"
    try:
        # --fifo-dir: with the daemon killed, nobody would remove ctr's FIFOs from /run/containerd/fifo.
        containerd.ctr("run", "-d", "--fifo-dir", str(containerd.fifo_dir), "--runtime", RUNTIME, loop_image, task_id)
        instance_pid = int(_task_line(containerd, task_id)[1])
        daemon_pid = int(open(f"/proc/{instance_pid}/stat").read().rsplit(")", 1)[1].split()[1])
        assert daemon_pid in shim_processes(containerd)
        os.kill(daemon_pid, signal.SIGKILL)
        # containerd sees the connection drop, reports the task exited and runs `delete`.
        assert wait_until(lambda: _task_status(containerd, task_id) in (None, "STOPPED"), timeout=20)
        assert wait_until(lambda: not os.path.exists(f"/proc/{instance_pid}/cmdline")
                          or not open(f"/proc/{instance_pid}/cmdline", "rb").read(), timeout=10)
        containerd.ctr("tasks", "rm", "-f", task_id, check=False)
        containerd.ctr("containers", "rm", task_id)
    finally:
        _remove(containerd, task_id)
    assert_no_leaks(containerd, [task_id])


def test_net_host_task_shares_the_host_network_namespace(containerd, loop_image):
    task_id = "net-host"
    try:
        containerd.ctr("run", "-d", "--net-host", "--runtime", RUNTIME, loop_image, task_id)
        pid = int(_task_line(containerd, task_id)[1])
        assert os.readlink(f"/proc/{pid}/ns/net") == os.readlink("/proc/self/ns/net")
        containerd.ctr("tasks", "kill", "-s", "SIGKILL", task_id)
        assert wait_until(lambda: _task_status(containerd, task_id) == "STOPPED", timeout=15)
    finally:
        _remove(containerd, task_id)
    assert_no_leaks(containerd, [task_id])
