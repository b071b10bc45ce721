"""Mount options as OCI specs and containerd write them, turned into mount(2) flags, propagation and fs data.

One table for both kinds of mount the shim makes: containerd's rootfs mounts (CreateTaskRequest.rootfs) and the
spec's `mounts` inside a Wasm task's sandbox. It follows runc's table (libcontainer/specconv/spec_linux.go
`mountFlags`, `mountPropagationMapping`): a flag option sets a bit, its opposite clears it, a propagation option is
applied by a second mount call, and anything else (``mode=755``, ``size=64m``, overlay's ``lowerdir=``) is file
system data. Pure, so each option is tested without mounting.
"""

from __future__ import annotations

from dataclasses import dataclass

from shim.kernel import linux

MS_SYNCHRONOUS = 0x10
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24

#: option -> (clear, set): the option clears `clear` then sets `set`.
_FLAGS: dict[str, tuple[int, int]] = {
    "defaults": (0, 0),
    "ro": (0, linux.MS_RDONLY), "rw": (linux.MS_RDONLY, 0),
    "nosuid": (0, linux.MS_NOSUID), "suid": (linux.MS_NOSUID, 0),
    "nodev": (0, linux.MS_NODEV), "dev": (linux.MS_NODEV, 0),
    "noexec": (0, linux.MS_NOEXEC), "exec": (linux.MS_NOEXEC, 0),
    "sync": (0, MS_SYNCHRONOUS), "async": (MS_SYNCHRONOUS, 0),
    "dirsync": (0, MS_DIRSYNC),
    "mand": (0, MS_MANDLOCK), "nomand": (MS_MANDLOCK, 0),
    "noatime": (0, MS_NOATIME), "atime": (MS_NOATIME, 0),
    "nodiratime": (0, MS_NODIRATIME), "diratime": (MS_NODIRATIME, 0),
    "relatime": (0, MS_RELATIME), "norelatime": (MS_RELATIME, 0),
    "strictatime": (0, MS_STRICTATIME), "nostrictatime": (MS_STRICTATIME, 0),
    "bind": (0, linux.MS_BIND), "rbind": (0, linux.MS_BIND | linux.MS_REC),
    "remount": (0, linux.MS_REMOUNT),
}

_PROPAGATION: dict[str, int] = {
    "private": linux.MS_PRIVATE, "rprivate": linux.MS_PRIVATE | linux.MS_REC,
    "shared": linux.MS_SHARED, "rshared": linux.MS_SHARED | linux.MS_REC,
    "slave": linux.MS_SLAVE, "rslave": linux.MS_SLAVE | linux.MS_REC,
    "unbindable": linux.MS_UNBINDABLE, "runbindable": linux.MS_UNBINDABLE | linux.MS_REC,
}

#: Recursive attribute options (mount_setattr in runc); applied here to the top mount of a bind, which is what
#: a bind of a volume without submounts needs. Said in the README's security model.
_RECURSIVE_AS_TOP = {"rro": "ro", "rrw": "rw", "rnosuid": "nosuid", "rsuid": "suid", "rnodev": "nodev",
                     "rdev": "dev", "rnoexec": "noexec", "rexec": "exec"}

#: The flags a bind mount can change with a second, MS_REMOUNT call (the first ignores them; mount(2)).
REMOUNT_FLAGS = linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC | MS_NOATIME | \
    MS_NODIRATIME | MS_RELATIME | MS_STRICTATIME


@dataclass(frozen=True)
class MountOptions:
    flags: int
    propagation: tuple[int, ...]
    data: str

    @property
    def is_bind(self) -> bool:
        return bool(self.flags & linux.MS_BIND)

    @property
    def readonly(self) -> bool:
        return bool(self.flags & linux.MS_RDONLY)


def parse_mount_options(options: tuple[str, ...] | list[str]) -> MountOptions:
    flags = 0
    propagation: list[int] = []
    data: list[str] = []
    for option in options:
        option = _RECURSIVE_AS_TOP.get(option, option)
        if option in _FLAGS:
            clear, add = _FLAGS[option]
            flags = (flags & ~clear) | add
        elif option in _PROPAGATION:
            propagation.append(_PROPAGATION[option])
        else:
            data.append(option)
    return MountOptions(flags, tuple(propagation), ",".join(data))
