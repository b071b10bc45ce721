"""NativeInstance's runc calls against a fake runc: what reaches runc (global flags, the cgroup driver, exec's
argv and process JSON), what a failure says, and that the one reaper (not subprocess) collects every runc exit.
Real runc is exercised by tests/e2e/test_native_containers.py."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any, Callable

import pytest

from shim.errors import FailedPrecondition, Internal, InvalidArgument, NotFound
from shim.process.reaper import Reaper
from shim.process.stdio import TaskStdio
from shim.runc.instance import NativeInstance

FAKE_RUNC = r"""#!/bin/sh
here=$(dirname "$0")
echo "$@" >> "$here/argv"
while [ "${1#--}" != "$1" ]; do  # the global flags
  case "$1" in
    --systemd-cgroup) shift ;;
    --log) log="$2"; shift 2 ;;
    *) shift 2 ;;
  esac
done
echo "$@" >> "$here/calls"
case "$1" in
  update) cat > "$here/stdin"; [ -e "$here/refuse-update" ] && { echo '{"level":"error","msg":"cpuset: invalid argument"}' >> "$log"; exit 1; } ;;
  kill) echo '{"level":"info","msg":"noise"}' >> "$log"
        echo '{"level":"error","msg":"container not running"}' >> "$log"; exit 1 ;;
  start) echo "not json" >> "$log"; echo "start refused on stderr" >&2; exit 1 ;;
  exec) cp "$3" "$here/process.json"
        while [ $# -gt 1 ]; do [ "$1" = --pid-file ] && pid_file="$2"; shift; done
        [ -e "$here/refuse-exec" ] && { echo '{"level":"error","msg":"exec failed: executable file not found in $PATH"}' >> "$log"; exit 1; }
        echo 4242 > "$pid_file" ;;
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


def with_instance(tmp_path: Path, body: Callable[[NativeInstance, Reaper], Any], *, systemd: bool = False) -> Any:
    """Run `body` on a loop whose reaper handles SIGCHLD, as in the daemon (awaiting it if it is a coroutine)."""
    bundle = tmp_path / "bundle"
    bundle.mkdir(exist_ok=True)

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        reaper = Reaper(loop)
        reaper.install()
        try:
            instance = NativeInstance("t1", bundle, "k8s.io", TaskStdio(), None, reaper, systemd_cgroup=systemd)
            result = body(instance, reaper)
            return await result if asyncio.iscoroutine(result) else result
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


def test_global_flags_are_the_runc_shims_root_and_log(fake_runc, tmp_path):
    with_instance(tmp_path, lambda instance, _reaper: instance.update({}))
    log = tmp_path / "bundle" / "log.json"
    assert (fake_runc / "argv").read_text().splitlines() == [
        f"--root /run/containerd/runc/k8s.io --log {log} --log-format json update --resources - t1"]


def test_systemd_cgroup_driver_adds_the_flag_runc_needs_to_read_a_slice_path(fake_runc, tmp_path):
    with_instance(tmp_path, lambda instance, _reaper: instance.update({}), systemd=True)
    assert (fake_runc / "argv").read_text().split()[:7] == [
        "--root", "/run/containerd/runc/k8s.io", "--log", str(tmp_path / "bundle" / "log.json"),
        "--log-format", "json", "--systemd-cgroup"]


def test_exec_runs_runc_exec_detached_with_the_process_as_json_and_returns_the_pid_file(fake_runc, tmp_path):
    process = {"args": ["sh", "-c", "echo hello"], "env": ["PATH=/bin"], "cwd": "/", "terminal": False,
               "user": {"uid": 0, "gid": 0}}

    async def body(instance: NativeInstance, _reaper: Reaper) -> int:
        return await instance.exec("probe-1", process, TaskStdio(), None)

    assert with_instance(tmp_path, body) == 4242
    bundle = tmp_path / "bundle"
    [call] = calls(fake_runc)
    argv = call.split()
    assert argv[:2] == ["exec", "--process"] and argv[3:] == [
        "--detach", "--pid-file", str(bundle / "probe-1.pid"), "t1"]
    assert json.loads((fake_runc / "process.json").read_text()) == process
    # Neither the process file nor the pid file is left in the bundle.
    assert sorted(p.name for p in bundle.iterdir()) == []


def test_exec_with_a_terminal_passes_the_console_socket(fake_runc, tmp_path):
    async def body(instance: NativeInstance, _reaper: Reaper) -> int:
        return await instance.exec("tty-1", {"args": ["sh"], "terminal": True}, TaskStdio(), "/tmp/pty/console.sock")

    with_instance(tmp_path, body)
    argv = calls(fake_runc)[0].split()
    assert argv[3:5] == ["--console-socket", "/tmp/pty/console.sock"] and argv[5] == "--detach"


def test_refused_exec_says_what_runc_logged(fake_runc, tmp_path):
    (fake_runc / "refuse-exec").touch()

    async def body(instance: NativeInstance, _reaper: Reaper) -> None:
        with pytest.raises(InvalidArgument, match=r"^runc exec failed: exec failed: executable file not found"):
            await instance.exec("e1", {"args": ["nope"]}, TaskStdio(), None)

    with_instance(tmp_path, body)
    assert sorted(p.name for p in (tmp_path / "bundle").iterdir()) == ["log.json"]


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
