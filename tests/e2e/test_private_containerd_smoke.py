"""Smoke test of the e2e plumbing itself: for each containerd (1.6 system, 1.7 trixie, 2.1 sid) a private daemon
starts, imports a busybox image built by mkoci, runs a container through runc, and leaves nothing behind.

If this fails, every other e2e test would fail for reasons that have nothing to do with the shim. Needs root and
scripts/setup.sh (containerd 1.7/2.1 come from scripts/install_containerd.sh).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
IMAGE_REF = "docker.io/library/busybox-smoke:latest"
APPLETS = ("sh", "echo", "cat", "ls", "sleep", "true")

# scripts/ is not a package: its modules are imported from their directory, as the scripts import nothing else.
sys.path.insert(0, str(SCRIPTS))
import mkoci  # noqa: E402
import private_containerd  # noqa: E402
from private_containerd import PrivateContainerd  # noqa: E402

from tests.e2e.support import busybox_rootfs  # noqa: E402

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="containerd and runc need root"),
]


@pytest.fixture(scope="module")
def busybox_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OCI tar of a busybox-static rootfs: /bin/busybox, applet symlinks, and the usual empty mount points."""
    base = tmp_path_factory.mktemp("busybox")
    rootfs = busybox_rootfs(base / "rootfs", APPLETS)
    image = base / "busybox-oci.tar"
    mkoci.build_image_tar(rootfs, image, IMAGE_REF)
    return image


def _namespace() -> str:
    """A namespace of our own: runc state (/run/containerd/runc/<ns>) and cgroups (<hierarchy>/<ns>) are shared
    by every containerd on the machine, so a unique name keeps parallel runs apart and makes cleanup checkable."""
    return f"smoke-{os.getpid()}-{time.monotonic_ns() % 100000}"


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def _assert_nothing_left(ctrd: PrivateContainerd, workdir: Path, namespace: str) -> None:
    assert not ctrd.is_running()
    assert ctrd.owned_pids() == []
    assert _processes_mentioning(str(workdir)) == []
    cgroup_leftovers = [str(h / namespace) for h in private_containerd.cgroup_hierarchies() if (h / namespace).exists()]
    assert cgroup_leftovers == []
    assert not (private_containerd.RUNC_STATE_ROOT / namespace).exists()


@pytest.mark.parametrize("version", private_containerd.SUPPORTED_VERSIONS)
def test_ctr_run_through_runc(version: str, busybox_image: Path, tmp_path: Path) -> None:
    shim_dir = tmp_path / "shims"
    shim_dir.mkdir()
    workdir = tmp_path / "ctrd"
    namespace = _namespace()
    ctrd = PrivateContainerd(version, workdir, shim_dir)
    try:
        ctrd.start()
        assert ctrd.version_string.startswith(version + ".")
        assert Path(ctrd.address).is_socket() and Path(ctrd.ttrpc_address).is_socket()

        ctrd.ctr("images", "import", str(busybox_image), namespace=namespace)
        result = ctrd.ctr("run", "--rm", IMAGE_REF, "t1", "/bin/echo", "hi", namespace=namespace)
        assert result.stdout == "hi\n"
        assert ctrd.ctr("containers", "list", "-q", namespace=namespace).stdout.strip() == ""

        # A task still running at stop(): shims outlive containerd, so stop() must tear it down itself.
        ctrd.ctr("run", "-d", IMAGE_REF, "t2", "/bin/sleep", "300", namespace=namespace)
        assert "t2" in ctrd.ctr("tasks", "list", "-q", namespace=namespace).stdout.split()
    finally:
        ctrd.stop()

    _assert_nothing_left(ctrd, workdir, namespace)
    assert ctrd.log_path.stat().st_size > 0


@pytest.mark.parametrize("version", private_containerd.SUPPORTED_VERSIONS)
def test_stop_after_daemon_crash_cleans_up_its_containers(version: str, busybox_image: Path, tmp_path: Path) -> None:
    """If containerd dies first (a crashed test, a SIGKILL), its shims, containers, runc state and rootfs mounts
    live on; stop() must still find and remove them through what is provably ours (address, state dir)."""
    shim_dir = tmp_path / "shims"
    shim_dir.mkdir()
    workdir = tmp_path / "ctrd"
    namespace = _namespace()
    ctrd = PrivateContainerd(version, workdir, shim_dir)
    try:
        ctrd.start()
        ctrd.ctr("images", "import", str(busybox_image), namespace=namespace)
        # --fifo-dir: with the daemon gone nobody would remove ctr's FIFOs from /run/containerd/fifo.
        detached = ("run", "-d", "--fifo-dir", str(ctrd.fifo_dir))
        ctrd.ctr(*detached, IMAGE_REF, "t3", "/bin/sleep", "300", namespace=namespace)
        daemon_pid = ctrd.pid
        assert daemon_pid is not None
        os.kill(daemon_pid, 9)
        deadline = time.monotonic() + 10
        while ctrd.is_running() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not ctrd.is_running()
        assert ctrd.owned_pids(), "the shim should have outlived containerd"
        assert private_containerd.mounts_under(workdir), "the task rootfs should still be mounted"
    finally:
        ctrd.stop()

    _assert_nothing_left(ctrd, workdir, namespace)
    assert private_containerd.mounts_under(workdir) == []


def test_cli_start_and_stop(tmp_path: Path) -> None:
    workdir, shim_dir = tmp_path / "ctrd", tmp_path / "shims"
    shim_dir.mkdir()
    script = str(SCRIPTS / "private_containerd.py")
    started = subprocess.run(
        [sys.executable, script, "start", "--version", "1.6", "--workdir", str(workdir), "--shim-dir", str(shim_dir)],
        capture_output=True, text=True, timeout=60,
    )
    try:
        assert started.returncode == 0, started.stderr
        exports = dict(
            shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in started.stdout.splitlines()
        )
        version = subprocess.run(
            [exports["CTR"], "--address", exports["CONTAINERD_ADDRESS"], "version"],
            capture_output=True, text=True, timeout=30, check=True,
        )
        assert "Server:" in version.stdout
    finally:
        stopped = subprocess.run(
            [sys.executable, script, "stop", "--workdir", str(workdir)], capture_output=True, text=True, timeout=60
        )
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped" in stopped.stdout
    assert _processes_mentioning(str(workdir)) == []
