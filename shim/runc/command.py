"""The argv of every runc command the shim runs, as containerd's runc shim (go-runc) builds it.

Pure and import-light on purpose: the daemon's NativeInstance runs these commands, and so does
`containerd-shim-spin-v2 delete` (shim/cli/delete.py) when the daemon died, which must not import
asyncio; both must address the same container under the same state root with the same cgroup
driver, or runc would not find it (`--root`) or would misread its cgroup (`--systemd-cgroup`).
"""

from __future__ import annotations

from pathlib import Path

#: The runc shim's state root; scripts/private_containerd.py cleans leftovers there too.
RUNC_STATE_ROOT = Path("/run/containerd/runc")


def runc_root(namespace: str) -> Path:
    """Per containerd namespace, as containerd-shim-runc-v2 (process.RuncRoot/<ns>)."""
    return RUNC_STATE_ROOT / namespace


def global_args(binary: str, root: Path, log_path: Path, *, systemd_cgroup: bool) -> list[str]:
    """go-runc's global flags: state root, log.json in JSON (the runc shim reads errors from it),
    and `--systemd-cgroup` when the cgroupsPath is systemd's (cgroups.uses_systemd_driver)."""
    args = [binary, "--root", str(root), "--log", str(log_path), "--log-format", "json"]
    if systemd_cgroup:
        args.append("--systemd-cgroup")
    return args


def exec_args(container_id: str, process_path: Path, pid_file: Path, console_socket: str | None) -> list[str]:
    """go-runc's Exec with ExecOpts{Detach, PidFile, ConsoleSocket}: the process (an OCI Process,
    JSON) from a file, detached, so the exec'd process is re-parented to the daemon (a child
    subreaper) and its exit reaches the one reaper."""
    args = ["exec", "--process", str(process_path)]
    if console_socket is not None:
        args += ["--console-socket", console_socket]
    return args + ["--detach", "--pid-file", str(pid_file.absolute()), container_id]


def force_delete_args(container_id: str) -> list[str]:
    """`runc delete --force`: kills what is left of the container, removes its state and cgroup;
    succeeds for a container runc never recorded."""
    return ["delete", "--force", container_id]
