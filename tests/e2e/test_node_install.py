"""The node installer against real containerds: what it writes, containerd reads and runs.

- a containerd started on an installer-made config.toml (installed twice) runs a Spin pod's sandbox through our
  shim, found in the installer's bin dir, and the pod gets an IP;
- each version's own `containerd config default`, installed twice, is accepted by that containerd's `config dump`
  with our runtime in it (and containerd 2.1 migrates a version 2 file's runtime to its new CRI plugin), which
  proves the file without starting a daemon on the node's paths;
- an unparseable config.toml fails the command and stays byte-identical;
- on a node whose bin dir already holds another binary at the shim's name: install refuses it, --dry-run changes
  nothing, install --force runs a Spin pod through our shim; after uninstall the config is byte-identical to
  before, the other binary is back, and containerd restarts on that config without our runtime (a pod asking for
  it is refused, a runc pod runs).
"""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import VERSIONS
from tests.e2e.cri_support import cri_ready
from tests.e2e.node_install_support import (
    NODE_BIN_DIR,
    install_twice,
    installed_cri_containerd,
    run_installer,
    run_uninstall,
)
from tests.e2e.support import RUNTIME, SHIM_NAME, shim_processes, wait_until

from cri_client import CriError  # noqa: E402  (scripts/ is on sys.path via conftest)
from private_containerd import PrivateContainerd, bin_dir_for  # noqa: E402

pytestmark = pytest.mark.e2e

CRI_RUNTIME_PLUGIN = {"1.6": "io.containerd.grpc.v1.cri", "1.7": "io.containerd.grpc.v1.cri",
                      "2.1": "io.containerd.cri.v1.runtime"}


def _runtimes(config: dict[str, Any], plugin: str) -> dict[str, Any]:
    return config["plugins"][plugin]["containerd"]["runtimes"]


def _containerd(version: str) -> str:
    try:
        return str(bin_dir_for(version) / "containerd")
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"containerd {version} is not installed ({exc}); run scripts/setup.sh")


def _config_dump(version: str, config: Path) -> dict[str, Any]:
    """`containerd --config FILE config dump`: the config as that containerd loads it (migrated, defaults filled)."""
    result = subprocess.run([_containerd(version), "--config", str(config), "config", "dump"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"containerd {version} refused {config}: {result.stderr}"
    return tomllib.loads(result.stdout)


@pytest.mark.parametrize("version", VERSIONS)
def test_containerd_on_an_installed_config_runs_a_spin_pod(version: str, tmp_path_factory: pytest.TempPathFactory,
                                                           shim_cache_dir: Path) -> None:
    workdir = tmp_path_factory.mktemp(f"install-{version}")
    with installed_cri_containerd(version, workdir, shim_cache_dir) as (ctrd, client):
        runtimes = _runtimes(tomllib.loads(ctrd.config_path.read_text()), CRI_RUNTIME_PLUGIN[version])
        assert runtimes["spin"] == {"runtime_type": RUNTIME}  # the private config sets no runc SystemdCgroup
        assert runtimes["runc"]["runtime_type"] == "io.containerd.runc.v2"
        with client.pod("installed", runtime_handler="spin") as pod:
            assert ctrd.cni_network is not None and ctrd.cni_network.contains(pod.ip), pod.ip
            assert client.pod_status(pod.id).state == 0  # SANDBOX_READY
            assert client.pod_info(pod.id).get("runtimeType") == RUNTIME
            shims = shim_processes(ctrd)
            assert shims, "no containerd-shim-spin-v2 runs the pod's sandbox"
            # containerd found the shim through the installer's symlink (argv[1] of the script's interpreter).
            node_bin = str(workdir / NODE_BIN_DIR / SHIM_NAME)
            assert any(node_bin in Path(f"/proc/{pid}/cmdline").read_bytes().decode() for pid in shims)
        assert wait_until(lambda: not shim_processes(ctrd)), "the pod's shim outlived the pod"


@pytest.mark.parametrize("version", VERSIONS)
def test_containerd_accepts_its_own_default_config_once_installed(version: str, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    default = subprocess.run([_containerd(version), "config", "default"], capture_output=True, text=True,
                             timeout=60, check=True).stdout
    config.write_text(default)
    (tmp_path / "bin").mkdir()
    first = install_twice(config, tmp_path / "bin", containerd_version=version)
    assert f"ran `{_containerd(version)} --version`" in first.stdout.splitlines()[0]
    assert "SystemdCgroup = false (as runc's options say)" in first.stdout
    plugin = CRI_RUNTIME_PLUGIN[version]
    spin = _runtimes(_config_dump(version, config), plugin)["spin"]
    assert spin["runtime_type"] == RUNTIME
    assert spin["options"]["SystemdCgroup"] is False
    # Nothing but the runtime changed: the dump of the edited file is the dump of the default plus our runtime.
    default_file = tmp_path / "default.toml"
    default_file.write_text(default)
    dumped_default = _config_dump(version, default_file)
    dumped = _config_dump(version, config)
    del _runtimes(dumped, plugin)["spin"]
    for dump in (dumped, dumped_default):
        dump.pop("imports", None)  # containerd lists the loaded file itself there
    assert dumped == dumped_default


def test_containerd_2_migrates_an_installed_version_2_config(tmp_path: Path) -> None:
    """A node upgraded from 1.7 to 2.1 keeps its version 2 file; 2.1 moves our runtime to its new CRI plugin."""
    config = tmp_path / "config.toml"
    config.write_text(subprocess.run([_containerd("1.7"), "config", "default"], capture_output=True, text=True,
                                     timeout=60, check=True).stdout)
    (tmp_path / "bin").mkdir()
    install_twice(config, tmp_path / "bin", "--containerd-version", "2")
    dumped = _config_dump("2.1", config)
    assert dumped["version"] == 3
    assert _runtimes(dumped, "io.containerd.cri.v1.runtime")["spin"]["runtime_type"] == RUNTIME


def test_unparseable_config_fails_and_stays_byte_identical(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    original = b'version = 2\n[plugins."io.containerd.grpc.v1.cri"\nsandbox_image = "pause"\n'
    config.write_bytes(original)
    mtime = config.stat().st_mtime_ns
    (tmp_path / "bin").mkdir()
    result = run_installer(config, tmp_path / "bin")
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{SHIM_NAME} install: {config}: not valid TOML: ")
    assert "at line 2 col" in lines[0] and lines[0].endswith("; left unchanged")
    assert config.read_bytes() == original and config.stat().st_mtime_ns == mtime
    assert not (tmp_path / "bin" / SHIM_NAME).exists()


def _install_leftovers(config: Path) -> list[str]:
    """install's files beside the config (its backup and record); the config's directory is containerd's workdir."""
    return sorted(p.name for p in config.parent.iterdir() if p.name.startswith(config.name + "."))


@pytest.mark.parametrize("version", VERSIONS)
def test_uninstall_gives_the_node_back_and_containerd_runs_without_our_runtime(
        version: str, tmp_path_factory: pytest.TempPathFactory, shim_cache_dir: Path) -> None:
    workdir = tmp_path_factory.mktemp(f"uninstall-{version}")
    node_bin = workdir / NODE_BIN_DIR
    node_bin.mkdir()
    other_shim = node_bin / SHIM_NAME  # what the Rust containerd-shim-spin's installer leaves: an ELF of that name
    shutil.copy2("/bin/true", other_shim)
    other_bytes = other_shim.read_bytes()
    ctrd = PrivateContainerd(version, workdir, node_bin, debug=True, spin_runtime=False,
                             extra_env={"SPIN_SHIM_CACHE_DIR": str(shim_cache_dir)})
    config = ctrd.write_config()
    original = config.read_bytes()

    refused = run_installer(config, node_bin, containerd_version=version)
    assert refused.returncode == 1 and "--force" in refused.stderr, refused.stderr
    dry = run_installer(config, node_bin, "--force", "--dry-run", containerd_version=version)
    assert dry.returncode == 0 and "+++ " in dry.stdout, dry.stderr
    assert config.read_bytes() == original and other_shim.read_bytes() == other_bytes
    assert not _install_leftovers(config)

    install_twice(config, node_bin, "--force", containerd_version=version)
    try:
        ctrd.start(keep_config=True)
        with cri_ready(ctrd) as client, client.pod("installed", runtime_handler="spin") as pod:
            assert client.pod_info(pod.id).get("runtimeType") == RUNTIME
    finally:
        ctrd.stop()

    undone = run_uninstall(config)
    assert undone.returncode == 0, undone.stderr
    assert f"{config}: restored byte for byte from {config}.before-spin-install" in undone.stdout.splitlines()
    assert config.read_bytes() == original
    assert not other_shim.is_symlink() and other_shim.read_bytes() == other_bytes
    assert sorted(p.name for p in node_bin.iterdir()) == [SHIM_NAME]
    assert not _install_leftovers(config), "uninstall left its backup or record"
    try:
        ctrd.start(keep_config=True)
        with cri_ready(ctrd) as client:
            with pytest.raises(CriError, match='no runtime for "spin" is configured'):
                client.run_pod("after-uninstall", runtime_handler="spin")
            with client.pod("runc-after-uninstall") as pod:
                assert client.pod_status(pod.id).state == 0  # SANDBOX_READY
    finally:
        ctrd.stop()
