"""What a daemon forked by the server takes on from the `start` that asked for it, so it runs exactly as the
daemon `start` would have forked itself: the environment containerd gave `start` (TTRPC_ADDRESS, GRPC_ADDRESS,
the idle and cache settings), its cwd (the bundle), umask, rlimits, cgroup, and an OOM score one above it; its
argv, so `ps` and every tool that finds shims by their `-address` flag see a shim. Namespaces cannot be taken
on after fork without side effects, so the server refuses a `start` whose namespaces differ from its own.
"""

from __future__ import annotations

import os
import resource
import sys
TYPE_CHECKING = False  # typing costs ~5 ms of every `start`; annotations only need it for checkers
if TYPE_CHECKING:
    from typing import Any

from shim.record import Record

NAMESPACES = ("mnt", "net", "pid", "ipc", "uts", "user", "cgroup")
_RLIMITS = tuple(name for name in dir(resource) if name.startswith("RLIMIT_"))


class StartContext(Record):
    """What `start` runs with, captured by it and sent to the server as JSON."""

    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: str
    umask: int
    rlimits: dict[str, tuple[int, int]]
    oom_score_adj: int
    cgroup: str
    namespaces: dict[str, int]

    @classmethod
    def capture(cls, argv: list[str]) -> StartContext:
        """In `start`: its own context (a dozen syscalls)."""
        umask = os.umask(0)
        os.umask(umask)
        return cls(argv=tuple(argv), env=dict(os.environ), cwd=os.getcwd(), umask=umask,
                   rlimits={name: resource.getrlimit(getattr(resource, name)) for name in _RLIMITS},
                   oom_score_adj=_read_int("/proc/self/oom_score_adj"),
                   cgroup=_read_text("/proc/self/cgroup"), namespaces=namespace_ids())

    def to_json(self) -> dict[str, Any]:
        return {"argv": list(self.argv), "env": self.env, "cwd": self.cwd, "umask": self.umask,
                "rlimits": {name: list(limits) for name, limits in self.rlimits.items()},
                "oom_score_adj": self.oom_score_adj, "cgroup": self.cgroup, "namespaces": self.namespaces}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StartContext:
        return cls(argv=tuple(str(arg) for arg in data["argv"]),
                   env={str(key): str(value) for key, value in data["env"].items()}, cwd=str(data["cwd"]),
                   umask=int(data["umask"]),
                   rlimits={str(name): (int(limits[0]), int(limits[1])) for name, limits in data["rlimits"].items()},
                   oom_score_adj=int(data["oom_score_adj"]), cgroup=str(data["cgroup"]),
                   namespaces={str(name): int(ino) for name, ino in data["namespaces"].items()})


def namespace_ids() -> dict[str, int]:
    ids = {}
    for name in NAMESPACES:
        try:
            ids[name] = os.stat(f"/proc/self/ns/{name}").st_ino
        except OSError:
            pass
    return ids


def adopt(context: StartContext) -> None:
    """In the forked daemon, before it imports or opens anything else."""
    os.environ.clear()
    os.environ.update(context.env)
    os.chdir(context.cwd)
    os.umask(context.umask)
    for name, (soft, hard) in context.rlimits.items():
        limit = getattr(resource, name, None)
        if limit is not None:
            try:
                resource.setrlimit(limit, (soft, hard))
            except (OSError, ValueError):
                pass  # a limit this kernel does not have
    join_cgroup(context.cgroup)
    from shim.kernel import linux  # the forked daemon's import, not `start`'s

    linux.raise_oom_score(context.oom_score_adj)
    set_argv(context.argv)
    sys.argv[:] = list(context.argv)


def join_cgroup(cgroup: str) -> None:
    """Move into the cgroup `/proc/<pid>/cgroup` of `start` names in every hierarchy, unless already there."""
    if _read_text("/proc/self/cgroup") == cgroup:
        return
    from shim.kernel.cgroups import (
        CGROUP_ROOT,
        is_unified,
        parse_proc_cgroup,
        v1_mounts,
    )

    paths = parse_proc_cgroup(cgroup)
    if is_unified():
        dirs = {CGROUP_ROOT / paths.get("", "/").lstrip("/")}
    else:  # one directory per hierarchy (co-mounted controllers share one), and a hybrid node's v2 one
        dirs = {mountpoint / paths[ctrl].lstrip("/") for ctrl, mountpoint in v1_mounts().items() if ctrl in paths}
        if "" in paths:
            dirs.add(CGROUP_ROOT / "unified" / paths[""].lstrip("/"))
    pid = str(os.getpid()).encode()
    for directory in dirs:
        procs = directory / "cgroup.procs"
        if procs.exists():
            with open(procs, "wb") as target:
                target.write(pid)


#: Spaces the fork server is exec'd with (one argument), so the argv area it and its daemons rewrite is big enough
#: for any `start` command line containerd writes (~300 bytes).
ARGV_PADDING = 4096


def argv_area() -> tuple[int, int]:
    """Start and end address of this process's original argv strings (/proc/self/stat fields 48 and 49): what
    /proc/<pid>/cmdline shows. Rewritten in place, as setproctitle does (prctl(PR_SET_MM) would need
    CAP_SYS_RESOURCE, which containers and some nodes drop)."""
    fields = _read_text("/proc/self/stat").rsplit(")", 1)[1].split()
    return int(fields[45]), int(fields[46])


def argv_fits(argv: tuple[str, ...]) -> bool:
    start, end = argv_area()
    return len(_encode(argv)) <= end - start


def set_argv(argv: tuple[str, ...]) -> None:
    """Make /proc/self/cmdline read ``argv`` (the rest of the area NUL). Raises ValueError if it does not fit."""
    import ctypes  # the forked daemon's, not `start`'s: ~3 ms of imports

    start, end = argv_area()
    encoded = _encode(argv)
    if len(encoded) > end - start:
        raise ValueError(f"command line of {len(encoded)} bytes, the area holds {end - start}")
    ctypes.memmove(start, encoded.ljust(end - start, b"\0"), end - start)


def _encode(argv: tuple[str, ...]) -> bytes:
    return b"\0".join(arg.encode("utf-8", "surrogateescape") for arg in argv) + b"\0"


def _read_text(path: str) -> str:
    with open(path) as source:
        return source.read()


def _read_int(path: str) -> int:
    try:
        with open(path) as source:
            return int(source.read().strip() or 0)
    except (OSError, ValueError):
        return 0
