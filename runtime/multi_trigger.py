"""An app with several trigger types (``[[trigger.http]]`` and ``[[trigger.redis]]``, ...): each type served by
its own process, all of them supervised by the instance process.

Spin runs every trigger type of an app side by side and ends the app when the first one ends (containerd-shim-spin
``run_trigger``: ``select_all`` over the triggers; ``spin up`` starts a process per trigger type and stops the
others when one exits). Here each loaded part (an HttpApp, a RedisApp, any object with ``run``/``interrupt``/
``close``) runs in a child forked at task Start, because the parts' process models do not mix in one process: the
HTTP part forks its workers (and serves with one worker inline), which must happen before any thread exists,
while the Redis part runs a thread per subscription and an epoch-ticker thread. Forking each part from the
still single-threaded instance process keeps both models exactly as they are for a pure http or redis app; the
cost is one process per part, paid only by mixed apps.

Supervision follows runtime.http.workers: SIGTERM is passed to every part, each drains as it would alone, and
the exit status is the first non-zero one; a part that ends by itself (its own failure) is logged, the others are
stopped, and its status becomes the task's, so the pod's restart policy decides. Parts die with the supervisor
(PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import math
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_PR_SET_PDEATHSIG = 1
#: Seconds the parts get to drain after SIGTERM before they are killed: their own drain grace (25 s) and a margin.
STOP_GRACE = 30.0


@dataclass
class _Child:
    trigger_type: str
    pid: int
    pidfd: int
    status: int | None = None


class MultiTriggerApp:
    """The loaded parts of one app, one per trigger type, in manifest order; ``run`` serves them all."""

    serves_in_main_thread = True

    def __init__(self, parts: Sequence[tuple[str, Any]], *, stop_grace: float = STOP_GRACE, log_fd: int = 2) -> None:
        self.parts = list(parts)
        self.description = "; ".join(part.description for _, part in self.parts)
        self.loads = tuple(load for _, part in self.parts for load in part.loads)
        self._stop_grace = stop_grace
        self._log_fd = log_fd
        self._interrupted = False
        self._children: list[_Child] = []
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._supervisor_pid = os.getpid()

    def run(self) -> int:
        try:
            if self._interrupted:
                return 0
            if threading.active_count() > 1:  # a fork would copy locks other threads may hold
                self._log(f"spin: warning: {threading.active_count() - 1} thread(s) running before the triggers fork")
            sys.stdout.flush()
            sys.stderr.flush()
            try:
                for index, (trigger_type, _) in enumerate(self.parts):
                    pid = os.fork()
                    if pid == 0:
                        self._child(index)  # never returns
                    self._children.append(_Child(trigger_type, pid, os.pidfd_open(pid)))
            except OSError:
                for child in self._children:  # no half-started app is left behind
                    _kill(child.pid, signal.SIGKILL)
                    os.waitpid(child.pid, 0)
                raise
            return self._supervise()
        finally:
            for child in self._children:
                _close(child.pidfd)
            self.close()

    def interrupt(self) -> None:
        """SIGTERM: every part drains as it would alone; ``run`` returns when all have. Signal-safe."""
        self._interrupted = True
        wake = self._wake_w
        if wake >= 0:
            try:
                os.write(wake, b"t")
            except OSError:
                pass

    def close(self) -> None:
        for _, part in self.parts:
            part.close()
        wake_r, wake_w = self._wake_r, self._wake_w
        self._wake_r = self._wake_w = -1
        for fd in (wake_r, wake_w):
            _close(fd)

    def __enter__(self) -> MultiTriggerApp:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------- supervisor

    def _supervise(self) -> int:
        poller = select.poll()
        by_fd = {child.pidfd: child for child in self._children}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        exit_status: int | None = None
        stopping = False
        kill_at = math.inf
        while any(child.status is None for child in self._children):
            if self._interrupted and not stopping:
                stopping = True
                kill_at = time.monotonic() + self._stop_grace
                self._signal_all(signal.SIGTERM)
            timeout = None if kill_at == math.inf else max(0, int((kill_at - time.monotonic()) * 1000))
            for fd, _ in poller.poll(timeout):
                if fd == self._wake_r:
                    _drain(fd)
                    continue
                child = by_fd[fd]
                poller.unregister(fd)
                _, status = os.waitpid(child.pid, 0)
                child.status = status
                how, code = _describe_exit(status)
                if not stopping:
                    self._log(f"spin: the {child.trigger_type} trigger {how}; stopping the other trigger(s)")
                    exit_status = code or 1
                    self.interrupt()
                elif code != 0 and exit_status is None:
                    exit_status = code
            if time.monotonic() >= kill_at:
                for child in self._children:
                    if child.status is None:
                        self._log(f"spin: the {child.trigger_type} trigger did not stop in time; killing it")
                        _kill(child.pid, signal.SIGKILL)
                        exit_status = exit_status or 128 + signal.SIGKILL
                kill_at = math.inf
        return exit_status or 0

    def _signal_all(self, sig: int) -> None:
        for child in self._children:
            if child.status is None:
                _kill(child.pid, sig)

    def _log(self, line: str) -> None:
        try:
            os.write(self._log_fd, (line + "\n").encode())
        except OSError:
            pass

    # ------------------------------------------------------------------------------------------- a part

    def _child(self, index: int) -> None:
        code = 1
        trigger_type, part = self.parts[index]
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != self._supervisor_pid:  # the supervisor died before prctl took effect
                os._exit(1)
            for child in self._children:
                _close(child.pidfd)
            for fd in (self._wake_r, self._wake_w):
                _close(fd)
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGTERM, lambda *_: part.interrupt())
            # Ctrl-C reaches the whole process group: the supervisor decides, parts wait to be told.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            code = part.run()
        except BaseException as exc:  # noqa: BLE001 - the child must never return into the supervisor's code
            self._log(f"spin: the {trigger_type} trigger failed: {type(exc).__name__}: {exc}")
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)


def _describe_exit(status: int) -> tuple[str, int]:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"was killed by signal {sig}", 128 + sig
    code = os.waitstatus_to_exitcode(status)
    return f"exited with status {code}", code


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _close(fd: int) -> None:
    if fd < 0:
        return
    try:
        os.close(fd)
    except OSError:
        pass


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


__all__ = ["MultiTriggerApp"]
