"""The pre-forked worker pool, driven the way the instance process drives it: a supervisor process with a
listener, SIGTERM for a graceful stop, and workers that may die under it."""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from runtime.http.workers import (MAX_DEFAULT_WORKERS, default_worker_count, describe_exit,
                                  worker_loop)

REPO = Path(__file__).resolve().parents[2]

SUPERVISOR = textwrap.dedent("""
    import os, resource, signal, sys, time
    sys.path.insert(0, sys.argv[1])
    from runtime.http.listen import bind_listener
    from runtime.http.routing import Router
    from runtime.http.server import HttpServer, ServerOptions
    from runtime.http.workers import InlineServer, WorkerPool

    class Pid:
        component_id = "pid"

        def handle(self, head, body, sink):
            if head.target.startswith("/slow="):
                time.sleep(float(head.target[len("/slow="):]))
            data = str(os.getpid()).encode()
            sink.start(200, [(b"content-length", str(len(data)).encode())])
            sink.write(data)
            sink.finish()

    listener = bind_listener("127.0.0.1:0")
    router, _ = Router.build([("/...", "pid")])
    if os.environ.get("DROP_TO_UID"):  # as the instance process does: bound as root, then the task's uid
        uid = int(os.environ["DROP_TO_UID"])
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)

    token_r, token_w = os.pipe()  # one byte: the worker that reads it is the one SPARE_FDS limits
    os.write(token_w, b"1")
    os.set_blocking(token_r, False)

    def limited() -> bool:
        if not os.environ.get("ONLY_ONE_LIMITED"):
            return True
        try:
            return os.read(token_r, 1) == b"1"
        except BlockingIOError:
            return False

    def make_worker():
        if os.environ.get("BROKEN_WORKER"):
            raise RuntimeError("cannot load the component")
        if os.environ.get("SPARE_FDS") and limited():  # room for the loop's fds and this many connections
            limit = len(os.listdir("/proc/self/fd")) + 3 + int(os.environ["SPARE_FDS"])
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
        return HttpServer(router, {"pid": Pid()}, ServerOptions())

    if os.environ.get("INLINE"):
        pool = InlineServer(listener, make_worker)
    else:
        pool = WorkerPool(int(sys.argv[2]), listener, make_worker)
    signal.signal(signal.SIGTERM, lambda *_: pool.terminate(float(os.environ.get("GRACE", "5"))))
    print(listener.getsockname()[1], flush=True)
    sys.exit(pool.run())
""")


class Supervisor:
    def __init__(self, count=2, env=None):
        self.proc = subprocess.Popen([sys.executable, "-c", SUPERVISOR, str(REPO), str(count)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        self.port = int(self.proc.stdout.readline())

    def get(self, target="/", timeout=5.0) -> tuple[int, str]:
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body.decode()

    def wait_ready(self, workers):
        deadline = time.monotonic() + 10
        while len(self.children()) < workers or not self._answers():
            assert time.monotonic() < deadline, "workers did not come up"
            time.sleep(0.02)

    def _answers(self):
        try:
            return self.get("/.well-known/spin/health", timeout=1)[0] == 200
        except OSError:
            return False

    def children(self) -> list[int]:
        try:
            text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return []
        return [int(pid) for pid in text.split()]

    def finish(self, timeout=10) -> tuple[int, str]:
        code = self.proc.wait(timeout)
        return code, self.proc.stderr.read()


@pytest.fixture
def supervisors():
    started = []

    def start(**kwargs):
        supervisor = Supervisor(**kwargs)
        started.append(supervisor)
        return supervisor

    yield start
    for supervisor in started:
        if supervisor.proc.poll() is None:
            supervisor.proc.kill()
            supervisor.proc.wait()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _serving_pids(sup: Supervisor, workers: set[int]) -> set[int]:
    """Pids that answer, from bursts of concurrent connections, until every worker has answered (or 10 s)."""
    served: set[int] = set()
    deadline = time.monotonic() + 10
    while served != workers and time.monotonic() < deadline:
        answers: list[int] = []
        burst = [threading.Thread(target=lambda: answers.append(int(sup.get("/slow=0.05")[1]))) for _ in range(8)]
        for thread in burst:
            thread.start()
        for thread in burst:
            thread.join(10)
        served.update(answers)
    return served


def test_all_workers_serve_the_one_inherited_listener(supervisors):
    sup = supervisors(count=3)
    sup.wait_ready(3)
    workers = set(sup.children())
    assert len(workers) == 3
    assert _serving_pids(sup, workers) == workers
    assert sup.proc.poll() is None


def test_no_reuseport_socket_can_join_the_port_of_a_serving_pool(supervisors):
    sup = supervisors(count=2)
    sup.wait_ready(2)
    intruder = socket.socket()
    intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    with intruder, pytest.raises(OSError) as info:
        intruder.bind(("127.0.0.1", sup.port))
    assert info.value.errno == errno.EADDRINUSE


def _epoll_events(epoll_fd: int, fd: int) -> int | None:
    """The event mask epoll watches ``fd`` with, from /proc/self/fdinfo of the epoll instance."""
    for line in Path(f"/proc/self/fdinfo/{epoll_fd}").read_text().splitlines():
        fields = line.split()
        if fields[:1] == ["tfd:"] and int(fields[1]) == fd:
            return int(fields[3], 16) & ~(select.EPOLLERR | select.EPOLLHUP)  # epoll adds these two itself
    return None


def test_the_worker_loop_watches_the_listener_exclusively_and_other_fds_plainly():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    other_r, other_w = socket.socketpair()
    loop = worker_loop(frozenset({listener.fileno()}))
    try:
        epoll_fd = loop._selector._selector.fileno()  # type: ignore[attr-defined]
        loop.add_reader(listener.fileno(), lambda: None)
        loop.add_reader(other_r.fileno(), lambda: None)
        assert _epoll_events(epoll_fd, listener.fileno()) == select.EPOLLIN | select.EPOLLEXCLUSIVE
        assert _epoll_events(epoll_fd, other_r.fileno()) == select.EPOLLIN
        loop.remove_reader(listener.fileno())  # as _Acceptor does after each accept: a fresh entry, still exclusive
        assert _epoll_events(epoll_fd, listener.fileno()) is None
        loop.add_reader(listener.fileno(), lambda: None)
        assert _epoll_events(epoll_fd, listener.fileno()) == select.EPOLLIN | select.EPOLLEXCLUSIVE
        loop.add_writer(other_r.fileno(), lambda: None)  # EPOLL_CTL_MOD of a plain entry still works
        assert _epoll_events(epoll_fd, other_r.fileno()) == select.EPOLLIN | select.EPOLLOUT
    finally:
        loop.close()
        for sock in (listener, other_r, other_w):
            sock.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to bind as root and drop to another uid")
def test_workers_of_a_task_dropped_to_a_non_root_uid_all_serve(supervisors):
    # Finding 7: with per-worker SO_REUSEPORT sockets, worker 1 (uid 65534) could not join the group of the
    # listener root had bound (EADDRINUSE), and the pool failed at start.
    sup = supervisors(count=2, env={"DROP_TO_UID": "65534"})
    sup.wait_ready(2)
    workers = set(sup.children())
    for pid in workers:
        uids = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                    if line.startswith("Uid:"))
        assert uids.split()[1:] == ["65534"] * 4
    assert _serving_pids(sup, workers) == workers
    assert sup.proc.poll() is None


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_a_worker_out_of_fds_backs_off_without_spinning_then_serves_again(supervisors):
    # Finding 9: asyncio's accept loop retried EMFILE 1024 times per wakeup (a log line and a timer each), ~70 %
    # of a core, while the connections it could not accept waited.
    sup = supervisors(count=1, env={"SPARE_FDS": "4"})
    sup.wait_ready(1)
    (worker,) = sup.children()
    errors: list[str] = []
    reader = threading.Thread(target=lambda: errors.extend(sup.proc.stderr), daemon=True)
    reader.start()
    clients = [socket.create_connection(("127.0.0.1", sup.port), timeout=5) for _ in range(20)]
    try:
        deadline = time.monotonic() + 5
        while not errors and time.monotonic() < deadline:
            time.sleep(0.02)
        assert errors, "the worker never reached its fd limit"
        time.sleep(1.0)  # asyncio's retry timers piled up: 0.24 s of CPU in the first second, 0.82 in the next
        before = _cpu_seconds(worker)
        time.sleep(1.0)
        cpu = _cpu_seconds(worker) - before
        assert cpu < 0.3, f"the worker used {cpu:.2f} s of CPU in 1 s at its fd limit"
        assert "cannot accept connections: Too many open files (EMFILE;" in errors[0]
    finally:
        for client in clients:
            client.close()
    assert sup.get(timeout=5)[0] == 200
    assert len(errors) == 1, errors  # one line per episode
    assert sup.proc.poll() is None


def test_sigkill_of_a_worker_fails_the_pool_with_137_and_stops_the_other(supervisors):
    sup = supervisors(count=2)
    sup.wait_ready(2)
    victim, other = sup.children()
    os.kill(victim, signal.SIGKILL)
    code, err = sup.finish()
    assert code == 137
    assert err.count("\n") == 1
    assert f"(pid {victim}) was killed by signal 9 (SIGKILL); stopping the other workers" in err
    assert not _alive(other)


def test_a_worker_that_fails_to_start_fails_the_pool(supervisors):
    sup = supervisors(count=2, env={"BROKEN_WORKER": "1"})
    code, err = sup.finish()
    assert code == 1
    assert "failed: RuntimeError: cannot load the component" in err
    assert "exited with status 1" in err


def test_terminate_drains_in_flight_requests_then_exits_zero(supervisors):
    sup = supervisors(count=2, env={"GRACE": "5"})
    sup.wait_ready(2)
    workers = sup.children()
    result = {}
    slow = threading.Thread(target=lambda: result.update(answer=sup.get("/slow=0.7")))
    slow.start()
    time.sleep(0.2)
    start = time.monotonic()
    sup.proc.send_signal(signal.SIGTERM)
    slow.join(5)
    assert result["answer"][0] == 200 and int(result["answer"][1]) in workers
    code, err = sup.finish()
    assert (code, err) == (0, "")
    assert time.monotonic() - start < 3
    assert not any(_alive(pid) for pid in workers)
    with pytest.raises(OSError):
        sup.get()


def test_one_worker_is_served_inline_by_the_supervisor_itself_and_drains_on_sigterm(supervisors):
    sup = supervisors(count=1, env={"INLINE": "1", "GRACE": "5"})
    sup.wait_ready(0)
    assert sup.get() == (200, str(sup.proc.pid)) and sup.children() == []  # no second process
    result = {}
    slow = threading.Thread(target=lambda: result.update(answer=sup.get("/slow=0.7")))
    slow.start()
    time.sleep(0.2)
    sup.proc.send_signal(signal.SIGTERM)
    slow.join(5)
    assert result["answer"] == (200, str(sup.proc.pid))  # the request in flight when SIGTERM came
    assert sup.finish() == (0, "")
    with pytest.raises(OSError):
        sup.get()


def test_terminate_kills_workers_stuck_past_the_grace(supervisors):
    sup = supervisors(count=1, env={"GRACE": "0.2"})
    sup.wait_ready(1)
    outcome = []

    def stuck_request():
        try:
            outcome.append(sup.get("/slow=30", timeout=30))
        except (OSError, IndexError) as exc:  # aborted: no (complete) response
            outcome.append(exc)

    client = threading.Thread(target=stuck_request)
    client.start()
    time.sleep(0.2)
    sup.proc.send_signal(signal.SIGTERM)
    # The worker's server aborts the stuck connection after the grace and exits though the guest thread still
    # sleeps: the pool ends promptly and cleanly.
    code, _ = sup.finish(timeout=5)
    client.join(5)
    assert code == 0 and not isinstance(outcome[0], tuple)


def test_workers_die_with_the_supervisor(supervisors):
    sup = supervisors(count=2)
    sup.wait_ready(2)
    workers = sup.children()
    sup.proc.kill()
    sup.proc.wait()
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(_alive(pid) for pid in workers)


@pytest.mark.parametrize("status, text, code", [
    (signal.SIGKILL, "was killed by signal 9 (SIGKILL)", 137),
    (signal.SIGSEGV, "was killed by signal 11 (SIGSEGV)", 139),
    (3 << 8, "exited with status 3", 3),
    (0, "exited with status 0", 0),
])
def test_exit_descriptions(status, text, code):
    assert describe_exit(status) == (text, code)


@pytest.mark.parametrize("cpus, workers", [(None, 1), (0.1, 1), (1.0, 1), (1.5, 2), (3.0, 3), (16.0, 4)])
def test_one_worker_per_cpu_the_container_may_use_rounded_up_and_capped(cpus, workers, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(64)))
    assert default_worker_count(cpus) == min(workers, MAX_DEFAULT_WORKERS)


def test_no_more_workers_than_cpus_this_process_may_run_on(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0})
    assert default_worker_count(4.0) == 1


def test_other_workers_keep_accepting_while_one_is_out_of_fds(supervisors):
    sup = supervisors(count=2, env={"SPARE_FDS": "2", "ONLY_ONE_LIMITED": "1"})
    sup.wait_ready(2)
    errors: list[str] = []
    reader = threading.Thread(target=lambda: errors.extend(sup.proc.stderr), daemon=True)
    reader.start()
    clients: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 10
        while not errors and time.monotonic() < deadline:  # idle connections until the limited worker is full
            clients.append(socket.create_connection(("127.0.0.1", sup.port), timeout=5))
            time.sleep(0.01)
        assert errors, "the limited worker never reached its fd limit"
        (starved,) = {int(line.split("(pid ")[1].split(")")[0]) for line in errors}
        for _ in range(10):  # the starved worker still holds its connections; the other one answers
            status, pid = sup.get(timeout=5)
            assert (status, int(pid)) == (200, next(p for p in sup.children() if p != starved))
    finally:
        for client in clients:
            client.close()
    assert sup.proc.poll() is None
