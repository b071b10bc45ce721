"""Pre-forked worker processes serving one listening socket, and the supervisor that keeps them honest.

Why processes: a worker runs one guest at a time (runtime.http.dispatch) because threads share the GIL, so cores
are used by running one worker per core (measured with wrk -c16 on 2 vCPUs while evaluating wasmtime-py: two
SO_REUSEPORT processes served 1.7-2x the requests of one, JS 865 -> 1435 and Spin SDK Python 322 -> 628 req/s,
where two threads in one process did not).

The caller (the shim's instance process: single-threaded, already in the task's netns and cgroup) loads the app
and binds the listener, then hands both to ``WorkerPool``. Forking after the load means compiled components and
imported modules are shared copy-on-write; ``make_worker`` runs in each child to build what must not cross a fork
(wasmtime Engines and Stores, threads, the event loop).

Failure policy, for Kubernetes' sake: a worker that dies unexpectedly (OOM killer, crash, a bug) is not restarted
behind kubelet's back. The supervisor writes one line naming the worker and its fate to the container log, stops
the other workers and returns an exit status like a container's (128 + signal, or the worker's status), so the
task exits and the pod's restart policy decides. Workers die with the supervisor (PR_SET_PDEATHSIG), so a
supervisor killed outright leaves no orphan serving the port.

One way to share the port: every worker accepts on the one listening socket it inherits through fork, watched
with EPOLLEXCLUSIVE (``ListenerSelector``: a connection wakes one idle worker, not all) and accepted one per
wakeup, after which the worker queues up behind the others (runtime.http.server's ``_Acceptor``), so a burst
spreads over the workers. There is no SO_REUSEPORT anywhere, on purpose:

- a socket joining a reuseport group must belong to the same effective uid as the group's first socket; the
  listener is bound as root before the instance process drops to the task's uid, so workers of a non-root task
  opening their own reuseport sockets failed with EADDRINUSE and a task with two or more workers never started;
- a listener with SO_REUSEPORT can be joined by any other process of that uid in the network namespace: with a
  host-network app, another root process bound the same port and answered 13 of 40 requests.

The inherited socket needs neither: nobody else can add a socket to it, and workers need no bind of their own.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import math
import os
import select
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

_PR_SET_PDEATHSIG = 1


class Servable(Protocol):
    """What a worker runs: ``HttpServer`` (runtime.http.server) has this shape."""

    async def serve(self, sockets: Sequence[socket.socket]) -> None: ...

    async def shutdown(self, grace: float) -> None: ...


@dataclass
class _Worker:
    index: int
    pid: int
    pidfd: int
    control_fd: int
    status: int | None = None  # os.waitpid status once reaped


def describe_exit(status: int) -> tuple[str, int]:
    """("killed by signal 9 (SIGKILL)", 137) or ("exited with status 3", 3), for a waitpid status."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"was killed by signal {sig} ({name})", 128 + sig
    code = os.waitstatus_to_exitcode(status)
    return f"exited with status {code}", code


class WorkerPool:
    """``count`` forked workers serving ``listener``; ``run`` supervises them until they are all gone."""

    def __init__(self, count: int, listener: socket.socket, make_worker: Callable[[], Servable], *,
                 stop_grace: float = 10.0, failure_grace: float = 2.0,
                 name: str = "http worker", log_fd: int = 2) -> None:
        if count < 1:
            raise ValueError("a worker pool needs at least one worker")
        self.count = count
        self._listener = listener
        self._make_worker = make_worker
        #: Grace a worker uses when signalled directly (SIGTERM) rather than through ``terminate``.
        self._stop_grace = stop_grace
        self._failure_grace = failure_grace
        self._name = name
        self._log_fd = log_fd
        self._workers: list[_Worker] = []
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # Written by terminate() (maybe in a signal handler or another thread), read by run(): plain attribute
        # stores are atomic under the GIL, and the pipe byte wakes run() from poll.
        self._requested_grace: float | None = None
        self._supervisor_pid = os.getpid()

    # ------------------------------------------------------------------------------------------- supervisor

    def terminate(self, grace: float) -> None:
        """Ask every worker to stop accepting and finish its requests within ``grace`` seconds, then exit.

        Safe from a signal handler or another thread: it only records the request and wakes ``run``.
        """
        if self._requested_grace is None or grace < self._requested_grace:
            self._requested_grace = grace
        wake = self._wake_w
        if wake < 0:  # run() has returned and closed the pipe; the number may belong to another file by now
            return
        try:
            os.write(wake, b"t")
        except OSError:  # full (a wakeup is pending anyway) or closed concurrently
            pass

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self._workers]

    def run(self) -> int:
        """Fork the workers and supervise them; returns the exit status the instance process should have."""
        try:
            if self._requested_grace is None:
                self._fork_all()
            return self._supervise()
        finally:
            wake_r, wake_w = self._wake_r, self._wake_w
            self._wake_r = self._wake_w = -1
            for fd in (wake_r, wake_w):
                _close(fd)

    def _fork_all(self) -> None:
        # Whatever sits in Python's stdio buffers would otherwise be written once per process.
        sys.stdout.flush()
        sys.stderr.flush()
        # The loaded app's objects go to the GC's permanent generation: a worker's collections then never write
        # to (and so never copy) the pages it shares with the supervisor and its siblings.
        gc.freeze()
        try:
            for index in range(self.count):
                control_r, control_w = os.pipe2(os.O_CLOEXEC)
                pid = os.fork()
                if pid == 0:
                    _close(control_w)
                    self._child(index, control_r)  # never returns
                _close(control_r)
                worker = _Worker(index, pid, -1, control_w)
                self._workers.append(worker)
                worker.pidfd = os.pidfd_open(pid)
        except OSError:
            # fork or pidfd_open failed (EAGAIN, ENOMEM): no half-started pool is left behind.
            for worker in self._workers:
                _kill(worker.pid, signal.SIGKILL)
                os.waitpid(worker.pid, 0)
                _close(worker.pidfd)
                _close(worker.control_fd)
            raise

    def _supervise(self) -> int:
        poller = select.poll()
        by_fd = {}
        for worker in self._workers:
            poller.register(worker.pidfd, select.POLLIN)
            by_fd[worker.pidfd] = worker
        poller.register(self._wake_r, select.POLLIN)
        exit_status: int | None = None
        stopping_sent = False
        kill_at = math.inf
        killed: set[int] = set()
        while any(w.status is None for w in self._workers):
            if self._requested_grace is not None and not stopping_sent:
                stopping_sent = True
                kill_at = time.monotonic() + self._requested_grace + 1.0
                self._send_stop(self._requested_grace)
            timeout = None if kill_at == math.inf else max(0, int((kill_at - time.monotonic()) * 1000))
            for fd, _ in poller.poll(timeout):
                if fd == self._wake_r:
                    _drain(self._wake_r)
                    continue
                worker = by_fd[fd]
                poller.unregister(fd)
                self._reap(worker)
                how, code = describe_exit(worker.status or 0)
                if worker.pid in killed:
                    exit_status = exit_status or code
                elif code != 0 or not stopping_sent:
                    if exit_status is None:
                        exit_status = code or 1
                        self._log(f"spin: {self._name} {worker.index} (pid {worker.pid}) {how}"
                                  + ("" if stopping_sent else "; stopping the other workers"))
                    if not stopping_sent:
                        self.terminate(self._failure_grace)
            if time.monotonic() >= kill_at:
                for worker in self._workers:
                    if worker.status is None:
                        self._log(f"spin: {self._name} {worker.index} (pid {worker.pid}) did not stop in time; "
                                  f"killing it")
                        _kill(worker.pid, signal.SIGKILL)
                        killed.add(worker.pid)
                kill_at = math.inf
        for worker in self._workers:
            _close(worker.pidfd)
            _close(worker.control_fd)
        return exit_status or 0

    def _send_stop(self, grace: float) -> None:
        for worker in self._workers:
            if worker.status is None:
                try:
                    os.write(worker.control_fd, f"{grace}\n".encode())
                except OSError:  # the worker is already gone; its pidfd will say how
                    pass

    def _reap(self, worker: _Worker) -> None:
        try:
            _, status = os.waitpid(worker.pid, 0)
        except ChildProcessError:  # someone else reaped it (a SIGCHLD handler of the caller): status unknown
            status = 1 << 8
        worker.status = status

    def _log(self, line: str) -> None:
        try:
            os.write(self._log_fd, (line + "\n").encode())
        except OSError:
            pass

    # ------------------------------------------------------------------------------------------- worker

    def _child(self, index: int, control_r: int) -> None:
        code = 1
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != self._supervisor_pid:  # the supervisor died before prctl took effect
                os._exit(1)
            _reset_signals()
            # Only this worker's control pipe may stay open here: a sibling's write end held by this process
            # would hide the supervisor's death (EOF) from that sibling.
            for worker in self._workers:
                _close(worker.control_fd)
                _close(worker.pidfd)
            for fd in (self._wake_r, self._wake_w):
                _close(fd)
            sockets = [self._listener]
            server = self._make_worker()
            listener_fds = frozenset(sock.fileno() for sock in sockets)
            with asyncio.Runner(loop_factory=lambda: worker_loop(listener_fds)) as runner:
                code = runner.run(self._serve(server, sockets, control_r))
        except BaseException as exc:  # noqa: BLE001 - whatever happens, the child must not return into the caller
            try:
                os.write(self._log_fd, f"spin: {self._name} {index} failed: {type(exc).__name__}: {exc}\n".encode())
            except OSError:
                pass
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)

    async def _serve(self, server: Servable, sockets: list[socket.socket], control_r: int) -> int:
        loop = asyncio.get_running_loop()
        stop: asyncio.Future[float] = loop.create_future()

        def on_control() -> None:
            data = os.read(control_r, 64)
            # EOF: the supervisor is gone (PDEATHSIG covers a kill; this covers a supervisor that exited).
            _resolve(stop, float(data.split(b"\n", 1)[0]) if data else 0.0)

        os.set_blocking(control_r, False)
        loop.add_reader(control_r, on_control)
        loop.add_signal_handler(signal.SIGTERM, _resolve, stop, self._stop_grace)
        return await serve_until_stopped(server, sockets, stop)


class InlineServer:
    """A pool of one, served by the calling process itself: one worker in a child would be a second process (its
    own ~12 MiB of private pages, a fork on the start path) doing what the supervisor, idle otherwise, can do.
    Same interface and exit semantics as WorkerPool: ``run`` serves until ``terminate`` (safe from a signal
    handler) has drained it, returning 0, or returns 1 when the server stopped by itself; a crash or the OOM
    killer ends the process, as it would have ended the worker and then the task."""

    def __init__(self, listener: socket.socket, make_server: Callable[[], Servable]) -> None:
        self._listener = listener
        self._make_server = make_server
        self._requested_grace: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Future[float] | None = None

    def terminate(self, grace: float) -> None:
        self._requested_grace = grace if self._requested_grace is None else min(grace, self._requested_grace)
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            try:
                loop.call_soon_threadsafe(_resolve, stop, self._requested_grace)
            except RuntimeError:  # the loop has closed: nothing is serving any more
                pass

    def run(self) -> int:
        if self._requested_grace is not None:
            return 0
        server = self._make_server()
        listener_fds = frozenset({self._listener.fileno()})
        with asyncio.Runner(loop_factory=lambda: worker_loop(listener_fds)) as runner:
            return runner.run(self._serve(server))

    async def _serve(self, server: Servable) -> int:
        loop = asyncio.get_running_loop()
        self._stop = loop.create_future()
        self._loop = loop
        if self._requested_grace is not None:
            _resolve(self._stop, self._requested_grace)
        return await serve_until_stopped(server, [self._listener], self._stop)


async def serve_until_stopped(server: Servable, sockets: list[socket.socket], stop: asyncio.Future[float]) -> int:
    """Serve until ``stop`` gives a grace (drain within it: 0) or the server stops by itself (1); a server that
    fails raises."""
    serving = asyncio.ensure_future(server.serve(sockets))
    await asyncio.wait([serving, stop], return_when=asyncio.FIRST_COMPLETED)
    if serving.done():
        serving.result()  # raises what stopped it
        return 1  # a server that stops by itself was not asked to
    await server.shutdown(stop.result())
    await serving
    return 0


def _resolve(stop: asyncio.Future[float], grace: float) -> None:
    if not stop.done():
        stop.set_result(grace)


class ListenerSelector(selectors.EpollSelector):
    """asyncio's epoll selector, but the shared listener is watched with EPOLLEXCLUSIVE: a new connection wakes
    one worker waiting in epoll_wait (a worker busy elsewhere is skipped), not all of them.

    Measured (4 workers, trivial executor, one client, a new connection per request, 4 alternating runs on a
    busy 2-CPU machine): 4.9-5.5 wakeups per request with plain epoll, the three losers each returning from
    epoll_wait to an accept that raises BlockingIOError, against 1.3-2.1 with EPOLLEXCLUSIVE; worker CPU 1850
    against 1700 us per request (means; single runs varied by 30 %). The wait queue is in registration order, so
    ``_Acceptor`` registers again after each accept to let idle workers take turns.

    Only what asyncio's ``add_reader`` registers for reading alone is made exclusive: epoll refuses EPOLL_CTL_MOD
    on an exclusive entry, and a listener is never watched for writing (``remove_reader`` unregisters it, and the
    next ``add_reader`` adds it anew). Where the kernel refuses EPOLLEXCLUSIVE (before Linux 4.5) the plain entry
    stays: every worker then wakes, which costs wakeups but nothing else.
    """

    def __init__(self, exclusive_fds: frozenset[int]) -> None:
        super().__init__()
        self._exclusive_fds = exclusive_fds

    def register(self, fileobj: selectors._FileObject, events: int, data: object = None) -> selectors.SelectorKey:
        key = super().register(fileobj, events, data)
        epoll: select.epoll | None = getattr(self, "_selector", None)  # EpollSelector's own epoll object
        if key.fd in self._exclusive_fds and events == selectors.EVENT_READ and epoll is not None:
            epoll.unregister(key.fd)  # EPOLLEXCLUSIVE can only be given at EPOLL_CTL_ADD
            try:
                epoll.register(key.fd, select.EPOLLIN | select.EPOLLEXCLUSIVE)
            except OSError:
                epoll.register(key.fd, select.EPOLLIN)
        return key


def worker_loop(listener_fds: frozenset[int]) -> asyncio.AbstractEventLoop:
    """The event loop a worker serves in: asyncio's default on Linux, with ``ListenerSelector``."""
    return asyncio.SelectorEventLoop(ListenerSelector(listener_fds))


def _reset_signals() -> None:
    """Undo the supervisor's Python signal handlers in a worker (they would act on the supervisor's objects)."""
    signal.set_wakeup_fd(-1)
    for sig in signal.valid_signals():
        try:
            if callable(signal.getsignal(sig)):
                signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError, TypeError):
            pass
    # Ctrl-C in a terminal reaches the whole process group: the supervisor decides, workers wait to be told.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _close(fd: int) -> None:
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


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# ------------------------------------------------------------------------------------------------ worker count


#: Ceiling of the default worker count. Each worker costs ~12 MiB of private memory (scripts/bench_density.py);
#: SPIN_SHIM_HTTP_WORKERS sets more.
MAX_DEFAULT_WORKERS = 4


def default_worker_count(cpus: float | None) -> int:
    """One worker per CPU the container may use, rounded up: ``cpus`` is its CPU limit, else its request, as the
    shim reads them from the spec (the sandbox has no cgroupfs to read). A worker runs one guest at a time (the
    GIL), so more workers than CPUs only add memory; a container that named no CPUs (a BestEffort pod, `ctr run`)
    gets one, served by the instance process itself (InlineServer). Capped by the CPUs this process may run on
    and by MAX_DEFAULT_WORKERS."""
    wanted = math.ceil(cpus) if cpus is not None and cpus > 0 else 1
    return max(1, min(wanted, len(os.sched_getaffinity(0)), MAX_DEFAULT_WORKERS))
