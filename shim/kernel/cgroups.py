"""The task's cgroup: created from the spec's `cgroupsPath`, limited by its resources,
joined by the instance process, read for Stats, watched for OOM kills, removed at delete.

A Wasm task lives in the cgroup containerd named, exactly as a runc container would, so
memory limits, OOM kills, `ctr task metrics`, kubelet's cAdvisor and CRI stats all see it
(CRI names it in the spec's linux.cgroupsPath; runwasi#821, containerd-shim-spin#180).
Both cgroup v1 (these machines: one hierarchy per controller) and the v2 unified hierarchy
are handled; systemd-style paths (`slice:prefix:name`, used with `SystemdCgroup = true`)
are expanded to the directories systemd would create, as runc's fs driver does.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shim.errors import NotFound

if TYPE_CHECKING:
    import asyncio

CGROUP_ROOT = Path("/sys/fs/cgroup")

# v1 controllers whose hierarchy the task joins; `name=systemd` too, as runc does.
V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "pids", "blkio", "devices",
                  "freezer", "hugetlb", "net_cls", "net_prio", "perf_event", "systemd")


def is_unified() -> bool:
    return (CGROUP_ROOT / "cgroup.controllers").exists()


def uses_systemd_driver(cgroups_path: str | None, systemd_option: bool) -> bool:
    """Whether the task's cgroup is systemd's: the runtime option says so, or the spec's cgroupsPath
    is systemd-style (`slice:prefix:name`, what CRI writes when kubelet's cgroup driver is systemd),
    which a cgroupfs path (absolute, or relative without colons) never is. One rule for both kinds of
    task: a Wasm task's Cgroup expands the path, a native task's runc gets `--systemd-cgroup`, which
    runc needs to read such a path at all."""
    if systemd_option:
        return True
    return bool(cgroups_path) and ":" in cgroups_path and not cgroups_path.startswith("/")


def expand_systemd_path(cgroups_path: str) -> str:
    """`kubepods-besteffort-pod1.slice:cri-containerd:abc` -> the path systemd creates:
    /kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-abc.scope
    """
    parts = cgroups_path.split(":")
    if len(parts) != 3:
        raise ValueError(f"systemd cgroupsPath must be slice:prefix:name, got {cgroups_path!r}")
    slice_name, prefix, name = parts
    slice_name = slice_name or "system.slice"
    if not slice_name.endswith(".slice"):
        raise ValueError(f"systemd cgroupsPath parent must be a .slice, got {slice_name!r}")
    stem = slice_name[: -len(".slice")]
    path = ""
    if stem != "-":
        pieces = stem.split("-")
        for i in range(1, len(pieces) + 1):
            path += "/" + "-".join(pieces[:i]) + ".slice"
    unit = f"{prefix}-{name}.scope" if prefix else f"{name}.scope"
    return f"{path}/{unit}"


def _missing_from_top(path: Path) -> list[Path]:
    """The directories of `path` that do not exist yet, outermost first."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    return list(reversed(missing))


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """`/proc/<pid>/cgroup` as controller -> path: "" for the v2 hierarchy, `name=systemd` as `systemd`."""
    result: dict[str, str] = {}
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        for ctrl in controllers.split(",") if controllers else [""]:
            result[ctrl.removeprefix("name=")] = path
    return result


def _own_cgroup_paths() -> dict[str, str]:
    """This process's cgroup per hierarchy, for resolving a relative cgroupsPath."""
    try:
        with open("/proc/self/cgroup") as f:
            return parse_proc_cgroup(f.read())
    except OSError:
        return {}


def v1_mounts() -> dict[str, Path]:
    """controller -> mountpoint, from mountinfo (co-mounted controllers share one)."""
    mounts: dict[str, Path] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fields = post.split()
            if len(fields) < 3 or fields[0] != "cgroup":
                continue
            mountpoint = Path(pre.split()[4])
            for opt in fields[2].split(","):
                name = opt.removeprefix("name=")
                if name in V1_CONTROLLERS:
                    mounts[name] = mountpoint
    return mounts


@dataclass(frozen=True)
class DeviceRule:
    #: "devices.allow" or "devices.deny" (cgroup v1).
    file: str
    #: "<type> <major>:<minor> <access>", or "a" for every device.
    line: str


def device_rules(devices: Any) -> list[DeviceRule]:
    """linux.resources.devices as cgroup v1 lines, in spec order (later rules win, as in the kernel's list).

    Pure: the spec's usual first rule, deny-all (`{"allow": false, "access": "rwm"}`), becomes `a` in
    devices.deny, which empties the cgroup's list; the allow rules after it put back what the container may use.
    """
    rules = []
    for device in devices:
        if not isinstance(device, dict):
            continue
        kind = str(device.get("type") or "a")
        if kind not in ("a", "b", "c"):
            raise ValueError(f"linux.resources.devices: unknown device type {kind!r}")
        major = device.get("major")
        minor = device.get("minor")
        access = str(device.get("access") or "rwm")
        if kind == "a" and major is None and minor is None and set(access) == set("rwm"):
            line = "a"
        else:
            def number(value: Any) -> str:
                return "*" if value is None or int(value) < 0 else str(int(value))
            line = f"{kind} {number(major)}:{number(minor)} {access}"
        rules.append(DeviceRule("devices.allow" if device.get("allow") else "devices.deny", line))
    return rules


@dataclass
class Cgroup:
    """One task's cgroup: a directory per v1 hierarchy, or one directory in v2."""

    rel_path: str
    dirs: dict[str, Path]  # controller (or "" for v2) -> directory
    unified: bool

    @classmethod
    def from_spec(cls, cgroups_path: str, *, systemd: bool) -> "Cgroup":
        if uses_systemd_driver(cgroups_path, systemd):
            rel = expand_systemd_path(cgroups_path)
        else:
            rel = cgroups_path
        own = _own_cgroup_paths()
        if is_unified():
            base = rel if rel.startswith("/") else os.path.join(own.get("", "/"), rel)
            return cls(rel, {"": CGROUP_ROOT / base.lstrip("/")}, unified=True)
        dirs: dict[str, Path] = {}
        for ctrl, mountpoint in v1_mounts().items():
            base = rel if rel.startswith("/") else os.path.join(own.get(ctrl, "/"), rel)
            dirs[ctrl] = mountpoint / base.lstrip("/")
        return cls(rel, dirs, unified=False)

    # -- lifecycle -------------------------------------------------------------------

    def create(self) -> None:
        for ctrl, path in self.dirs.items():
            if ctrl == "cpuset":
                self._create_cpuset(path)
            elif ctrl == "" and self.unified:
                self._create_unified(path)
            else:
                path.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _create_cpuset(path: Path) -> None:
        """A new v1 cpuset cgroup starts with empty cpus/mems, and adding a process to it
        fails with ENOSPC; copy the parent's down every new level, as runc does."""
        for directory in _missing_from_top(path):
            directory.mkdir(exist_ok=True)
            for name in ("cpuset.cpus", "cpuset.mems"):
                own = directory / name
                if own.exists() and not own.read_text().strip():
                    own.write_text((directory.parent / name).read_text())

    @staticmethod
    def _create_unified(path: Path) -> None:
        """In v2 a controller works in a child only if every ancestor delegates it."""
        for directory in _missing_from_top(path):
            parent = directory.parent
            try:
                available = (parent / "cgroup.controllers").read_text().split()
                wanted = [c for c in ("cpu", "memory", "pids", "cpuset", "io") if c in available]
                if wanted:
                    (parent / "cgroup.subtree_control").write_text(
                        " ".join("+" + c for c in wanted))
            except OSError:
                pass
            directory.mkdir(exist_ok=True)

    def open_procs_files(self) -> list[int]:
        """Write fds of every hierarchy's cgroup.procs: the instance process joins through them after its
        pivot_root has hidden /sys/fs/cgroup (writing a pid there moves that process)."""
        fds: list[int] = []
        try:
            for path in self.dirs.values():
                fds.append(os.open(path / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC))
        except OSError:
            for fd in fds:
                os.close(fd)
            raise
        return fds

    def procs(self) -> list[int]:
        pids: set[int] = set()
        for ctrl, path in self.dirs.items():
            if ctrl not in ("memory", "pids", ""):
                continue
            try:
                pids.update(int(p) for p in (path / "cgroup.procs").read_text().split())
            except OSError:
                continue
        return sorted(pids)

    def remove(self, timeout: float = 5.0) -> list[str]:
        """rmdir every directory; a cgroup is busy until its last process is reaped, so
        retry briefly. Returns what could not be removed (logged by the caller)."""
        deadline = time.monotonic() + timeout
        leftovers: list[str] = []
        for path in self.dirs.values():
            while True:
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno == errno.EBUSY and time.monotonic() < deadline:
                        time.sleep(0.02)
                        continue
                    leftovers.append(f"{path}: {exc.strerror}")
                    break
        return leftovers

    # -- resources -------------------------------------------------------------------

    def apply(self, resources: dict[str, Any]) -> None:
        """Apply OCI LinuxResources (the JSON form, as in config.json and Update)."""
        if self.unified:
            self._apply_v2(resources)
        else:
            self._apply_v1(resources)

    def _write(self, ctrl: str, name: str, value: object) -> None:
        directory = self.dirs.get(ctrl)
        if directory is None:
            return
        target = directory / name
        if target.exists():
            target.write_text(str(value))

    def _apply_v1(self, res: dict[str, Any]) -> None:
        memory = res.get("memory") or {}
        if memory.get("limit") is not None:
            limit = int(memory["limit"])
            # memsw must stay >= limit; raise it first when it exists and is lower.
            swap = memory.get("swap")
            if swap is not None:
                self._write("memory", "memory.memsw.limit_in_bytes", -1)
            self._write("memory", "memory.limit_in_bytes", limit)
            if swap is not None and int(swap) > 0:
                self._write("memory", "memory.memsw.limit_in_bytes", int(swap))
        if memory.get("reservation") is not None:
            self._write("memory", "memory.soft_limit_in_bytes", int(memory["reservation"]))
        cpu = res.get("cpu") or {}
        if cpu.get("shares"):
            self._write("cpu", "cpu.shares", int(cpu["shares"]))
        if cpu.get("period"):
            self._write("cpu", "cpu.cfs_period_us", int(cpu["period"]))
        if cpu.get("quota") is not None:
            self._write("cpu", "cpu.cfs_quota_us", int(cpu["quota"]))
        if cpu.get("cpus"):
            self._write("cpuset", "cpuset.cpus", cpu["cpus"])
        if cpu.get("mems"):
            self._write("cpuset", "cpuset.mems", cpu["mems"])
        pids = res.get("pids") or {}
        if pids.get("limit"):
            limit = int(pids["limit"])
            self._write("pids", "pids.max", "max" if limit <= 0 else limit)
        for rule in device_rules(res.get("devices") or ()):
            self._write("devices", rule.file, rule.line)

    def _apply_v2(self, res: dict[str, Any]) -> None:
        memory = res.get("memory") or {}
        if memory.get("limit") is not None:
            limit = int(memory["limit"])
            self._write("", "memory.max", "max" if limit < 0 else limit)
            swap = memory.get("swap")
            if swap is not None and limit > 0:
                swap_only = int(swap) - limit
                self._write("", "memory.swap.max", "max" if int(swap) < 0 else max(swap_only, 0))
        if memory.get("reservation") is not None:
            self._write("", "memory.low", int(memory["reservation"]))
        cpu = res.get("cpu") or {}
        if cpu.get("shares"):
            # The conversion runc and crun use: shares [2, 262144] -> weight [1, 10000].
            shares = int(cpu["shares"])
            weight = 1 + ((shares - 2) * 9999) // 262142
            self._write("", "cpu.weight", max(1, min(weight, 10000)))
        if cpu.get("quota") is not None or cpu.get("period"):
            quota = int(cpu.get("quota") or -1)
            period = int(cpu.get("period") or 100000)
            self._write("", "cpu.max", f"{'max' if quota <= 0 else quota} {period}")
        if cpu.get("cpus"):
            self._write("", "cpuset.cpus", cpu["cpus"])
        pids = res.get("pids") or {}
        if pids.get("limit"):
            limit = int(pids["limit"])
            self._write("", "pids.max", "max" if limit <= 0 else limit)

    # -- observation -----------------------------------------------------------------

    def _read(self, ctrl: str, name: str) -> str | None:
        directory = self.dirs.get(ctrl)
        if directory is None:
            return None
        try:
            return (directory / name).read_text()
        except OSError:
            return None

    def _read_int(self, ctrl: str, name: str) -> int:
        text = self._read(ctrl, name)
        if not text:
            return 0
        text = text.strip()
        if text == "max":
            return 0
        try:
            return int(text)
        except ValueError:
            return 0

    def _read_keyed(self, ctrl: str, name: str) -> dict[str, int]:
        result: dict[str, int] = {}
        for line in (self._read(ctrl, name) or "").splitlines():
            key, _, value = line.partition(" ")
            try:
                result[key] = int(value)
            except ValueError:
                continue
        return result

    def oom_kill_count(self) -> int:
        """How many times the kernel OOM-killed a process of this cgroup."""
        if self.unified:
            return self._read_keyed("", "memory.events").get("oom_kill", 0)
        return self._read_keyed("memory", "memory.oom_control").get("oom_kill", 0)

    def metrics(self) -> tuple[str, bytes]:
        """(type_url, serialized Metrics) as containerd's cgroups packages define them;
        CRI accepts only these two types in a Stats answer (containerd
        internal/cri/server/container_stats_list.go)."""
        if self.unified:
            return "io.containerd.cgroups.v2.Metrics", self._metrics_v2().SerializeToString()
        return "io.containerd.cgroups.v1.Metrics", self._metrics_v1().SerializeToString()

    def _metrics_v1(self) -> Any:
        from proto.cgroups.v1 import metrics_pb2 as m

        metrics = m.Metrics()
        metrics.pids.current = self._read_int("pids", "pids.current")
        metrics.pids.limit = self._read_int("pids", "pids.max")
        metrics.cpu.usage.total = self._read_int("cpuacct", "cpuacct.usage")
        per_cpu = (self._read("cpuacct", "cpuacct.usage_percpu") or "").split()
        metrics.cpu.usage.per_cpu.extend(int(v) for v in per_cpu if v.isdigit())
        ticks_to_ns = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
        cpuacct = self._read_keyed("cpuacct", "cpuacct.stat")
        metrics.cpu.usage.user = cpuacct.get("user", 0) * ticks_to_ns
        metrics.cpu.usage.kernel = cpuacct.get("system", 0) * ticks_to_ns
        throttle = self._read_keyed("cpu", "cpu.stat")
        metrics.cpu.throttling.periods = throttle.get("nr_periods", 0)
        metrics.cpu.throttling.throttled_periods = throttle.get("nr_throttled", 0)
        metrics.cpu.throttling.throttled_time = throttle.get("throttled_time", 0)

        renames = {"pgpgin": "pg_pg_in", "pgpgout": "pg_pg_out", "pgfault": "pg_fault",
                   "pgmajfault": "pg_maj_fault", "hierarchical_memsw_limit": "hierarchical_swap_limit"}
        fields = {f.name for f in m.MemoryStat.DESCRIPTOR.fields}
        for key, value in self._read_keyed("memory", "memory.stat").items():
            base = key.removeprefix("total_")
            name = renames.get(base, base)
            if key.startswith("total_"):
                name = "total_" + name
            if name in fields and isinstance(getattr(metrics.memory, name), int):
                setattr(metrics.memory, name, value)
        for entry, prefix in (("usage", "memory."), ("swap", "memory.memsw."),
                              ("kernel", "memory.kmem."), ("kernel_tcp", "memory.kmem.tcp.")):
            target = getattr(metrics.memory, entry)
            target.usage = self._read_int("memory", prefix + "usage_in_bytes")
            target.max = self._read_int("memory", prefix + "max_usage_in_bytes")
            target.limit = self._read_int("memory", prefix + "limit_in_bytes")
            target.failcnt = self._read_int("memory", prefix + "failcnt")
        oom = self._read_keyed("memory", "memory.oom_control")
        metrics.memory_oom_control.oom_kill_disable = oom.get("oom_kill_disable", 0)
        metrics.memory_oom_control.under_oom = oom.get("under_oom", 0)
        metrics.memory_oom_control.oom_kill = oom.get("oom_kill", 0)
        return metrics

    def _metrics_v2(self) -> Any:
        from proto.cgroups.v2 import metrics_pb2 as m

        metrics = m.Metrics()
        metrics.pids.current = self._read_int("", "pids.current")
        metrics.pids.limit = self._read_int("", "pids.max")
        cpu = self._read_keyed("", "cpu.stat")
        for name in ("usage_usec", "user_usec", "system_usec", "nr_periods", "nr_throttled",
                     "throttled_usec"):
            setattr(metrics.cpu, name, cpu.get(name, 0))
        fields = {f.name for f in m.MemoryStat.DESCRIPTOR.fields}
        for key, value in self._read_keyed("", "memory.stat").items():
            if key in fields:
                setattr(metrics.memory, key, value)
        metrics.memory.usage = self._read_int("", "memory.current")
        metrics.memory.usage_limit = self._read_int("", "memory.max")
        metrics.memory.swap_usage = self._read_int("", "memory.swap.current")
        metrics.memory.swap_limit = self._read_int("", "memory.swap.max")
        events = self._read_keyed("", "memory.events")
        for name in ("low", "high", "max", "oom", "oom_kill"):
            setattr(metrics.memory_events, name, events.get(name, 0))
        return metrics


def cgroup_pids(cgroup: Cgroup | None, pid: int, exited: asyncio.Future[Any]) -> list[int]:
    """Every process of a task (its cgroup's), or its one pid while it runs; what Pids and `ctr task ps` show."""
    if cgroup is not None:
        procs = cgroup.procs()
        if procs:
            return procs
    return [] if exited.done() else [pid]


def cgroup_stats(cgroup: Cgroup | None, task_id: str) -> tuple[str, bytes]:
    """The task cgroup's metrics (type URL, payload) for Stats: what kubelet and `ctr task metrics` read."""
    if cgroup is None:
        raise NotFound(f"{task_id}: task has no cgroup to read metrics from")
    return cgroup.metrics()
