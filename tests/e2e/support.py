"""Checks shared by the end-to-end tests: what a shim leaves behind, and polling."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import pytest

RUNTIME = "io.containerd.spin.v2"


@dataclass(frozen=True)
class Symlink:
    """An image entry that is a symlink (crafted images point them at the node's files)."""

    target: str


@dataclass(frozen=True)
class DeviceNode:
    """An image entry that is a device node: "c" or "b", major, minor."""

    kind: str
    major: int
    minor: int
SHIM_NAME = "containerd-shim-spin-v2"


# -- leak checks ---------------------------------------------------------------------

def shim_processes(daemon, among: Iterable[int] | None = None) -> list[int]:
    """Our shim daemons and instance processes belonging to this containerd (among these pids, or all)."""
    pids = []
    for entry in (str(pid) for pid in among) if among is not None else os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg.endswith(SHIM_NAME.encode()) for arg in cmdline[:2]) and \
                daemon.address.encode() in cmdline:
            pids.append(int(entry))
    return pids


def task_cgroups(task_id: str, namespace: str = "default") -> list[Path]:
    return [p for p in Path("/sys/fs/cgroup").glob(f"*/{namespace}/{task_id}") if p.exists()]


def mounts_under(path: Path) -> list[str]:
    prefix = str(path)
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(prefix)]


def shim_sockets_of(daemon, namespace: str, groups: list[str]) -> list[Path]:
    from shim.cli.start import socket_path

    return [Path(p) for p in (socket_path(daemon.address, namespace, g) for g in groups)
            if Path(p).exists()]


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def assert_no_leaks(daemon, task_ids: list[str], namespace: str = "default") -> None:
    """No shim or instance process, socket, mount or cgroup of these tasks remains.

    Shim daemons exit shortly after their last task is deleted, so allow them a moment.
    """
    assert wait_until(lambda: not shim_processes(daemon), timeout=10), \
        f"shim processes left: {shim_processes(daemon)}"
    for task_id in task_ids:
        assert not task_cgroups(task_id, namespace), f"cgroups left: {task_cgroups(task_id, namespace)}"
    assert not shim_sockets_of(daemon, namespace, task_ids), "shim sockets left"
    assert not mounts_under(daemon.state_dir), f"mounts left: {mounts_under(daemon.state_dir)}"
    listing = daemon.ctr("tasks", "ls", namespace=namespace).stdout
    for task_id in task_ids:
        assert task_id not in listing.split(), f"task {task_id} still listed:\n{listing}"


class _Service(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


_S = TypeVar("_S", bound=_Service)


@contextlib.contextmanager
def started_or_failed(service: _S, error: type[Exception]) -> Iterator[_S]:
    """``service`` (a registry, a Kubernetes node) started for the block and stopped after it; a start that raises
    ``error`` fails the test with its message, which carries what the service reported."""
    try:
        service.start()
    except error as exc:
        pytest.fail(str(exc))
    try:
        yield service
    finally:
        service.stop()


def busybox_rootfs(rootfs: Path, applets: Iterable[str], extra_dirs: Iterable[str] = ()) -> Path:
    """scripts/busybox_image.busybox_rootfs, with a missing busybox-static failing the test with its remedy."""
    from busybox_image import BusyboxMissingError  # scripts/ is on sys.path (conftest)
    from busybox_image import busybox_rootfs as build

    try:
        return build(rootfs, applets, extra_dirs)
    except BusyboxMissingError as exc:
        pytest.fail(str(exc))
