"""Mounting the task's rootfs into the bundle, as the runc shim does, and unmounting it.

containerd sends the snapshot as mounts in CreateTaskRequest.rootfs and leaves
`<bundle>/rootfs` an empty directory (containerd core/runtime/v2/bundle.go NewBundle): the
shim mounts them in the host mount namespace, reads the app from there (spin.toml or the
entrypoint .wasm), and must unmount at Delete or in `delete` after a crash, or the snapshot
stays busy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from shim.kernel import linux
from shim.kernel.mount_options import parse_mount_options


@dataclass(frozen=True)
class MountSpec:
    type: str
    source: str
    options: tuple[str, ...]


def mount_rootfs(mounts: list[MountSpec], target: str) -> None:
    """Mount containerd's snapshot mounts on `target` in order (usually one overlay)."""
    os.makedirs(target, exist_ok=True)
    mounted: list[str] = []
    try:
        for spec in mounts:
            options = parse_mount_options(spec.options)
            fstype = "" if options.is_bind else spec.type
            linux.mount(spec.source, target, fstype or "none", options.flags, options.data)
            mounted.append(target)
            if options.is_bind and options.readonly:
                # A bind mount ignores MS_RDONLY on the first call; remount to apply it.
                linux.mount("none", target, "none", linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY)
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
