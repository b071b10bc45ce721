"""Exec into the native containers of a Spin pod (issue 5): `kubectl exec` and exec probes on a busybox sidecar work
as they do in a runc pod, on containerd 1.6, 1.7 and 2.1.

The pod runs with runtime_handler "spin": its pause container and the busybox sidecar (an ELF entrypoint, no
spin.toml) are run by our shim through runc, a sleeping Wasm guest beside them by an instance process. ExecSync
(what exec probes and `kubectl exec` without a terminal use) must give the sidecar's exit codes and output; a timeout
must end the exec exactly as containerd's runc path ends it (compared with the same call in a runc-handler pod);
exec into the Wasm container fails with the shim's reason; and the removed pod leaves nothing behind. `ctr tasks
exec` drives the same path through containerd's task API directly, with a terminal too, and a native container
whose shim daemon was SIGKILLed is cleaned up by `delete` down to runc's state.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cri_client import CriClient, CriError, PodHandle
from tests.e2e.cri_support import cri_busybox, cri_containerd, import_image  # noqa: F401  (fixtures)
from tests.e2e.pod_checks import assert_pod_left_nothing
from tests.e2e.support import RUNTIME, assert_no_leaks, shim_processes, wait_until

from mkoci import build_image_tar  # noqa: E402  (scripts/ is on sys.path via conftest)
from private_containerd import RUNC_STATE_ROOT, PrivateContainerd  # noqa: E402

pytestmark = pytest.mark.e2e

SLEEP_WASM_REF = "docker.io/spin-shim-test/sleep-wasm:latest"


@pytest.fixture(scope="module")
def cri_sleep_wasm(cri_containerd: tuple[PrivateContainerd, CriClient], guests: dict[str, Path],
                   tmp_path_factory: pytest.TempPathFactory) -> str:
    """A Wasm image whose guest prints "sleeping" and blocks for an hour in one host call, in CRI's namespace."""
    ctrd, _ = cri_containerd
    workdir = tmp_path_factory.mktemp("sleep-wasm")
    rootfs = workdir / "rootfs"
    rootfs.mkdir()
    (rootfs / "sleep.wasm").write_bytes(guests["sleep.wasm"].read_bytes())
    tar = workdir / "sleep-wasm.tar"
    build_image_tar(rootfs, tar, SLEEP_WASM_REF, os_="wasip1", arch="wasm", entrypoint=["/sleep.wasm"])
    import_image(ctrd, tar, all_platforms=True)
    return SLEEP_WASM_REF


def _sidecar(client: CriClient, pod: PodHandle, image: str) -> str:
    return client.run_container(pod, "sidecar", image, command=["sleep", "3600"])


def _exec_processes(container_id: str) -> list[int]:
    """Host pids of `sleep 30` execs still in the container's cgroup (an exec that a timeout did not end)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            cgroups = Path(f"/proc/{entry}/cgroup").read_text()
        except OSError:
            continue
        if cmdline == b"sleep\x0030\x00" and container_id in cgroups:
            found.append(int(entry))
    return found


def _timed_out_exec(client: CriClient, container_id: str) -> tuple[str, str, float]:
    """ExecSync of `sleep 30` with a 1 s timeout: (how it ended, containerd's message, seconds it took)."""
    began = time.monotonic()
    try:
        exit_code, stdout, stderr = client.exec_sync(container_id, ["sleep", "30"], timeout=1)
    except CriError as error:
        return error.code.name, error.details, time.monotonic() - began
    return f"exit {exit_code}", (stdout + stderr).decode(), time.monotonic() - began


# -- CRI: a Spin pod's sidecar ----------------------------------------------------------------------------------

def test_exec_sync_into_a_spin_pods_sidecar_as_kubelet_does(cri_containerd, cri_busybox, cri_sleep_wasm):
    ctrd, client = cri_containerd
    pod = client.run_pod("exec-spin", runtime_handler="spin")
    try:
        sidecar = _sidecar(client, pod, cri_busybox)
        wasm = client.run_container(pod, "wasm", cri_sleep_wasm)
        assert wait_until(lambda: client.container_log(wasm) == ["sleeping"], timeout=60), client.container_log(wasm)
        sandbox_pid = int(client.pod_info(pod.id)["pid"])

        assert client.exec_sync(sidecar, ["echo", "hello"]) == (0, b"hello\n", b"")
        assert client.exec_sync(sidecar, ["sh", "-c", "echo out; echo err >&2; exit 3"]) == (3, b"out\n", b"err\n")
        # The exec runs in the sidecar: its filesystem, its hostname (the pod's UTS namespace).
        assert client.exec_sync(sidecar, ["cat", "/www/index.html"])[0] == 0
        assert client.exec_sync(sidecar, ["hostname"]) == (0, b"exec-spin\n", b"")
        # An exec probe: the same short command, again and again, as kubelet's prober sends it.
        for _ in range(5):
            assert client.exec_sync(sidecar, ["sh", "-c", "test -e /proc/1/status"], timeout=5) == (0, b"", b"")
        # A failed probe command is an exit code, not an error.
        assert client.exec_sync(sidecar, ["false"]) == (1, b"", b"")
        with pytest.raises(CriError) as missing:
            client.exec_sync(sidecar, ["/no/such/binary"])
        assert "/no/such/binary" in missing.value.details and "no such file" in missing.value.details, missing.value

        with pytest.raises(CriError) as refused:
            client.exec_sync(wasm, ["echo", "hello"])
        assert "exec is not supported for Wasm tasks" in refused.value.details, refused.value
        assert "httpGet probe on /.well-known/spin/health" in refused.value.details
        # Neither refusal disturbed the pod.
        assert client.container_status(sidecar).state == "CONTAINER_RUNNING"
        assert client.container_status(wasm).state == "CONTAINER_RUNNING"
        assert client.exec_sync(sidecar, ["echo", "still"]) == (0, b"still\n", b"")
    finally:
        client.teardown_pod(pod.id)
    assert_pod_left_nothing(ctrd, client, pod, [sidecar, wasm], sandbox_pid)


def test_exec_sync_timeout_ends_as_in_a_runc_pod(cri_containerd, cri_busybox):
    ctrd, client = cri_containerd
    outcomes = {}
    for handler in ("runc", "spin"):
        with client.pod(f"exec-timeout-{handler}", runtime_handler=handler) as pod:
            sidecar = _sidecar(client, pod, cri_busybox)
            outcomes[handler] = _timed_out_exec(client, sidecar)
            # The timed-out exec was killed, not left running in the container.
            assert wait_until(lambda: not _exec_processes(sidecar), timeout=10), _exec_processes(sidecar)
            assert client.exec_sync(sidecar, ["echo", "after"]) == (0, b"after\n", b"")
    (runc_end, runc_message, runc_took), (spin_end, spin_message, spin_took) = outcomes["runc"], outcomes["spin"]
    assert (spin_end, spin_message) == (runc_end, runc_message), outcomes
    assert spin_took < 15 and runc_took < 15, outcomes
    assert_no_leaks(ctrd, [], namespace="k8s.io")


# -- ctr: containerd's task API on a native container -----------------------------------------------------------

@pytest.fixture(scope="module")
def ctr_busybox(cri_containerd: tuple[PrivateContainerd, CriClient], cri_busybox: str) -> str:
    """The busybox image, also in the namespace ctr uses (CRI keeps its own in k8s.io)."""
    ctrd, _ = cri_containerd
    export = ctrd.workdir / "busybox-export.tar"
    ctrd.ctr("images", "export", str(export), cri_busybox, namespace="k8s.io")
    ctrd.ctr("images", "import", str(export))
    return cri_busybox


def _run_detached(ctrd: PrivateContainerd, image: str, task_id: str) -> int:
    # --fifo-dir: a test that kills the daemon would leave ctr's FIFOs in /run/containerd/fifo for good.
    ctrd.ctr("run", "-d", "--fifo-dir", str(ctrd.fifo_dir), "--runtime", RUNTIME, image, task_id, "sleep", "3600")
    return _task_pid(ctrd, task_id)


def _task_pid(ctrd: PrivateContainerd, task_id: str) -> int:
    for line in ctrd.ctr("tasks", "ls").stdout.splitlines()[1:]:
        fields = line.split()
        if fields and fields[0] == task_id:
            return int(fields[1])
    raise AssertionError(f"{task_id} not listed")


def _remove(ctrd: PrivateContainerd, task_id: str) -> None:
    ctrd.ctr("tasks", "rm", "-f", task_id, check=False)
    ctrd.ctr("containers", "rm", task_id, check=False)


def _alive(pid: int) -> bool:
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())  # a zombie has an empty cmdline
    except OSError:
        return False


def _assert_nothing_left(ctrd: PrivateContainerd, task_id: str, pids: list[int]) -> None:
    assert_no_leaks(ctrd, [task_id])
    assert not (RUNC_STATE_ROOT / "default" / task_id).exists(), "runc state left"
    assert not [pid for pid in pids if _alive(pid)], "container or exec processes left"


def _ctr_in_a_terminal(ctrd: PrivateContainerd, *args: str, timeout: float = 30) -> tuple[int, bytes]:
    """ctr with a pty as its stdio (what `ctr ... -t` requires), as a user at a terminal runs it."""
    argv = [str(ctrd.bin_dir / "ctr"), "--address", ctrd.address, "--namespace", "default", *args]
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTAINERD_")}
    process = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True)
    os.close(slave)
    output = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: ctr is gone
                    break
                if not chunk:
                    break
                output += chunk
            elif process.poll() is not None:
                break
        return process.wait(timeout=10), output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)


def test_ctr_tasks_exec_into_a_native_container(cri_containerd, ctr_busybox):
    ctrd, _ = cri_containerd
    task_id = "native-exec"
    pids: list[int] = []
    try:
        pids.append(_run_detached(ctrd, ctr_busybox, task_id))
        hello = ctrd.ctr("tasks", "exec", "--exec-id", "x", task_id, "echo", "hi")
        assert hello.stdout == "hi\n", hello
        failing = ctrd.ctr("tasks", "exec", "--exec-id", "y", task_id, "sh", "-c", "echo oops >&2; exit 5",
                           check=False)
        assert failing.returncode == 5 and "oops" in failing.stderr, failing
        # stdin reaches the exec, and its end (CloseIO) ends `cat`.
        piped = ctrd.ctr("tasks", "exec", "--exec-id", "z", task_id, "cat", input="through stdin\n")
        assert piped.stdout == "through stdin\n", piped
        # The same exec id can be used again once the first exec was deleted (ctr deletes it when it ends).
        again = ctrd.ctr("tasks", "exec", "--exec-id", "x", task_id, "echo", "again")
        assert again.stdout == "again\n"

        # A detached exec: listed with its exec id by `ctr tasks ps`, a duplicate id is refused meanwhile.
        ctrd.ctr("tasks", "exec", "--detach", "--fifo-dir", str(ctrd.fifo_dir), "--exec-id", "bg", task_id,
                 "sleep", "3600")
        assert wait_until(lambda: "bg" in ctrd.ctr("tasks", "ps", task_id).stdout), \
            ctrd.ctr("tasks", "ps", task_id).stdout
        listing = ctrd.ctr("tasks", "ps", task_id).stdout.splitlines()[1:]
        pids += [int(line.split()[0]) for line in listing]
        duplicate = ctrd.ctr("tasks", "exec", "--exec-id", "bg", task_id, "true", check=False)
        assert duplicate.returncode != 0 and "already exists" in duplicate.stderr, duplicate

        # A terminal: runc's console socket, the pty copied to ctr's FIFOs, ctr's window size set by ResizePty.
        code, output = _ctr_in_a_terminal(ctrd, "tasks", "exec", "-t", "--exec-id", "tty", task_id,
                                          "sh", "-c", "ls -l /proc/self/fd/0; exit 4")
        assert code == 4, output
        assert b"/dev/pts/" in output, output

        # Killing the task while the detached exec runs: task and exec end, nothing is left.
        ctrd.ctr("tasks", "kill", "-s", "SIGKILL", task_id)
        assert wait_until(lambda: "STOPPED" in ctrd.ctr("tasks", "ls").stdout, timeout=15)
        ctrd.ctr("tasks", "rm", task_id, check=False)
        ctrd.ctr("containers", "rm", task_id)
    finally:
        _remove(ctrd, task_id)
    _assert_nothing_left(ctrd, task_id, pids)


def test_exec_errors_say_what_is_wrong(cri_containerd, ctr_busybox):
    ctrd, _ = cri_containerd
    task_id = "native-exec-errors"
    pids: list[int] = []
    try:
        pids.append(_run_detached(ctrd, ctr_busybox, task_id))
        missing = ctrd.ctr("tasks", "exec", "--exec-id", "m", task_id, "/no/such/binary", check=False)
        assert missing.returncode != 0 and "/no/such/binary" in missing.stderr, missing
        ctrd.ctr("tasks", "kill", "-s", "SIGKILL", task_id)
        assert wait_until(lambda: "STOPPED" in ctrd.ctr("tasks", "ls").stdout, timeout=15)
        stopped = ctrd.ctr("tasks", "exec", "--exec-id", "late", task_id, "true", check=False)
        assert stopped.returncode != 0 and "cannot exec in a stopped task" in stopped.stderr, stopped
    finally:
        _remove(ctrd, task_id)
    _assert_nothing_left(ctrd, task_id, pids)


def test_delete_after_the_shim_daemon_was_killed_leaves_no_runc_state(cri_containerd, ctr_busybox):
    ctrd, _ = cri_containerd
    task_id = "native-orphan"
    pids: list[int] = []
    try:
        pids.append(_run_detached(ctrd, ctr_busybox, task_id))
        ctrd.ctr("tasks", "exec", "--detach", "--fifo-dir", str(ctrd.fifo_dir), "--exec-id", "bg", task_id,
                 "sleep", "3600")
        assert wait_until(lambda: len(ctrd.ctr("tasks", "ps", task_id).stdout.splitlines()) == 3)
        pids += [int(line.split()[0]) for line in ctrd.ctr("tasks", "ps", task_id).stdout.splitlines()[1:]]
        assert (RUNC_STATE_ROOT / "default" / task_id / "state.json").exists()
        daemons = shim_processes(ctrd)
        assert daemons, "no shim daemon"
        for pid in daemons:
            os.kill(pid, signal.SIGKILL)
        # containerd sees the connection close and runs `containerd-shim-spin-v2 delete` for the task.
        assert wait_until(lambda: not (RUNC_STATE_ROOT / "default" / task_id).exists(), timeout=30), \
            "runc state left after the daemon died"
        ctrd.ctr("tasks", "rm", "-f", task_id, check=False)
        ctrd.ctr("containers", "rm", task_id)
    finally:
        _remove(ctrd, task_id)
    assert wait_until(lambda: not [pid for pid in pids if _alive(pid)], timeout=10)
    _assert_nothing_left(ctrd, task_id, pids)
