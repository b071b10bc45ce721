"""`delete`: clean up after a task whose daemon is gone, and print a DeleteResponse.

containerd runs this after every task's Shutdown and, crucially, after a daemon died
(SIGKILL, OOM) with tasks still running (reference §1.7). Then nobody else will: kill the
task's instance process (it normally died with the daemon through PDEATHSIG), remove its
cgroup, unmount its rootfs and remove the daemon's stale socket. Each step is
best-effort and idempotent; what fails is said on stderr, which containerd logs as
cleanup warnings. The exit status reported is 137, as runc's shim reports for a task it
had to kill.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time

from shim.cli import Flags

_KILLED_STATUS = 128 + signal.SIGKILL


def _warn(message: str) -> None:
    sys.stderr.write(f"containerd-shim-spin-v2 delete: {message}\n")


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _kill_instance(pid: int, pid_start: int | None) -> None:
    if pid <= 0 or _start_time(pid) is None:
        return
    if pid_start is not None and _start_time(pid) != pid_start:
        return  # the pid was reused by an unrelated process
    try:
        os.killpg(pid, signal.SIGKILL)  # the instance leads its own process group
    except OSError:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            return
    deadline = time.monotonic() + 5
    while _start_time(pid) is not None and time.monotonic() < deadline:
        time.sleep(0.02)


def _remove_stale_socket(bundle: str) -> None:
    try:
        with open(os.path.join(bundle, "address")) as f:
            path = f.read().strip().removeprefix("unix://")
    except OSError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        return  # a live daemon (it may serve other tasks of the pod)
    except FileNotFoundError:
        return
    except OSError:
        try:
            os.unlink(path)
        except OSError:
            pass
    finally:
        probe.close()


def run_delete(flags: Flags) -> int:
    from shim.task import TASK_STATE_FILE

    bundle = flags.bundle or os.getcwd()
    state_path = os.path.join(bundle, TASK_STATE_FILE)
    state: dict = {}
    try:
        with open(state_path) as f:
            state = json.load(f)
    except (OSError, ValueError):
        pass
    pid = int(state.get("pid") or 0)
    _kill_instance(pid, state.get("pid_start"))
    if state.get("cgroups_path"):
        from shim.cgroups import Cgroup

        try:
            cgroup = Cgroup.from_spec(state["cgroups_path"], systemd=bool(state.get("systemd_cgroup")))
            for problem in cgroup.remove():
                _warn(f"cgroup not removed: {problem}")
        except (OSError, ValueError) as exc:
            _warn(f"cgroup: {exc}")
    from shim.rootfs import unmount_all

    try:
        unmount_all(os.path.join(bundle, "rootfs"))
    except OSError as exc:
        _warn(f"rootfs not unmounted: {exc}")
    _remove_stale_socket(bundle)
    try:
        os.unlink(state_path)
    except OSError:
        pass

    from proto.containerd.task.v2 import shim_pb2
    from shim.events import timestamp_from_ns

    response = shim_pb2.DeleteResponse(pid=pid, exit_status=_KILLED_STATUS,
                                       exited_at=timestamp_from_ns(time.time_ns()))
    sys.stdout.buffer.write(response.SerializeToString())
    sys.stdout.buffer.flush()
    return 0
