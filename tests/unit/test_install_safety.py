"""`install` on a node that already has things of its own: what it refuses without --force, what it keeps as
backups, how it says which containerd it asked, what --dry-run shows (and that it writes nothing), and that a
second run changes nothing. The containerd binaries are the real ones (1.6 from Debian, 2.1 from
scripts/install_containerd.sh); the "Rust shim" is a real ELF binary copied to the shim's name.
"""

from __future__ import annotations

import difflib
import io
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from shim.install.command import DRY_RUN_HEADER, NOTHING_CHANGED, SHIM_BINARY_NAME, main

DATA = Path(__file__).parent / "data"
CONTAINERD_2_1_BIN = Path("/var/cache/containerd-shim-spin-test/containerd/2.1/usr/bin")
SPIN = "io.containerd.spin.v2"


@pytest.fixture
def node(tmp_path: Path) -> dict[str, Path]:
    """A node: /etc/containerd/config.toml (1.7's `config default`, mode 0600), a bin dir, and an executable
    standing in for this venv's console script (what install links to)."""
    shim = tmp_path / "venv" / "bin" / SHIM_BINARY_NAME
    shim.parent.mkdir(parents=True)
    shim.write_text("#!/bin/sh\n# from shim.cli.main import main\n")
    shim.chmod(0o755)
    (tmp_path / "bin").mkdir()
    config = tmp_path / "etc" / "containerd" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text((DATA / "containerd-1.7-config-default.toml").read_text())
    config.chmod(0o600)
    return {"config": config, "bin": tmp_path / "bin", "shim": shim, "link": tmp_path / "bin" / SHIM_BINARY_NAME}


def install(node: dict[str, Path], *extra: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(["--config", str(node["config"]), "--bin-dir", str(node["bin"]), *extra],
                  shim_binary=node["shim"], out=out, err=err)
    return status, out.getvalue(), err.getvalue()


def snapshot(*dirs: Path) -> dict[str, tuple[bytes, int, str | None]]:
    """Every entry of the node's directories: content (or symlink target), mode, mtime."""
    seen = {}
    for directory in dirs:
        for path in sorted(directory.rglob("*")):
            info = path.lstat()
            content = os.readlink(path).encode() if path.is_symlink() else path.read_bytes() if path.is_file() else b""
            seen[str(path)] = (content, info.st_mode, str(info.st_mtime_ns))
    return seen


def rust_shim_binary(link: Path) -> bytes:
    """A real ELF executable at the shim's name, as the Rust containerd-shim-spin's installer leaves it."""
    shutil.copy2("/bin/true", link)
    return link.read_bytes()


# ---- the binary at <bin-dir>/containerd-shim-spin-v2 --------------------------------------------------------------

def test_a_foreign_binary_at_the_shims_name_is_refused_and_nothing_changes(node: dict[str, Path]) -> None:
    original = rust_shim_binary(node["link"])
    before = snapshot(node["config"].parent, node["bin"])
    status, out, err = install(node)
    assert (status, out) == (1, "")
    assert f"{node['link']} is a file, not this package's shim" in err and "--force" in err
    assert snapshot(node["config"].parent, node["bin"]) == before
    assert node["link"].read_bytes() == original


@pytest.mark.parametrize("target", ["/usr/bin/true", "dangling"])
def test_a_foreign_symlink_at_the_shims_name_is_refused(node: dict[str, Path], tmp_path: Path, target: str) -> None:
    node["link"].symlink_to(tmp_path / target if target == "dangling" else target)
    status, _, err = install(node)
    assert status == 1 and "a symlink to" in err and "--force" in err
    assert os.readlink(node["link"]) != str(node["shim"])


def test_force_replaces_it_and_keeps_it_as_a_backup_with_its_inode(node: dict[str, Path]) -> None:
    original = rust_shim_binary(node["link"])
    inode = node["link"].stat().st_ino
    status, out, err = install(node, "--force")
    assert (status, err) == (0, "")
    backup = node["bin"] / f"{SHIM_BINARY_NAME}.before-spin-install"
    assert f"kept the replaced {node['link']} as {backup}" in out.splitlines()
    assert os.readlink(node["link"]) == str(node["shim"])
    assert backup.read_bytes() == original and backup.stat().st_ino == inode
    assert os.access(backup, os.X_OK)


def test_force_never_overwrites_an_earlier_backup(node: dict[str, Path], tmp_path: Path) -> None:
    rust_shim_binary(node["link"])
    assert install(node, "--force")[0] == 0
    backup = node["bin"] / f"{SHIM_BINARY_NAME}.before-spin-install"
    first = backup.read_bytes()
    node["link"].unlink()
    node["link"].symlink_to(tmp_path / "another")
    status, _, err = install(node, "--force")
    assert status == 1 and f"{backup} already exists" in err
    assert backup.read_bytes() == first


def test_a_symlink_to_another_install_of_this_package_is_an_upgrade(node: dict[str, Path], tmp_path: Path) -> None:
    older = tmp_path / "old-venv" / "bin" / SHIM_BINARY_NAME
    older.parent.mkdir(parents=True)
    older.write_text("#!/old/python\nimport sys\nfrom shim.cli.main import main\nsys.exit(main())\n")
    node["link"].symlink_to(older)
    status, out, _ = install(node)
    assert status == 0
    assert f"replaced {node['link']} (a symlink to {older}) by a symlink to {node['shim']}" in out.splitlines()
    assert not (node["bin"] / f"{SHIM_BINARY_NAME}.before-spin-install").exists()  # ours: no backup needed


# ---- the config ---------------------------------------------------------------------------------------------------

def test_config_is_backed_up_with_its_mode_before_the_first_edit(node: dict[str, Path]) -> None:
    original = node["config"].read_bytes()
    status, out, _ = install(node)
    backup = node["config"].with_name("config.toml.before-spin-install")
    assert status == 0 and f"backed up {node['config']} to {backup}" in out.splitlines()
    assert backup.read_bytes() == original
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600  # a config may hold registry credentials
    record = json.loads(node["config"].with_name("config.toml.spin-install.json").read_text())
    assert record["config_backup"] == str(backup) and record["binary_target"] == str(node["shim"])
    assert stat.S_IMODE(node["config"].with_name("config.toml.spin-install.json").stat().st_mode) == 0o600


OTHER_RUNTIME = """\
version = 2
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.spin]
  runtime_type = "io.containerd.spin.v1"   # the Rust shim, under the same handler name
"""


def test_another_runtime_type_under_our_name_is_refused_without_force(node: dict[str, Path]) -> None:
    node["config"].write_text(OTHER_RUNTIME)
    status, out, err = install(node)
    assert (status, out) == (1, "")
    assert "already has runtime_type = 'io.containerd.spin.v1'" in err and "--force" in err
    assert "--runtime-name" in err
    assert node["config"].read_text() == OTHER_RUNTIME
    assert not node["link"].exists()


def test_force_replaces_the_runtime_type_and_keeps_the_rest(node: dict[str, Path]) -> None:
    node["config"].write_text(OTHER_RUNTIME)
    status, out, _ = install(node, "--force")
    assert status == 0 and "(was 'io.containerd.spin.v1')" in out
    assert node["config"].read_text() == OTHER_RUNTIME.replace('"io.containerd.spin.v1"', f'"{SPIN}"')
    assert node["config"].with_name("config.toml.before-spin-install").read_text() == OTHER_RUNTIME


def test_another_runtime_name_needs_no_force(node: dict[str, Path]) -> None:
    node["config"].write_text(OTHER_RUNTIME)
    assert install(node, "--runtime-name", "spin-python")[0] == 0
    assert 'runtimes.spin]\n  runtime_type = "io.containerd.spin.v1"' in node["config"].read_text()


# ---- which containerd ---------------------------------------------------------------------------------------------

def test_it_says_which_containerd_it_ran_and_what_it_printed(node: dict[str, Path]) -> None:
    printed = subprocess.run(["/usr/bin/containerd", "--version"], capture_output=True, text=True,
                             check=True).stdout.strip()
    status, out, _ = install(node)
    assert status == 0
    assert out.splitlines()[0] == ("containerd version: containerd 1.x (ran `/usr/bin/containerd --version`, "
                                   f"which printed {printed!r})")


def test_the_containerd_on_path_is_named_and_warned_about_a_2x_config(node: dict[str, Path],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-empty file's own `version` decides the schema; a containerd 1.x on PATH gets a warning, since the file
    was unreadable for it before install (and PATH may name another containerd than the service's)."""
    if not (CONTAINERD_2_1_BIN / "containerd").exists():
        pytest.skip("containerd 2.1 not unpacked (scripts/install_containerd.sh)")
    node["config"].write_text((DATA / "containerd-2.1-config-default.toml").read_text())
    monkeypatch.setenv("PATH", f"{CONTAINERD_2_1_BIN}:/usr/bin")
    status, out, _ = install(node)
    assert status == 0 and f"ran `{CONTAINERD_2_1_BIN / 'containerd'} --version`" in out.splitlines()[0]
    assert "containerd 2.x" in out.splitlines()[0]
    assert "warning" not in out
    monkeypatch.setenv("PATH", "/usr/bin")  # now Debian's 1.6 would read this version 3 file
    status, out, _ = install(node)
    assert status == 0 and "ran `/usr/bin/containerd --version`" in out.splitlines()[0]
    assert "warning: `version = 3` is a containerd 2.x config, but the containerd found is 1.x" in out
    status, _, err = install(node, "--containerd-version", "1")  # the operator's word is enforced
    assert status == 1 and "containerd 1.x cannot read" in err


def test_without_containerd_on_path_it_says_so_and_wants_the_flag(node: dict[str, Path], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-empty version 2 file too: before, it was edited for 1.x without a word."""
    before = snapshot(node["config"].parent, node["bin"])
    monkeypatch.setenv("PATH", str(tmp_path / "no-containerd-here"))
    status, out, err = install(node)
    assert (status, out) == (1, "")
    assert "`containerd` is not on PATH" in err and "pass --containerd-version 1|2" in err
    assert snapshot(node["config"].parent, node["bin"]) == before
    status, out, _ = install(node, "--containerd-version", "1")
    assert status == 0
    assert out.splitlines()[0] == ("containerd version: containerd 1.x (from --containerd-version 1; "
                                   "`containerd --version` not run)")


# ---- --dry-run and idempotence ------------------------------------------------------------------------------------

def test_dry_run_prints_every_change_and_the_diff_and_writes_nothing(node: dict[str, Path]) -> None:
    rust_shim_binary(node["link"])
    before = snapshot(node["config"].parent, node["bin"])
    status, out, err = install(node, "--force", "--dry-run")
    assert (status, err) == (0, "")
    assert snapshot(node["config"].parent, node["bin"]) == before
    lines = out.splitlines()
    assert lines[0] == DRY_RUN_HEADER
    assert f"[dry run] kept the replaced {node['link']} as {node['link']}.before-spin-install" in lines
    assert f"[dry run] backed up {node['config']} to {node['config']}.before-spin-install" in lines
    assert f"--- {node['config']}" in lines and f"+++ {node['config']} (after install)" in lines
    printed_diff = lines[lines.index(f"--- {node['config']}"):]
    # The diff is exactly what the real run writes.
    assert install(node, "--force")[0] == 0
    real_diff = difflib.unified_diff(before[str(node["config"])][0].decode().splitlines(),
                                     node["config"].read_text().splitlines(), fromfile=str(node["config"]),
                                     tofile=f"{node['config']} (after install)", lineterm="")
    assert printed_diff == list(real_diff)
    assert any(line.startswith("+") and "runtimes.spin]" in line for line in printed_diff)


def test_dry_run_of_a_refused_install_fails_the_same_way(node: dict[str, Path]) -> None:
    rust_shim_binary(node["link"])
    status, out, err = install(node, "--dry-run")
    assert (status, out) == (1, "") and "--force" in err


def test_second_install_changes_nothing_and_says_so(node: dict[str, Path]) -> None:
    rust_shim_binary(node["link"])
    assert install(node, "--force")[0] == 0
    after_first = snapshot(node["config"].parent, node["bin"])
    for extra in ((), ("--force",)):
        status, out, err = install(node, *extra)
        assert (status, err) == (0, "")
        assert out.splitlines()[-1] == NOTHING_CHANGED
        assert f"{node['link']} already points to {node['shim']}: unchanged" in out.splitlines()
        assert snapshot(node["config"].parent, node["bin"]) == after_first


def test_dry_run_of_a_done_install_shows_no_diff(node: dict[str, Path]) -> None:
    assert install(node)[0] == 0
    status, out, _ = install(node, "--dry-run")
    assert status == 0 and not [line for line in out.splitlines() if line.startswith(("---", "+++", "@@"))]
