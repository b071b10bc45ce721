"""NativeInstance's runc calls against a fake runc: what reaches runc, what a failure says, and that
the one reaper (not subprocess) collects every runc exit. Real runc is exercised by
tests/e2e/test_native_containers.py."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any, Callable

import pytest

from shim.errors import FailedPrecondition, Internal, InvalidArgument, NotFound
from shim.native_instance import NativeInstance
from shim.reaper import Reaper
from shim.stdio import TaskStdio

FAKE_RUNC = """#!/bin/sh
log="$4"; shift 6
here=$(dirname "$0")
echo "$@" >> "$here/calls"
case "$1" in
  update) cat > "$here/stdin"; [ -e "$here/refuse-update" ] && { echo '{"level":"error","msg":"cpuset: invalid argument"}' >> "$log"; exit 1; } ;;
  kill) echo '{"level":"info","msg":"noise"}' >> "$log"
        echo '{"level":"error","msg":"container not running"}' >> "$log"; exit 1 ;;
  start) echo "not json" >> "$log"; echo "start refused on stderr" >&2; exit 1 ;;
esac
exit 0
"""


@pytest.fixture
def fake_runc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    runc = bin_dir / "runc"
    runc.write_text(FAKE_RUNC)
    runc.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return bin_dir


def with_instance(tmp_path: Path, body: Callable[[NativeInstance, Reaper], Any]) -> Any:
    """Run `body` on a loop whose reaper handles SIGCHLD, as in the daemon."""
    bundle = tmp_path / "bundle"
    bundle.mkdir(exist_ok=True)

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        reaper = Reaper(loop)
        reaper.install()
        try:
            instance = NativeInstance("t1", bundle, "k8s.io", TaskStdio(), None, reaper, systemd_cgroup=False)
            return body(instance, reaper)
        finally:
            loop.remove_signal_handler(signal.SIGCHLD)

    return asyncio.run(main())


def calls(fake_runc: Path) -> list[str]:
    return (fake_runc / "calls").read_text().splitlines()


def test_kill_of_a_stopped_container_is_not_found(fake_runc, tmp_path):
    def body(instance: NativeInstance, _reaper: Reaper) -> None:
        with pytest.raises(NotFound, match="process already finished"):
            instance.kill(signal.SIGTERM, True)

    with_instance(tmp_path, body)
    assert calls(fake_runc) == ["kill --all t1 15"]


def test_a_failure_says_what_runc_said_on_stderr_when_its_log_has_no_new_error(fake_runc, tmp_path):
    def body(instance: NativeInstance, _reaper: Reaper) -> None:
        with pytest.raises(NotFound):
            instance.kill(signal.SIGKILL, False)  # leaves an older error in log.json
        with pytest.raises(Internal, match="^runc start failed: start refused on stderr$"):
            instance.start()

    with_instance(tmp_path, body)


def test_update_sends_the_resources_as_json_on_stdin(fake_runc, tmp_path):
    resources = {"memory": {"limit": 67108864}, "cpu": {"shares": 512}}
    with_instance(tmp_path, lambda instance, _reaper: instance.update(resources))
    assert calls(fake_runc) == ["update --resources - t1"]
    assert json.loads((fake_runc / "stdin").read_text()) == resources


def test_refused_update_is_invalid_argument_with_runcs_logged_error(fake_runc, tmp_path):
    (fake_runc / "refuse-update").touch()

    def body(instance: NativeInstance, _reaper: Reaper) -> None:
        with pytest.raises(InvalidArgument, match="^runc update failed: cpuset: invalid argument$"):
            instance.update({"cpu": {"cpus": "4095"}})

    with_instance(tmp_path, body)


def test_every_runc_exit_is_collected_by_the_reaper(fake_runc, tmp_path):
    def body(instance: NativeInstance, reaper: Reaper) -> None:
        for _ in range(3):
            instance.update({})
        reaper.reap()  # nothing is left for it either
        # No runc exit is left unreaped: no child of ours is a zombie. (Other children of this process, such as a
        # session-wide registry of the e2e tests, may exist and run: waitpid(-1) cannot tell them apart.)
        assert [pid for pid in _children() if _state(pid) == "Z"] == []

    with_instance(tmp_path, body)


def test_missing_runc_is_a_failed_precondition_that_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FailedPrecondition, match="runc was not found"):
        with_instance(tmp_path, lambda instance, _reaper: None)


def _children() -> list[int]:
    pids = []
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as handle:
            pids += [int(pid) for pid in handle.read().split()]
    return pids


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"
