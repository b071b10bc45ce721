"""The parts of the OCI runtime spec (`config.json` in the bundle) that the shim acts on.

containerd writes a full runtime spec for every task; a Wasm task needs only a few of its
fields: the process (args, env, user, capabilities), the network namespace to join, the
cgroup to live in with its resources, and the annotations CRI uses to group a pod.
Parsing them once into a typed value keeps the rest of the shim from poking at raw dicts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shim.errors import InvalidArgument

# CRI marks every container of a pod with its sandbox id, the pause container's own id
# (containerd internal/cri/annotations/annotations.go); runc also honours an explicit
# group annotation. Both decide which shim daemon serves a task.
GROUP_ANNOTATIONS = ("io.containerd.runc.v2.group", "io.kubernetes.cri.sandbox-id")
CONTAINER_TYPE_ANNOTATION = "io.kubernetes.cri.container-type"


@dataclass(frozen=True)
class NamespaceSpec:
    type: str
    path: str | None


@dataclass(frozen=True)
class UserSpec:
    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()


@dataclass(frozen=True)
class SpecMount:
    """One entry of the spec's `mounts`: kubelet's volumes, CRI's /etc/hosts, ctr's /proc, /dev, ..."""

    destination: str
    type: str
    source: str
    options: tuple[str, ...]


@dataclass(frozen=True)
class Rlimit:
    type: str  # "RLIMIT_NOFILE", ...
    soft: int
    hard: int


@dataclass(frozen=True)
class RuntimeSpec:
    args: tuple[str, ...]
    env: tuple[str, ...]
    cwd: str
    user: UserSpec
    no_new_privileges: bool
    capabilities: dict[str, tuple[str, ...]]
    root_path: str
    root_readonly: bool
    hostname: str | None
    namespaces: tuple[NamespaceSpec, ...]
    cgroups_path: str | None
    resources: dict[str, Any]
    annotations: dict[str, str]
    raw: dict[str, Any] = field(repr=False, compare=False)
    mounts: tuple[SpecMount, ...] = ()
    rlimits: tuple[Rlimit, ...] = ()
    #: process.user.umask; None = runc's default 0022.
    umask: int | None = None
    #: linux.seccomp as the spec has it (applied by shim/wasm/sandbox/seccomp.py); None = no filter.
    seccomp: dict[str, Any] | None = None

    @property
    def env_dict(self) -> dict[str, str]:
        """Env as a dict; later duplicates win, as execve's consumers usually see them."""
        result: dict[str, str] = {}
        for entry in self.env:
            key, sep, value = entry.partition("=")
            if sep:
                result[key] = value
        return result

    def namespace(self, ns_type: str) -> NamespaceSpec | None:
        for ns in self.namespaces:
            if ns.type == ns_type:
                return ns
        return None

    @property
    def group_key(self) -> str | None:
        for name in GROUP_ANNOTATIONS:
            value = self.annotations.get(name)
            if value:
                return value
        return None

    @property
    def is_cri_sandbox(self) -> bool:
        return self.annotations.get(CONTAINER_TYPE_ANNOTATION) == "sandbox"


def load_spec(bundle_dir: Path) -> RuntimeSpec:
    path = bundle_dir / "config.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidArgument(f"no OCI runtime spec at {path}") from None
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"cannot read OCI runtime spec {path}: {exc}") from None
    return parse_spec(raw)


def parse_spec(raw: dict[str, Any]) -> RuntimeSpec:
    if not isinstance(raw, dict):
        raise InvalidArgument("OCI runtime spec is not a JSON object")
    process = raw.get("process") or {}
    linux = raw.get("linux") or {}
    root = raw.get("root") or {}
    user = process.get("user") or {}
    caps = process.get("capabilities") or {}
    return RuntimeSpec(
        args=tuple(str(a) for a in process.get("args") or ()),
        env=tuple(str(e) for e in process.get("env") or ()),
        cwd=str(process.get("cwd") or "/"),
        user=UserSpec(
            uid=int(user.get("uid") or 0),
            gid=int(user.get("gid") or 0),
            additional_gids=tuple(int(g) for g in user.get("additionalGids") or ()),
        ),
        no_new_privileges=bool(process.get("noNewPrivileges")),
        capabilities={k: tuple(v or ()) for k, v in caps.items()},
        root_path=str(root.get("path") or "rootfs"),
        root_readonly=bool(root.get("readonly")),
        hostname=raw.get("hostname") or None,
        namespaces=tuple(
            NamespaceSpec(type=str(ns.get("type")), path=ns.get("path") or None)
            for ns in linux.get("namespaces") or ()
        ),
        cgroups_path=linux.get("cgroupsPath") or None,
        resources=dict(linux.get("resources") or {}),
        annotations={str(k): str(v) for k, v in (raw.get("annotations") or {}).items()},
        raw=raw,
        mounts=tuple(_mount(m) for m in raw.get("mounts") or ()),
        rlimits=tuple(_rlimit(r) for r in process.get("rlimits") or ()),
        umask=int(user["umask"]) if user.get("umask") is not None else None,
        seccomp=dict(linux["seccomp"]) if isinstance(linux.get("seccomp"), dict) else None,
    )


def _mount(raw: Any) -> SpecMount:
    if not isinstance(raw, dict) or not isinstance(raw.get("destination"), str):
        raise InvalidArgument(f"OCI runtime spec: a mount without a destination: {raw!r}")
    options = raw.get("options") or ()
    return SpecMount(destination=raw["destination"], type=str(raw.get("type") or ""),
                     source=str(raw.get("source") or ""), options=tuple(str(o) for o in options))


def _rlimit(raw: Any) -> Rlimit:
    try:
        return Rlimit(type=str(raw["type"]), soft=int(raw["soft"]), hard=int(raw["hard"]))
    except (KeyError, TypeError, ValueError):
        raise InvalidArgument(f"OCI runtime spec: a malformed rlimit: {raw!r}") from None


#: CRI's cpu.shares for a container that requested no CPU (kubelet's MinShares): not a request of 2/1024 CPUs.
_MIN_SHARES = 2


def container_cpus(resources: dict[str, Any]) -> float | None:
    """The CPUs a container may use as its spec says: its limit (cpu quota / period), else its request (CRI
    writes requests as cpu.shares, 1024 per CPU); None when it names neither."""
    cpu = resources.get("cpu") or {}
    try:
        quota, period = int(cpu.get("quota") or 0), int(cpu.get("period") or 0)
        if quota > 0 and period > 0:
            return quota / period
        shares = int(cpu.get("shares") or 0)
    except (TypeError, ValueError):
        return None
    return shares / 1024 if shares > _MIN_SHARES else None
