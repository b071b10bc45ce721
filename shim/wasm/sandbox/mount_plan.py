"""Which of the spec's mounts a Wasm task's root gets, and with which flags: the pure half of building the root.

A Wasm host needs the container's files, not the kernel's views of itself, so of what a runc container mounts
this keeps the file trees and leaves out the pseudo file systems:

* bind mounts (kubelet's volumes: configMaps, secrets, emptyDir, PVCs, projected tokens; CRI's /etc/hosts,
  /etc/resolv.conf, /etc/hostname, /dev/termination-log; spin-operator's /runtime-config.toml and CA bundle) and
  tmpfs mounts (emptyDir medium Memory, ctr's /dev and /dev/shm) are mounted as the spec says, plus `nosuid` and
  `nodev` always: a guest's `files` can come from any of them, and a device node in a volume or an image must
  never reach a host device;
* proc, sysfs, cgroup, cgroup2, devpts and mqueue are not mounted: a Wasm guest has no use for them, and procfs
  in the node's pid namespace (the instance process has no pid namespace of its own) would show the node's
  processes to the shim code that serves the guest's files;
* any other type is refused with the mount named, rather than silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from shim.kernel import linux
from shim.kernel.mount_options import REMOUNT_FLAGS, parse_mount_options
from shim.oci_spec import SpecMount

#: Kernel views a Wasm host does not mount (see the module docstring); kept by name for the log line.
SKIPPED_TYPES = frozenset({"proc", "sysfs", "cgroup", "cgroup2", "devpts", "mqueue"})
#: Flags every mount of the sandbox gets whatever the spec says.
ALWAYS = linux.MS_NOSUID | linux.MS_NODEV


class MountPlanError(ValueError):
    """A spec mount the sandbox cannot honour; the message names it."""


@dataclass(frozen=True)
class PlannedMount:
    destination: str
    source: str
    #: "bind" or "tmpfs".
    kind: str
    #: Flags of the first mount(2) call.
    flags: int
    data: str
    #: A bind's attributes, applied by a second MS_REMOUNT call (the first call ignores them); 0 for tmpfs.
    remount_flags: int
    propagation: tuple[int, ...]


def plan_mounts(mounts: tuple[SpecMount, ...]) -> tuple[list[PlannedMount], list[str]]:
    """The mounts to make, in spec order (CRI sorts parents first), and one line per mount left out."""
    planned: list[PlannedMount] = []
    skipped: list[str] = []
    for mount in mounts:
        if not mount.destination.startswith("/"):
            raise MountPlanError(f"spec mount {mount.destination!r}: the destination must be absolute")
        options = parse_mount_options(mount.options)
        if mount.type in SKIPPED_TYPES:
            skipped.append(f"{mount.destination} ({mount.type}): not mounted for a Wasm task")
            continue
        if options.is_bind or mount.type == "bind":
            if not mount.source.startswith("/"):
                raise MountPlanError(f"spec mount {mount.destination!r}: bind source {mount.source!r} must be "
                                     "an absolute path on the node")
            flags = options.flags | linux.MS_BIND
            planned.append(PlannedMount(
                destination=mount.destination, source=mount.source, kind="bind",
                flags=flags & (linux.MS_BIND | linux.MS_REC), data="",
                remount_flags=(flags & REMOUNT_FLAGS) | ALWAYS, propagation=options.propagation))
        elif mount.type == "tmpfs":
            planned.append(PlannedMount(
                destination=mount.destination, source="tmpfs", kind="tmpfs", flags=options.flags | ALWAYS,
                data=options.data, remount_flags=0, propagation=options.propagation))
        else:
            raise MountPlanError(f"spec mount {mount.destination!r} of type {mount.type!r} is not supported for "
                                 "a Wasm task (bind and tmpfs mounts are)")
    return planned, skipped
