"""Thin ctypes wrappers for the Linux syscalls the shim needs and Python 3.11 lacks.

Python 3.11 has no os.setns/os.unshare (3.12 added them) and never had mount, prctl or
capset. Each wrapper raises OSError with errno, like the os module does, so callers
handle them the same way.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct

# The libc already loaded, by soname: ctypes.util.find_library would run `ldconfig -p` (a process, ~5 ms, on every
# start path that imports this module).
_libc = ctypes.CDLL("libc.so.6", use_errno=True)

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MNT_DETACH = 0x2

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_SET_NAME = 15

_NAMESPACE_FLAGS = {
    "network": CLONE_NEWNET,
    "uts": CLONE_NEWUTS,
    "ipc": CLONE_NEWIPC,
    "mount": CLONE_NEWNS,
}


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
    _check(
        _libc.mount(
            source.encode(), target.encode(), fstype.encode(), ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {source} on {target} ({fstype})",
    )


def umount(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(target.encode(), flags), f"umount {target}")


def namespace_flag(ns_type: str) -> int:
    return _NAMESPACE_FLAGS[ns_type]


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def prctl(option: int, arg2: int = 0) -> None:
    _check(
        _libc.prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(0), ctypes.c_ulong(0),
                    ctypes.c_ulong(0)),
        f"prctl({option})",
    )


def set_child_subreaper() -> None:
    """Orphaned descendants (a worker whose instance died) are reparented to us, so the
    one reaper sees every exit instead of init."""
    prctl(PR_SET_CHILD_SUBREAPER, 1)


def set_parent_death_signal(sig: int) -> None:
    prctl(PR_SET_PDEATHSIG, sig)


def set_no_new_privs() -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def raise_oom_score(above: int | None = None) -> None:
    """Make this process's oom_score_adj one above ``above`` (default: its own), so the shim dies before
    containerd under memory pressure (Go: containerd's score + 1). Best effort: raising a score needs no
    privilege, lowering one below the current (a fork of a process with a higher score) needs CAP_SYS_RESOURCE."""
    try:
        with open("/proc/self/oom_score_adj", "r+") as score:
            base = int(score.read().strip() or 0) if above is None else above
            score.seek(0)
            score.write(str(min(base + 1, 1000)))
    except (OSError, ValueError):
        pass


def set_process_name(name: str) -> None:
    """Shown by ps/top as the comm (15 bytes), so an operator tells daemon from instance."""
    buf = ctypes.create_string_buffer(name.encode()[:15])
    _check(_libc.prctl(PR_SET_NAME, buf, 0, 0, 0), "prctl(PR_SET_NAME)")


# Capability names as the OCI spec writes them, in kernel bit order (linux/capability.h).
CAPABILITY_NAMES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
_CAP_BITS = {name: bit for bit, name in enumerate(CAPABILITY_NAMES)}
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def capability_mask(names: tuple[str, ...] | list[str]) -> int:
    mask = 0
    for name in names:
        bit = _CAP_BITS.get(name)
        if bit is not None:
            mask |= 1 << bit
    return mask


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return len(CAPABILITY_NAMES) - 1


def drop_bounding_capabilities(keep: list[str] | tuple[str, ...]) -> None:
    """Drop every capability outside `keep` from the bounding set (needs CAP_SETPCAP, so done first)."""
    keep_mask = capability_mask(keep)
    for bit in range(_last_cap() + 1):
        if not keep_mask & (1 << bit):
            try:
                prctl(PR_CAPBSET_DROP, bit)
            except OSError:
                pass  # a bit the kernel does not know


def set_capabilities(effective: list[str] | tuple[str, ...], permitted: list[str] | tuple[str, ...],
                     inheritable: list[str] | tuple[str, ...]) -> None:
    """capset(2) of the three per-thread sets (version 3: 64 bits each)."""
    header = struct.pack("Ii", _LINUX_CAPABILITY_VERSION_3, 0)
    e, p, i = capability_mask(effective), capability_mask(permitted), capability_mask(inheritable)
    data = struct.pack(
        "IIIIII", e & 0xFFFFFFFF, p & 0xFFFFFFFF, i & 0xFFFFFFFF,
        e >> 32, p >> 32, i >> 32,
    )
    hdr_buf = ctypes.create_string_buffer(header, len(header))
    data_buf = ctypes.create_string_buffer(data, len(data))
    _check(_libc.capset(hdr_buf, data_buf), "capset")


_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


def bring_loopback_up() -> None:
    """A fresh network namespace has `lo` down; runc brings it up, so apps and sidecars
    can talk over 127.0.0.1 as they would in a container."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        ifreq = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(sock.fileno(), _SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", flags | _IFF_UP, b""))


# -- the sandbox's syscalls: openat2 (path resolution inside a root), pivot_root, keepcaps, ambient caps ----------

MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_UNBINDABLE = 1 << 17

#: openat2's RESOLVE_* flags (linux/openat2.h).
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_IN_ROOT = 0x10

# The generic syscall table gives openat2 the same number everywhere; pivot_root differs.
_SYS_OPENAT2 = 437
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(os.uname().machine, 155)

PR_SET_KEEPCAPS = 8
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

_libc.syscall.restype = ctypes.c_long


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dir_fd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2): the kernel resolves `path` under `dir_fd` with the RESOLVE_* rules, atomically (no race
    between checking a path and using it, unlike a walk of lstat calls)."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    result = _libc.syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dir_fd), path.encode(),
                           ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    return _check(int(result), f"open {path}")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(int(_libc.syscall(ctypes.c_long(_SYS_PIVOT_ROOT), new_root.encode(), put_old.encode())),
           f"pivot_root {new_root}")


def set_keep_capabilities(keep: bool) -> None:
    """PR_SET_KEEPCAPS: keep the permitted set across setuid from root, so the spec's sets can be applied after."""
    prctl(PR_SET_KEEPCAPS, 1 if keep else 0)


def raise_ambient_capabilities(names: tuple[str, ...] | list[str]) -> None:
    _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "prctl(PR_CAP_AMBIENT_CLEAR_ALL)")
    for name in names:
        bit = _CAP_BITS.get(name)
        if bit is not None:
            _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, bit, 0, 0), f"prctl(PR_CAP_AMBIENT_RAISE {name})")


def sethostname(name: str) -> None:
    data = name.encode()
    _check(_libc.sethostname(data, len(data)), "sethostname")
