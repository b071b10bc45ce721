"""The small record a task leaves in its bundle for `delete` to clean up after a crash.

Written at Create by the daemon, read by `containerd-shim-spin-v2 delete` when the
daemon died (SIGKILL, OOM) and nobody else knows which instance process to kill, which
cgroup to remove, whether the rootfs is still mounted, and (for a native task) which runc
container to delete. Kept in its own module so `delete`, which runs on every task removal,
imports nothing heavy: containerd waits for `delete` after every shim disconnects (its
cleanupAfterDeadShim), so a removal pays for this process; json (which imports re), pathlib and
typing cost ~15 ms of it (-X importtime), and a cleanly deleted task has no state to read.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from _typeshed import StrPath

TASK_STATE_FILE = "spin-shim-task.json"


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/pid/stat: with the pid, identifies a process across pid reuse."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def write_task_state(bundle: StrPath, *, pid: int, cgroups_path: str | None, systemd_cgroup: bool,
                     rootfs: str | None, runc_root: str | None = None) -> None:
    """`runc_root` is set for a native task: runc's state for it (and its exec processes) lives
    there, and only `runc delete --force` with that root and cgroup driver removes it."""
    import json

    state = {"pid": pid, "pid_start": process_start_time(pid), "cgroups_path": cgroups_path,
             "systemd_cgroup": systemd_cgroup, "rootfs": rootfs, "runc_root": runc_root}
    path = os.path.join(bundle, TASK_STATE_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(state))
    os.replace(tmp, path)


def read_task_state(bundle: StrPath) -> dict[str, Any]:
    """{} when there is none: the daemon removes it at Delete, so after a clean delete nothing is parsed."""
    try:
        with open(os.path.join(bundle, TASK_STATE_FILE), "rb") as f:
            text = f.read()
    except OSError:
        return {}
    import json

    try:
        state = json.loads(text)
    except ValueError:
        return {}
    return state if isinstance(state, dict) else {}


def remove_task_state(bundle: StrPath) -> None:
    try:
        os.unlink(os.path.join(bundle, TASK_STATE_FILE))
    except OSError:
        pass
