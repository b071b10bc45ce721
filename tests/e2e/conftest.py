"""Fixtures that drive a real containerd (1.6, 1.7, 2.1) with this shim on its PATH.

Everything runs for real: containerd from Debian (1.6) or unpacked trixie/sid debs (1.7,
2.1, scripts/install_containerd.sh), runc, and the wasm guests built by
scripts/build_guests.py. The leak check (`assert_no_leaks`) is made while containerd is
still up and before PrivateContainerd.stop() cleans system paths, so that cleanup can
never hide what the shim left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from mkoci import build_image_tar  # noqa: E402
from private_containerd import PrivateContainerd, bin_dir_for  # noqa: E402

from fork_servers import new_fork_servers_stopped  # noqa: E402
from tests.e2e.support import SHIM_NAME, DeviceNode, Symlink  # noqa: E402

GUESTS = REPO / "tests" / "guests"
GUEST_BUILD = GUESTS / "build"
VERSIONS = ("1.6", "1.7", "2.1")


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("end-to-end tests need root (containerd, mounts, cgroups)")


def _guest_index() -> dict:
    subprocess.run([sys.executable, str(REPO / "scripts" / "build_guests.py")], check=True)
    return json.loads((GUEST_BUILD / "index.json").read_text())


@pytest.fixture(scope="session", autouse=True)
def fork_server_stopped_at_the_end() -> Iterator[None]:
    """This build's fork server (shim/forkserver), spawned by the first `start` of the run, outlives every
    containerd by design: stopped by pid when the session ends, unless it ran before the session did."""
    from shim.forkserver.build_key import build_key

    with new_fork_servers_stopped(build_key()):
        yield


@pytest.fixture(scope="session")
def guests() -> dict[str, Path]:
    """Build (or reuse) the test guests; file name (hello.wasm) -> built artifact."""
    return {name: GUEST_BUILD / name for name in _guest_index()["guests"]}


@pytest.fixture(scope="session")
def guest_apps(guests: dict[str, Path]) -> dict[str, Path]:
    """Spin app directories (spin.toml + wasm) built beside the guests; name -> dir."""
    index = json.loads((GUEST_BUILD / "index.json").read_text())
    return {name: GUEST_BUILD / entry["dir"] for name, entry in index["apps"].items()}


@pytest.fixture(scope="session")
def shim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding only our shim binary, put first on containerd's PATH."""
    installed = Path(sys.executable).parent / SHIM_NAME
    if not installed.exists():
        pytest.fail(f"{installed} missing: run scripts/setup.sh (pip install -e .)")
    directory = tmp_path_factory.mktemp("shim-bin")
    (directory / SHIM_NAME).symlink_to(installed)
    return directory


@pytest.fixture(scope="session")
def shim_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("precompiled")


@contextlib.contextmanager
def running_containerd(version: str, workdir: Path, shim_dir: Path, cache_dir: Path,
                       extra_env: dict[str, str] | None = None) -> Iterator[PrivateContainerd]:
    """A private containerd with this shim on its PATH, stopped (and cleaned up) when the block ends."""
    _require_root()
    try:
        bin_dir_for(version)
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"containerd {version} is not installed ({exc}); run scripts/setup.sh")
    daemon = PrivateContainerd(version, workdir, shim_dir, debug=True,
                               extra_env={"SPIN_SHIM_CACHE_DIR": str(cache_dir), **(extra_env or {})})
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="module", params=VERSIONS)
def containerd(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
               shim_dir: Path, shim_cache_dir: Path) -> Iterator[PrivateContainerd]:
    workdir = tmp_path_factory.mktemp(f"containerd-{request.param}")
    with running_containerd(request.param, workdir, shim_dir, shim_cache_dir) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def containerd_16(tmp_path_factory: pytest.TempPathFactory, shim_dir: Path,
                  shim_cache_dir: Path) -> Iterator[PrivateContainerd]:
    """One containerd for tests whose subject is the shim, not containerd's version."""
    with running_containerd("1.6", tmp_path_factory.mktemp("containerd-one"), shim_dir, shim_cache_dir) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def containerd_21(tmp_path_factory: pytest.TempPathFactory, shim_dir: Path,
                  shim_cache_dir: Path) -> Iterator[PrivateContainerd]:
    """The newest containerd, for the HTTP app matrix (the start path is covered on every version elsewhere)."""
    with running_containerd("2.1", tmp_path_factory.mktemp("containerd-21"), shim_dir, shim_cache_dir) as daemon:
        yield daemon


@pytest.fixture(scope="session")
def http_apps() -> dict[str, Path]:
    """The real Spin HTTP apps built from the public SDKs (scripts/build_http_apps.py); name -> app dir."""
    from build_http_apps import build

    build_dir = build()
    index = json.loads((build_dir / "index.json").read_text())
    return {name: build_dir / entry["dir"] for name, entry in index["apps"].items()}


class Images:
    """Builds wasm images from files and imports them into one containerd, once each."""

    def __init__(self, daemon: PrivateContainerd, workdir: Path) -> None:
        self._daemon = daemon
        self._workdir = workdir
        self._imported: set[str] = set()

    def wasm_image(self, name: str, files: dict[str, Path | bytes | Symlink | DeviceNode],
                   entrypoint: list[str]) -> str:
        ref = f"docker.io/spin-shim-test/{name}:latest"
        if ref in self._imported:
            return ref
        rootfs = self._workdir / f"rootfs-{name}"
        if rootfs.exists():
            shutil.rmtree(rootfs)
        for dest, source in files.items():
            target = rootfs / dest.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(source, Symlink):
                target.symlink_to(source.target)
            elif isinstance(source, DeviceNode):
                kind = stat.S_IFCHR if source.kind == "c" else stat.S_IFBLK
                os.mknod(target, 0o666 | kind, os.makedev(source.major, source.minor))
            elif isinstance(source, bytes):
                target.write_bytes(source)
            elif source.is_dir():
                shutil.copytree(source, target)
            else:
                shutil.copyfile(source, target)
        rootfs.mkdir(parents=True, exist_ok=True)
        tar = self._workdir / f"{name}.tar"
        build_image_tar(rootfs, tar, ref, os_="wasip1", arch="wasm", entrypoint=entrypoint)
        self._daemon.ctr("images", "import", "--all-platforms", str(tar))
        self._imported.add(ref)
        return ref


@pytest.fixture(scope="module")
def images(containerd: PrivateContainerd, tmp_path_factory: pytest.TempPathFactory) -> Images:
    return Images(containerd, tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def images_21(containerd_21: PrivateContainerd, tmp_path_factory: pytest.TempPathFactory) -> Images:
    return Images(containerd_21, tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def images_16(containerd_16: PrivateContainerd, tmp_path_factory: pytest.TempPathFactory) -> Images:
    return Images(containerd_16, tmp_path_factory.mktemp("images"))
