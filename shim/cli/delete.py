"""`delete`: clean up after a task whose daemon is gone, and print a DeleteResponse.

containerd runs this after every task's Shutdown and, crucially, after a daemon died
(SIGKILL, OOM) with tasks still running: its ttrpc client's onClose runs
cleanupAfterDeadShim, which execs `delete` (containerd core/runtime/v2/shim.go,
shim_manager.go). Then nobody else will: for a native task, `runc delete --force` it as
containerd-shim-runc-v2's own `delete` does (its container init and exec processes are not
our children, and runc's state under /run/containerd/runc/<ns> outlives the daemon); kill
the task's instance process (it normally died with the daemon through PDEATHSIG), remove its
cgroup, unmount its rootfs and remove the daemon's stale socket. Each step is best-effort
and idempotent; what fails is said on stderr, which containerd logs as cleanup warnings. The
exit status reported is 137, as runc's shim reports for a task it had to kill.
"""

from __future__ import annotations

import os
import sys
import time

from shim.service.bundle_state import (
    process_start_time,
    read_task_state,
    remove_task_state,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from shim.cli.flags import Flags

#: 128 + SIGKILL, without importing signal (its enums cost milliseconds of every removal).
_KILLED_STATUS = 137
_SIGKILL = 9


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_delete_response(pid: int, exit_status: int, exited_at_ns: int) -> bytes:
    """containerd.task.v2.DeleteResponse{pid=1, exit_status=2, exited_at=3 Timestamp}.

    Encoded by hand because `delete` runs on every task removal and importing protobuf
    plus the generated Task module costs ~20 ms of a ~55 ms process (measured); a unit
    test checks these bytes against the generated class.
    """
    seconds, nanos = divmod(exited_at_ns, 1_000_000_000)
    timestamp = b""
    if seconds:
        timestamp += b"\x08" + _varint(seconds)
    if nanos:
        timestamp += b"\x10" + _varint(nanos)
    out = b""
    if pid:
        out += b"\x08" + _varint(pid)
    if exit_status:
        out += b"\x10" + _varint(exit_status)
    return out + b"\x1a" + _varint(len(timestamp)) + timestamp


def _warn(message: str) -> None:
    sys.stderr.write(f"containerd-shim-spin-v2 delete: {message}\n")


def _kill_instance(pid: int, pid_start: int | None) -> None:
    if pid <= 0 or process_start_time(pid) is None:
        return
    if pid_start is not None and process_start_time(pid) != pid_start:
        return  # the pid was reused by an unrelated process
    try:
        os.killpg(pid, _SIGKILL)  # the instance leads its own process group
    except OSError:
        try:
            os.kill(pid, _SIGKILL)
        except OSError:
            return
    deadline = time.monotonic() + 5
    while process_start_time(pid) is not None and time.monotonic() < deadline:
        time.sleep(0.02)


def _delete_runc_container(task_id: str, bundle: str, runc_root: str, systemd_cgroup: bool) -> None:
    """`runc delete --force` with the root and cgroup driver the daemon ran runc with (bundle state)."""
    import shutil
    import subprocess
    from pathlib import Path

    from shim.runc.command import force_delete_args, global_args

    binary = shutil.which("runc")
    if binary is None:
        _warn(f"runc is not on PATH: runc container {task_id} under {runc_root} not deleted")
        return
    argv = global_args(binary, Path(runc_root), Path(bundle) / "log.json", systemd_cgroup=systemd_cgroup)
    try:  # stdout is the DeleteResponse: runc must not write there
        result = subprocess.run(argv + force_delete_args(task_id), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _warn(f"runc delete --force {task_id}: {exc}")
        return
    if result.returncode != 0:
        said = result.stderr.decode("utf-8", "replace").strip() or f"exit status {result.returncode}"
        _warn(f"runc delete --force {task_id} failed: {said}")


def _remove_stale_socket(bundle: str) -> None:
    try:
        with open(os.path.join(bundle, "address")) as f:
            path = f.read().strip().removeprefix("unix://")
    except OSError:
        return
    if not os.path.lexists(path):
        return  # the daemon removed it as it exited: the usual case, and no socket module to import for it
    from shim.cli.start import remove_if_stale

    remove_if_stale(path)  # a live daemon may still serve other tasks of the pod


def run_delete(flags: Flags) -> int:
    bundle = flags.bundle or os.getcwd()
    state = read_task_state(bundle)
    pid = int(state.get("pid") or 0)
    if state.get("runc_root") and flags.id:
        _delete_runc_container(flags.id, bundle, str(state["runc_root"]), bool(state.get("systemd_cgroup")))
    _kill_instance(pid, state.get("pid_start"))
    if state.get("cgroups_path"):
        from shim.kernel.cgroups import Cgroup

        try:
            cgroup = Cgroup.from_spec(state["cgroups_path"], systemd=bool(state.get("systemd_cgroup")))
            for problem in cgroup.remove():
                _warn(f"cgroup not removed: {problem}")
        except (OSError, ValueError) as exc:
            _warn(f"cgroup: {exc}")
    rootfs = os.path.join(bundle, "rootfs")
    if os.path.ismount(rootfs):  # only then pay for the ctypes mount code
        from shim.service.rootfs import unmount_all

        try:
            unmount_all(rootfs)
        except OSError as exc:
            _warn(f"rootfs not unmounted: {exc}")
    _remove_stale_socket(bundle)
    remove_task_state(bundle)

    sys.stdout.buffer.write(encode_delete_response(pid, _KILLED_STATUS, time.time_ns()))
    sys.stdout.buffer.flush()
    return 0
