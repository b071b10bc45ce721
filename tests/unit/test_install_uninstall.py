"""`uninstall` reverts what `install` recorded: the config byte for byte while nobody changed it, only install's
runtime tables once the operator did, the binary install --force replaced put back, and nothing that is not its own.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import tomllib
from pathlib import Path

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shim.install import command, uninstall
from shim.install.command import NOTHING_CHANGED, RESTART_HINT, SHIM_BINARY_NAME
from shim.install.config_revert import hunks_of, remove_runtimes
from shim.install.containerd_config import RuntimeSettings, edit_config
from shim.install.install_record import RuntimeEntry
from tests.unit.test_node_install import HAND_WRITTEN, configs

DATA = Path(__file__).parent / "data"
SPIN = "io.containerd.spin.v2"


@pytest.fixture
def node(tmp_path: Path) -> dict[str, Path]:
    shim = tmp_path / "venv" / "bin" / SHIM_BINARY_NAME
    shim.parent.mkdir(parents=True)
    shim.write_text("#!/bin/sh\n")
    shim.chmod(0o755)
    (tmp_path / "bin").mkdir()
    config = tmp_path / "etc" / "config.toml"
    config.parent.mkdir()
    return {"config": config, "bin": tmp_path / "bin", "shim": shim, "link": tmp_path / "bin" / SHIM_BINARY_NAME}


def install(node: dict[str, Path], *extra: str) -> str:
    out, err = io.StringIO(), io.StringIO()
    status = command.main(["--config", str(node["config"]), "--bin-dir", str(node["bin"]), *extra],
                          shim_binary=node["shim"], out=out, err=err)
    assert (status, err.getvalue()) == (0, ""), out.getvalue()
    return out.getvalue()


def run_uninstall(node: dict[str, Path], *extra: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = uninstall.main(["--config", str(node["config"]), *extra], out=out, err=err)
    return status, out.getvalue(), err.getvalue()


def files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


@pytest.mark.parametrize("name", ["containerd-1.6-config-default.toml", "containerd-1.7-config-default.toml",
                                  "containerd-2.1-config-default.toml", "hand-written"])
def test_uninstall_puts_the_config_back_byte_for_byte(node: dict[str, Path], name: str) -> None:
    original = HAND_WRITTEN.encode() if name == "hand-written" else (DATA / name).read_bytes()
    node["config"].write_bytes(original)
    node["config"].chmod(0o640)
    install(node, "--containerd-version", "2" if "2.1" in name else "1")
    assert node["config"].read_bytes() != original
    status, out, err = run_uninstall(node)
    assert (status, err) == (0, "")
    assert node["config"].read_bytes() == original
    assert stat.S_IMODE(node["config"].stat().st_mode) == 0o640
    assert files(node["config"].parent) == ["config.toml"], "backup or record left behind"
    assert files(node["bin"]) == []
    assert out.splitlines() == [
        f"{node['config']}: restored byte for byte from {node['config']}.before-spin-install",
        f"removed {node['link']}",
        f"removed the install record {node['config']}.spin-install.json",
        RESTART_HINT,
    ]


def test_a_config_install_created_is_removed(node: dict[str, Path]) -> None:
    install(node, "--containerd-version", "2")
    assert tomllib.loads(node["config"].read_text())["version"] == 3
    status, out, _ = run_uninstall(node)
    assert status == 0 and f"{node['config']}: removed (install created it)" in out.splitlines()
    assert files(node["config"].parent) == []


def test_the_binary_install_force_replaced_is_put_back(node: dict[str, Path]) -> None:
    shutil.copy2("/bin/true", node["link"])
    original, inode = node["link"].read_bytes(), node["link"].stat().st_ino
    node["config"].write_text(HAND_WRITTEN)
    install(node, "--force", "--containerd-version", "1")
    status, out, _ = run_uninstall(node)
    assert status == 0
    assert f"put back {node['link']} from {node['link']}.before-spin-install (a file)" in out.splitlines()
    assert not node["link"].is_symlink() and node["link"].read_bytes() == original
    assert node["link"].stat().st_ino == inode and os.access(node["link"], os.X_OK)
    assert files(node["bin"]) == [SHIM_BINARY_NAME]


def test_after_the_operators_edit_only_our_table_goes(node: dict[str, Path]) -> None:
    node["config"].write_text(HAND_WRITTEN)
    install(node, "--containerd-version", "1")
    edited = node["config"].read_text().replace("pause:3.9", "pause:3.10") + "\n[metrics]\naddress = ':1338'\n"
    node["config"].write_text(edited)
    status, out, _ = run_uninstall(node)
    assert status == 0
    assert node["config"].read_text() == HAND_WRITTEN.replace("pause:3.9", "pause:3.10") + \
        "\n[metrics]\naddress = ':1338'\n"
    assert any("changed since install" in line and "removed only install's runtime table(s)" in line
               and "reversed install's own lines" in line for line in out.splitlines())
    assert files(node["config"].parent) == ["config.toml"]


def test_a_key_the_operator_added_inside_our_table_goes_with_it(node: dict[str, Path]) -> None:
    node["config"].write_text(HAND_WRITTEN)
    install(node, "--containerd-version", "1")
    text = node["config"].read_text().replace(f'runtime_type = "{SPIN}"\n',
                                              f'runtime_type = "{SPIN}"\npod_annotations = ["a"]\n')
    node["config"].write_text(text)
    status, out, _ = run_uninstall(node)
    assert status == 0 and "deleted the tables install added" in out
    assert tomllib.loads(node["config"].read_text()) == tomllib.loads(HAND_WRITTEN)


def test_a_table_the_operator_gave_another_runtime_type_stays(node: dict[str, Path]) -> None:
    node["config"].write_text(HAND_WRITTEN)
    install(node, "--containerd-version", "1")
    text = node["config"].read_text().replace(SPIN, "io.containerd.wasmtime.v1")
    node["config"].write_text(text)
    status, out, _ = run_uninstall(node)
    assert status == 0 and "it is the operator's now, left as it is" in out
    assert node["config"].read_text() == text
    assert files(node["bin"]) == []


def test_a_forced_runtime_type_is_put_back_after_the_operators_edit(node: dict[str, Path]) -> None:
    rust = 'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.spin]\n' \
           '  runtime_type = "io.containerd.spin.v1"   # the Rust shim\n'
    node["config"].write_text(rust)
    install(node, "--force", "--containerd-version", "1")
    node["config"].write_text("# edited by the operator\n" + node["config"].read_text())
    status, _, _ = run_uninstall(node)
    assert status == 0
    assert node["config"].read_text() == "# edited by the operator\n" + rust


def test_a_link_someone_replaced_since_is_left_alone(node: dict[str, Path], tmp_path: Path) -> None:
    shutil.copy2("/bin/true", node["link"])
    node["config"].write_text(HAND_WRITTEN)
    install(node, "--force", "--containerd-version", "1")
    node["link"].unlink()
    node["link"].symlink_to(tmp_path / "someone-elses")
    status, out, _ = run_uninstall(node)
    assert status == 0
    assert any(line.startswith(f"{node['link']} is no longer install's symlink") and
               f"still at {node['link']}.before-spin-install" in line for line in out.splitlines())
    assert os.readlink(node["link"]) == str(tmp_path / "someone-elses")
    assert (node["bin"] / f"{SHIM_BINARY_NAME}.before-spin-install").exists()


def test_a_second_install_after_the_operators_edit_is_reverted_too(node: dict[str, Path]) -> None:
    """The backup is no longer "this file minus ours" once install edited a file the operator had changed."""
    node["config"].write_text(HAND_WRITTEN)
    install(node, "--containerd-version", "1")
    node["config"].write_text(node["config"].read_text() + "\n[metrics]\naddress = ':1338'\n")
    edited = node["config"].read_bytes()
    out = install(node, "--containerd-version", "1", "--runtime-name", "spin-two")
    second_backup = node["config"].with_name("config.toml.before-spin-install.2")
    assert f"backed up {node['config']} to {second_backup}" in out.splitlines()
    assert second_backup.read_bytes() == edited
    status, out, _ = run_uninstall(node)
    assert status == 0 and "reversed install's own lines" in out
    assert node["config"].read_text() == HAND_WRITTEN + "\n[metrics]\naddress = ':1338'\n"
    assert files(node["config"].parent) == ["config.toml"]


def test_a_second_bin_dir_is_refused_while_the_first_link_is_ours(node: dict[str, Path], tmp_path: Path) -> None:
    node["config"].write_text(HAND_WRITTEN)
    install(node, "--containerd-version", "1")
    (tmp_path / "other-bin").mkdir()
    out, err = io.StringIO(), io.StringIO()
    status = command.main(["--config", str(node["config"]), "--bin-dir", str(tmp_path / "other-bin"),
                           "--containerd-version", "1"], shim_binary=node["shim"], out=out, err=err)
    assert status == 1 and f"install already put the shim at {node['link']}" in err.getvalue()
    assert files(tmp_path / "other-bin") == []


def test_dry_run_shows_the_diff_and_changes_nothing(node: dict[str, Path]) -> None:
    node["config"].write_text(HAND_WRITTEN)
    install(node, "--containerd-version", "1")
    before = {p.name: p.read_bytes() for p in node["config"].parent.iterdir()}
    status, out, _ = run_uninstall(node, "--dry-run")
    assert status == 0
    assert {p.name: p.read_bytes() for p in node["config"].parent.iterdir()} == before
    assert node["link"].is_symlink()
    lines = out.splitlines()
    assert lines[0] == uninstall.DRY_RUN_HEADER
    assert f"+++ {node['config']} (after uninstall)" in lines
    assert '-[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.spin]' in lines


def test_without_a_record_uninstall_does_nothing(node: dict[str, Path]) -> None:
    node["config"].write_text(HAND_WRITTEN)
    install(node, "--containerd-version", "1")
    assert run_uninstall(node)[0] == 0
    status, out, err = run_uninstall(node)
    assert (status, out) == (1, "") and "no install record" in err


def test_install_uninstall_install_is_the_same_install(node: dict[str, Path]) -> None:
    node["config"].write_text(HAND_WRITTEN)
    install(node, "--containerd-version", "1")
    first = node["config"].read_bytes()
    run_uninstall(node)
    install(node, "--containerd-version", "1")
    assert node["config"].read_bytes() == first
    assert install(node, "--containerd-version", "1").splitlines()[-1] == NOTHING_CHANGED


# ---- property: on any config install can edit, the revert takes back exactly install's lines ----------------------

@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs(), st.sampled_from([None, True, False]), st.sampled_from(["", "# the operator was here\n"]),
       st.sampled_from(["", "\n[zz_operator]\nkey = 1\n"]))
def test_revert_of_an_edit_gives_back_the_original_and_keeps_the_operators_lines(
        config: tuple[str, dict[str, Any], tuple[str, ...]], systemd: bool | None, head: str, tail: str) -> None:
    text, _, _ = config
    edit = edit_config(text, RuntimeSettings(systemd_cgroup=systemd))
    if not edit.changes:
        return
    previous = tomllib.loads(text)
    for key in edit.runtime_path:
        previous = previous.get(key) if isinstance(previous, dict) else None
    entry = RuntimeEntry(list(edit.runtime_path), edit.runtime_table, previous if isinstance(previous, dict) else None)
    operators = head + edit.text + (tail if edit.text.endswith("\n") else "")
    reverted, how = remove_runtimes(operators, [entry], [hunks_of(text, edit.text)], added_version=False)
    assert how == "reversed install's own lines"
    assert reverted == head + text + (tail if edit.text.endswith("\n") else "")
