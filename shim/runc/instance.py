"""A native Linux container (the CRI pause container, a sidecar) run by the node's runc.

Under Kubernetes the pod's RuntimeClass brings every container of the pod to this shim, so the
pause container must be a real process in the pod's namespaces: CRI keeps its Start pid and gives
the pod's other containers /proc/<that pid>/ns/{net,ipc,uts} (containerd
internal/cri/opts/spec_opts.go WithPodNamespaces). It is run the way containerd-shim-runc-v2 runs
it (go-runc): `runc create` with the task's stdio as fds 0/1/2, `runc start`, `runc kill`, `runc
update`, `runc delete --force`, with the runc shim's state root
(/run/containerd/runc/<namespace>) and `<bundle>/log.json` as runc's log. runc creates the cgroup
from the spec and removes it on delete; the shim only reads it (Stats, OOM, Pids).

Every runc is a child of the daemon, and the one reaper (shim/process/reaper.py) reaps it: runc is
spawned with posix_spawn (no subprocess.Popen, whose __del__ and wait() would call waitpid
behind the reaper's back) and watched at once. The container's init outlives `runc create` and
is re-parented to the daemon, a child subreaper, so the reaper reports its exit too. Exec (kubectl
exec, exec probes) is `runc exec --detach` the same way: the exec'd process outlives runc, is
re-parented to the daemon, and the same reaper reports its exit (shim/service/exec_process.py holds the
exec's lifecycle; this module only runs runc).
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

from shim.errors import FailedPrecondition, Internal, InvalidArgument, NotFound
from shim.kernel.cgroups import Cgroup, cgroup_pids, cgroup_stats
from shim.process.reaper import ExitStatus, Reaper
from shim.process.stdio import TaskStdio
from shim.runc.command import (
    RUNC_STATE_ROOT,
    exec_args,
    force_delete_args,
    global_args,
    runc_root,
)

__all__ = ["RUNC_STATE_ROOT", "NativeInstance", "Runc", "RuncFailed"]

#: `runc create` runs the container's setup (mounts, namespaces, cgroups); start, kill, update
#: and delete take tens of milliseconds; `runc exec` joins the namespaces and cgroup and execs,
#: and is given the runc shim's 30 s (its exec start context). Past these bounds runc is stuck.
_CREATE_TIMEOUT = 60.0
_EXEC_TIMEOUT = 30.0
_COMMAND_TIMEOUT = 10.0
#: What runc says (runc 1.1) when the container's init is gone or was never there:
#: containerd's runc shim maps the same strings to NotFound (pkg/process/utils.go checkKillError).
_NOT_RUNNING = ("container not running", "container does not exist", "no such process")
#: Restored to default in runc and so in the container: the daemon ignores SIGPIPE, and an
#: ignored signal survives execve (subprocess's restore_signals resets the same two).
_RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


class RuncFailed(Exception):
    """A runc command exited non-zero; the message is what runc said."""


class Runc:
    """The node's runc, invoked for one container with the runc shim's root and log."""

    def __init__(self, container_id: str, namespace: str, bundle: Path, reaper: Reaper,
                 *, systemd_cgroup: bool) -> None:
        binary = shutil.which("runc")
        if binary is None:
            raise FailedPrecondition(
                "runc was not found on the PATH of containerd (and so of this shim); install runc "
                "to run native containers such as the pod's pause container")
        self.container_id = container_id
        self.bundle = bundle
        self.log_path = bundle / "log.json"
        self._global_args = global_args(binary, runc_root(namespace), self.log_path,
                                        systemd_cgroup=systemd_cgroup)
        self._reaper = reaper

    async def create(self, bundle: Path, pid_file: Path, stdio: TaskStdio) -> None:
        """`runc create` with the task's stdio as the container's 0/1/2; runc's own error line
        goes there too, so `ctr run` and `kubectl logs` show it."""
        await self._run_async(
            ["create", "--bundle", str(bundle), "--pid-file", str(pid_file), self.container_id],
            [stdio.stdin, stdio.stdout, stdio.stderr], _CREATE_TIMEOUT)

    async def exec(self, process: dict[str, Any], pid_file: Path, fds: list[int | None],
                   console_socket: str | None) -> None:
        """`runc exec --process <json> --detach --pid-file <file> <id>` with the exec's stdio as
        runc's 0/1/2 (the exec'd process keeps them; runc's own error line goes there too, so
        `kubectl exec` shows it). The process JSON is a private file in the bundle for as long as
        runc reads it, as go-runc's temp file is."""
        fd, process_path = tempfile.mkstemp(prefix=".exec-process-", suffix=".json", dir=self.bundle)
        try:
            with os.fdopen(fd, "w") as process_file:
                json.dump(process, process_file)
            await self._run_async(exec_args(self.container_id, Path(process_path), pid_file, console_socket),
                                  fds, _EXEC_TIMEOUT)
        finally:
            try:
                os.unlink(process_path)
            except OSError:
                pass

    async def _run_async(self, args: list[str], fds: list[int | None], timeout: float) -> None:
        """A runc command whose exit the loop awaits (create and exec can take a while, and the
        daemon keeps answering meanwhile)."""
        log_offset = self._log_size()
        pid, exited = self._spawn(args, fds)
        try:
            status = await asyncio.wait_for(asyncio.shield(exited), timeout)
        except asyncio.TimeoutError:
            _kill_quietly(pid)
            await exited
            raise RuncFailed(f"runc {args[0]} did not finish within {timeout:.0f} s") from None
        if status.code != 0:
            raise RuncFailed(self._failure(args[0], status, log_offset, b""))

    def run(self, *args: str, stdin: bytes = b"") -> None:
        """A short runc command, run to its end. It blocks the loop for the tens of milliseconds
        runc takes, because the Instance methods that call it (start, kill, update, release)
        are synchronous; the exit is still collected by the reaper."""
        log_offset = self._log_size()
        err_r, err_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        in_r, in_w = os.pipe2(os.O_CLOEXEC) if stdin else (None, None)
        try:
            pid, exited = self._spawn(list(args), [in_r, None, err_w])
        except BaseException:
            _close(err_r, in_w)
            raise
        finally:
            _close(err_w, in_r)
        try:
            if in_w is not None:
                try:
                    os.write(in_w, stdin)  # runc reads all of stdin; a few KiB at most
                except BrokenPipeError:
                    pass  # runc failed before reading; its exit status and log say why
                _close(in_w)
                in_w = None
            status = self._wait_blocking(pid, exited, args[0])
            stderr = _read_available(err_r)
        finally:
            _close(err_r, in_w)
        if status.code != 0:
            raise RuncFailed(self._failure(args[0], status, log_offset, stderr))

    def _spawn(self, args: list[str], fds: list[int | None]) -> tuple[int, asyncio.Future[ExitStatus]]:
        """posix_spawn runc with `fds` as its 0/1/2 (None: /dev/null) and watch it before the
        loop can handle its SIGCHLD."""
        actions: list[tuple] = []
        for target, source in enumerate(fds):
            if source is None:
                actions.append((os.POSIX_SPAWN_OPEN, target, os.devnull, os.O_RDWR, 0))
            else:
                actions.append((os.POSIX_SPAWN_DUP2, source, target))
        argv = self._global_args + args
        try:
            pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions,
                                 setsigmask=(), setsigdef=_RESET_SIGNALS)
        except OSError as exc:
            raise RuncFailed(f"cannot run {argv[0]}: {exc.strerror}") from None
        return pid, self._reaper.watch(pid)

    def _wait_blocking(self, pid: int, exited: asyncio.Future[ExitStatus], command: str) -> ExitStatus:
        """Wait on a pidfd (which does not reap), then let the reaper collect the exit now:
        the loop is blocked, so its SIGCHLD handler cannot run before we return."""
        pidfd = os.pidfd_open(pid)
        try:
            finished = bool(select.select([pidfd], [], [], _COMMAND_TIMEOUT)[0])
            if not finished:
                _kill_quietly(pid)
                select.select([pidfd], [], [])
        finally:
            os.close(pidfd)
        self._reaper.reap()
        if not finished:
            raise RuncFailed(f"runc {command} did not finish within {_COMMAND_TIMEOUT:.0f} s")
        return exited.result()

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def _failure(self, command: str, status: ExitStatus, log_offset: int, stderr: bytes) -> str:
        """What runc said: its last error in log.json since the command started (runc writes
        every fatal error there), else its stderr, else the exit status."""
        said = _last_logged_error(self.log_path, log_offset) or \
            stderr.decode("utf-8", "replace").strip() or f"exit status {status.code}"
        return said if said.startswith("runc ") else f"runc {command} failed: {said}"


class NativeInstance:
    """A task run as a Linux container by runc: its pid is the container's init."""

    #: A Linux container can run more processes: Exec is supported (shim/service/exec_process.py).
    exec_refusal: str | None = None

    def __init__(self, task_id: str, bundle: Path, namespace: str, stdio: TaskStdio,
                 cgroup: Cgroup | None, reaper: Reaper, *, systemd_cgroup: bool) -> None:
        self._task_id = task_id
        self._bundle = bundle
        self._stdio = stdio
        self._cgroup = cgroup
        self._runc = Runc(task_id, namespace, bundle, reaper, systemd_cgroup=systemd_cgroup)
        self._reaper = reaper
        self._runc_state = False
        self._oom_count_at_start = 0
        self.pid = 0
        self.exited: asyncio.Future[ExitStatus]  # the reaper's, set once the init exists

    async def create(self) -> int:
        pid_file = self._bundle / "init.pid"
        self._runc_state = True  # a failed create may leave state for release to delete
        try:
            await self._runc.create(self._bundle, pid_file, self._stdio)
        except RuncFailed as exc:
            raise InvalidArgument(str(exc)) from None
        finally:
            self._stdio.close()  # runc's init holds its own copies now
        try:
            self.pid = int(pid_file.read_text())
        except (OSError, ValueError) as exc:
            raise Internal(f"runc created {self._task_id} but its pid file is unreadable: {exc}") from None
        self.exited = self._reaper.watch(self.pid)
        if self._cgroup is not None:
            self._oom_count_at_start = self._cgroup.oom_kill_count()
        return self.pid

    def start(self) -> int:
        try:
            self._runc.run("start", self._task_id)
        except RuncFailed as exc:
            raise Internal(str(exc)) from None
        return self.pid

    async def exec(self, exec_id: str, process: dict[str, Any], stdio: TaskStdio,
                   console_socket: str | None) -> int:
        """Run one exec process in the container; returns its pid (re-parented to the daemon,
        not yet watched: the caller watches it once it has said it started)."""
        pid_file = self._bundle / f"{exec_id}.pid"
        try:
            await self._runc.exec(process, pid_file, [stdio.stdin, stdio.stdout, stdio.stderr], console_socket)
        except RuncFailed as exc:
            raise InvalidArgument(str(exc)) from None
        try:
            return int(pid_file.read_text())
        except (OSError, ValueError) as exc:
            raise Internal(f"runc exec'd in {self._task_id} but its pid file is unreadable: {exc}") from None
        finally:
            try:
                pid_file.unlink()
            except OSError:
                pass

    def kill(self, sig: int, all_processes: bool) -> None:
        args = ["kill", *(["--all"] if all_processes else []), self._task_id, str(int(sig))]
        try:
            self._runc.run(*args)
        except RuncFailed as exc:
            if any(phrase in str(exc) for phrase in _NOT_RUNNING):
                raise NotFound(f"{self._task_id}: process already finished") from None
            raise Internal(str(exc)) from None

    def pids(self) -> list[int]:
        return cgroup_pids(self._cgroup, self.pid, self.exited)

    def stats(self) -> tuple[str, bytes]:
        return cgroup_stats(self._cgroup, self._task_id)

    def update(self, resources: dict) -> None:
        try:
            self._runc.run("update", "--resources", "-", self._task_id,
                           stdin=json.dumps(resources).encode())
        except RuncFailed as exc:
            raise InvalidArgument(str(exc)) from None

    def oom_killed(self) -> bool:
        return self._cgroup is not None and self._cgroup.oom_kill_count() > self._oom_count_at_start

    def release(self) -> list[str]:
        """`runc delete --force`: kills what is left, removes runc's state and the cgroup. The
        caller unmounts the rootfs only after this, while no container process can use it."""
        self._stdio.close()
        problems: list[str] = []
        if self._runc_state:
            try:  # --force also succeeds for a container a failed create never recorded
                self._runc.run(*force_delete_args(self._task_id))
            except RuncFailed as exc:
                problems.append(str(exc))
            self._runc_state = False
        if self._cgroup is not None:
            problems.extend(self._cgroup.remove())  # normally runc removed it already
        return problems


def _last_logged_error(log_path: Path, offset: int) -> str | None:
    try:
        with open(log_path, "rb") as log:
            log.seek(offset)
            lines = log.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal") and entry.get("msg"):
            return str(entry["msg"])
    return None


def _read_available(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return b""


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _close(*fds: int | None) -> None:
    for fd in fds:
        if fd is not None:
            os.close(fd)
