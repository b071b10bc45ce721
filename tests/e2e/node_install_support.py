"""A CRI containerd set up the way an operator sets up a node: with `containerd-shim-spin-v2 install`.

The CRI pod tests use `installed_cri_containerd` as their containerd, so that what they prove holds for a config.toml
the installer wrote (the issue's acceptance: "gives a config with which that containerd starts and runs the tests"),
not only for the one private_containerd.py renders with the runtime already in it. The steps are those of
cri_support.cri_containerd, with the installer in between rendering and starting:

    render config.toml without our runtime (spin_runtime=False, as a node has it) -> install -> install again
    (must change nothing, byte for byte) -> start containerd on that file, the shim found in the installer's bin dir

The installer asks the `containerd` on PATH which version reads the config (and refuses a version 3 file for
a 1.x), so it runs with that version's containerd first on PATH, as on a node.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cri_client import CriClient
from private_containerd import PrivateContainerd, bin_dir_for  # noqa: E402  (scripts/ is on sys.path via conftest)

from shim.install.command import NOTHING_CHANGED
from tests.e2e.cri_support import cri_ready
from tests.e2e.support import SHIM_NAME

INSTALLER_TIMEOUT_S = 60.0
NODE_BIN_DIR = "node-bin"


def installer_binary() -> Path:
    """The console script the installer links to: the command an operator runs is this same file."""
    return Path(sys.executable).parent / SHIM_NAME


def _env_for(containerd_version: str | None) -> dict[str, str] | None:
    """PATH with that version's containerd first (None: the caller's PATH, Debian's 1.6 in /usr/bin)."""
    if containerd_version is None:
        return None
    return {**os.environ, "PATH": f"{bin_dir_for(containerd_version)}:{os.environ.get('PATH', '/usr/bin:/bin')}"}


def run_installer(config: Path, bin_dir: Path, *extra_args: str,
                  containerd_version: str | None = None) -> subprocess.CompletedProcess[str]:
    """Runs `<venv>/bin/containerd-shim-spin-v2 install --config config --bin-dir bin_dir ...` (with containerd
    `containerd_version` first on PATH, if given) and returns the result (no check)."""
    return subprocess.run(
        [str(installer_binary()), "install", "--config", str(config), "--bin-dir", str(bin_dir), *extra_args],
        capture_output=True, text=True, timeout=INSTALLER_TIMEOUT_S, check=False, env=_env_for(containerd_version),
    )


def run_uninstall(config: Path, *extra_args: str) -> subprocess.CompletedProcess[str]:
    """Runs `<venv>/bin/containerd-shim-spin-v2 uninstall --config config ...` and returns the result (no check)."""
    return subprocess.run([str(installer_binary()), "uninstall", "--config", str(config), *extra_args],
                          capture_output=True, text=True, timeout=INSTALLER_TIMEOUT_S, check=False)


def install_twice(config: Path, bin_dir: Path, *extra_args: str,
                  containerd_version: str | None = None) -> subprocess.CompletedProcess[str]:
    """The installer run as an operator (or a DaemonSet restarting) would: the second run must be a no-op."""
    first = run_installer(config, bin_dir, *extra_args, containerd_version=containerd_version)
    assert first.returncode == 0, f"installer failed ({first.returncode}): {first.stderr}{first.stdout}"
    written = config.read_bytes()
    second = run_installer(config, bin_dir, *extra_args, containerd_version=containerd_version)
    assert second.returncode == 0, f"second installer run failed ({second.returncode}): {second.stderr}"
    assert second.stdout.splitlines()[-1:] == [NOTHING_CHANGED], second.stdout
    assert config.read_bytes() == written, "the second installer run changed config.toml"
    return first


@contextlib.contextmanager
def installed_cri_containerd(version: str, workdir: Path, cache_dir: Path,
                             extra_env: dict[str, str] | None = None) -> Iterator[tuple[PrivateContainerd, CriClient]]:
    """A private containerd (debug=True, extra_env SPIN_SHIM_CACHE_DIR=cache_dir plus extra_env) whose config is the
    spin_runtime=False rendering with the installer run on it twice (the second run must report no change and leave
    the file byte-identical), whose shim comes from the installer's bin dir (workdir/"node-bin", used as shim_dir),
    CNI enabled, pause image imported, CRI network ready; yields (ctrd, CriClient); on exit teardown_all() the
    pods, close the client, stop the daemon."""
    if os.geteuid() != 0:
        pytest.skip("end-to-end tests need root (containerd, mounts, cgroups)")
    try:
        bin_dir_for(version)
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"containerd {version} is not installed ({exc}); run scripts/setup.sh")
    node_bin = Path(workdir) / NODE_BIN_DIR
    node_bin.mkdir(parents=True, exist_ok=True)  # the installer wants an existing bin dir, as /usr/local/bin is
    ctrd = PrivateContainerd(version, workdir, node_bin, debug=True, spin_runtime=False,
                             extra_env={"SPIN_SHIM_CACHE_DIR": str(cache_dir), **(extra_env or {})})
    config = ctrd.write_config()
    assert SHIM_NAME not in config.read_text() and "io.containerd.spin.v2" not in config.read_text()
    install_twice(config, node_bin, containerd_version=version)
    try:
        ctrd.start(keep_config=True)
        with cri_ready(ctrd) as client:
            yield ctrd, client
    finally:
        ctrd.stop()
