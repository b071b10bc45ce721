"""Which kind of workload a task is: a native Linux container (run with runc) or a Spin/Wasm app.

Under Kubernetes the RuntimeClass handler applies to the whole pod, so the pause container and any
sidecar (busybox, a log shipper) come to this shim too (CRI runs the pause container with the pod's
runtime handler: containerd internal/cri/server/sandbox_run.go, GetSandboxRuntime). runwasi answers
the same question in its executor (`is_linux_container`): the CRI sandbox, or an `args[0]` that is
an executable ELF or script inside the rootfs, runs natively; everything else is Wasm. A rootfs with
a `/spin.toml` is a Spin app whatever its args say, and an empty rootfs (a Spin OCI artifact) has no
executable, so both stay Wasm. The decision is pure file inspection, kept here so it can be tested
without containerd.
"""

from __future__ import annotations

import os
import posixpath
import stat
from pathlib import Path

from runtime.paths import PathEscapeError, resolve_in_root
from shim.oci_spec import RuntimeSpec

#: What execve runs natively: an ELF binary, or a script whose interpreter the kernel starts.
_NATIVE_MAGICS = (b"\x7fELF", b"#!")


def is_native(spec: RuntimeSpec, rootfs: Path) -> bool:
    """True when the task must run as a Linux container through runc, not as a Wasm app."""
    if spec.is_cri_sandbox:
        return True
    if os.path.lexists(rootfs / "spin.toml") or not spec.args:
        return False
    executable = find_executable(rootfs, spec.args[0], spec.cwd, spec.env_dict.get("PATH", ""))
    return executable is not None and _starts_with_native_magic(executable)


def find_executable(rootfs: Path, name: str, cwd: str, search_path: str) -> Path | None:
    """The host path of the regular, executable file the container would run as `name`, as
    runc's exec.LookPath finds it inside the rootfs: a name with a slash is taken relative to
    the process cwd, a bare name is looked up in PATH (absolute entries only, as Go does)."""
    if "/" in name:
        candidates = [posixpath.join(cwd, name)]
    else:
        candidates = [posixpath.join(entry, name) for entry in search_path.split(":")
                      if entry.startswith("/")]
    for candidate in candidates:
        try:
            host_path = resolve_in_root(rootfs, candidate)
            mode = os.stat(host_path).st_mode
        except (PathEscapeError, OSError):
            continue
        if stat.S_ISREG(mode) and mode & 0o111:
            return host_path
    return None


def _starts_with_native_magic(path: Path) -> bool:
    # O_NOFOLLOW: the path is already resolved inside the rootfs, so a symlink swapped in since
    # then must not lead the shim out of it.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        head = os.read(fd, 4)
    finally:
        os.close(fd)
    return head.startswith(_NATIVE_MAGICS)
