"""`containerd-shim-spin-v2 delete` after a daemon died: a native task's runc container is force-deleted with the
root and cgroup driver the daemon used (from the bundle state), against a fake runc; a Wasm task's never is."""

from __future__ import annotations

from pathlib import Path

import pytest

from proto.containerd.task.v2 import shim_pb2
from shim.cli.delete import run_delete
from shim.cli.flags import Flags
from shim.service.bundle_state import TASK_STATE_FILE, write_task_state

FAKE_RUNC = """#!/bin/sh
echo "$@" >> "$(dirname "$0")/argv"
[ -e "$(dirname "$0")/refuse" ] && { echo "runc: permission denied" >&2; echo "noise on stdout"; exit 1; }
exit 0
"""


@pytest.fixture
def fake_runc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "runc").write_text(FAKE_RUNC)
    (bin_dir / "runc").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return bin_dir


def _bundle(tmp_path: Path, *, runc_root: str | None, systemd: bool = False) -> Path:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    # pid 0: no instance process to kill, so only the runc step is under test.
    write_task_state(bundle, pid=0, cgroups_path=None, systemd_cgroup=systemd, rootfs=None, runc_root=runc_root)
    return bundle


def _delete(bundle: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> tuple[shim_pb2.DeleteResponse, str]:
    assert run_delete(Flags(namespace="k8s.io", id="c1", bundle=str(bundle), action="delete")) == 0
    captured = capsysbinary.readouterr()
    return shim_pb2.DeleteResponse.FromString(captured.out), captured.err.decode()


def test_native_task_is_force_deleted_by_runc_with_the_daemons_root(fake_runc, tmp_path, capsysbinary):
    bundle = _bundle(tmp_path, runc_root="/run/containerd/runc/k8s.io")
    response, errors = _delete(bundle, capsysbinary)
    assert (fake_runc / "argv").read_text().splitlines() == [
        f"--root /run/containerd/runc/k8s.io --log {bundle / 'log.json'} --log-format json delete --force c1"]
    assert response.exit_status == 137 and errors == ""
    assert not (bundle / TASK_STATE_FILE).exists()


def test_systemd_cgroup_driver_is_passed_to_runc_delete(fake_runc, tmp_path, capsysbinary):
    _delete(_bundle(tmp_path, runc_root="/run/containerd/runc/k8s.io", systemd=True), capsysbinary)
    assert "--systemd-cgroup delete --force c1" in (fake_runc / "argv").read_text()


def test_wasm_task_never_calls_runc(fake_runc, tmp_path, capsysbinary):
    _delete(_bundle(tmp_path, runc_root=None), capsysbinary)
    assert not (fake_runc / "argv").exists()


def test_a_refused_runc_delete_is_a_warning_and_never_reaches_the_response(fake_runc, tmp_path, capsysbinary):
    (fake_runc / "refuse").touch()
    response, errors = _delete(_bundle(tmp_path, runc_root="/run/containerd/runc/k8s.io"), capsysbinary)
    assert response.exit_status == 137  # runc's stdout did not corrupt the DeleteResponse
    assert "runc delete --force c1 failed: runc: permission denied" in errors
