"""Mounting the task's rootfs into the bundle, as the runc shim does, and unmounting it.

containerd sends the snapshot as mounts in CreateTaskRequest.rootfs and leaves
`<bundle>/rootfs` empty (reference §1.4, containerd-test-env §3): the shim mounts them in
the host mount namespace, reads the app from there (spin.toml or the entrypoint .wasm),
and must unmount at Delete or in `delete` after a crash, or the snapshot stays busy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from shim import linux

MS_BIND = 0x1000
MS_REC = 0x4000
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_PRIVATE = 1 << 18

_FLAG_OPTIONS = {
    "ro": linux.MS_RDONLY, "rw": 0, "bind": MS_BIND, "rbind": MS_BIND | MS_REC,
    "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC,
}


@dataclass(frozen=True)
class MountSpec:
    type: str
    source: str
    options: tuple[str, ...]


def _flags_and_data(options: tuple[str, ...]) -> tuple[int, str]:
    flags = 0
    data: list[str] = []
    for option in options:
        if option in _FLAG_OPTIONS:
            flags |= _FLAG_OPTIONS[option]
        else:
            data.append(option)
    return flags, ",".join(data)


def mount_rootfs(mounts: list[MountSpec], target: str) -> None:
    """Mount containerd's snapshot mounts on `target` in order (usually one overlay)."""
    os.makedirs(target, exist_ok=True)
    mounted: list[str] = []
    try:
        for spec in mounts:
            flags, data = _flags_and_data(spec.options)
            fstype = "" if flags & MS_BIND else spec.type
            linux.mount(spec.source, target, fstype or "none", flags, data)
            mounted.append(target)
            if flags & MS_BIND and flags & linux.MS_RDONLY:
                # A bind mount ignores MS_RDONLY on the first call; remount to apply it.
                linux.mount("none", target, "none", MS_BIND | 0x20 | linux.MS_RDONLY)
    except OSError:
        for path in reversed(mounted):
            try:
                linux.umount(path, linux.MNT_DETACH)
            except OSError:
                pass
        raise


def is_mountpoint(path: str) -> bool:
    real = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo") as f:
            return any(line.split()[4] == real for line in f)
    except OSError:
        return False


def unmount_all(target: str) -> None:
    """Unmount everything stacked on `target`; lazily if something still holds it."""
    for _ in range(16):
        if not is_mountpoint(target):
            return
        try:
            linux.umount(target)
        except OSError:
            linux.umount(target, linux.MNT_DETACH)
