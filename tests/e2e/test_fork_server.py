"""The warm fork server (shim/forkserver) through real containerds: daemons come from it, it can die or be of
another build without a running pod noticing, and `start` falls back to forking the daemon itself.

Each containerd here has a salt of its own (SPIN_SHIM_FORK_SERVER_SALT in its environment, which `start`
inherits), so its fork server is one no other test shares, and the test can kill it.
"""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from shim.forkserver import build_key, protocol
from tests.e2e.conftest import Images, running_containerd
from tests.e2e.http_support import HttpTask
from fork_servers import fork_server_pids  # scripts/ is on sys.path (conftest)
from tests.e2e.support import assert_no_leaks, shim_processes, task_cgroups, wait_until

pytestmark = pytest.mark.e2e

RUNTIME = "io.containerd.spin.v2"


def _key(salt: str) -> str:
    previous = os.environ.get(build_key.SALT_ENV)
    os.environ[build_key.SALT_ENV] = salt
    try:
        return build_key.build_key()
    finally:
        if previous is None:
            del os.environ[build_key.SALT_ENV]
        else:
            os.environ[build_key.SALT_ENV] = previous


def _forked_by(daemon, task_id: str) -> str:
    """'start' or 'the fork server (pid N)', from the daemon's debug line in containerd's log."""
    pattern = re.compile(rf'serving {re.escape(task_id)} on \S+, forked by ([^"]+)"')
    matches = pattern.findall(daemon.log_path.read_text(errors="replace"))
    assert matches, f"no 'serving {task_id}' line in {daemon.log_path}"
    return matches[-1]


def _stop_servers(key: str) -> None:
    for pid in fork_server_pids(key):
        os.kill(pid, signal.SIGTERM)
    assert wait_until(lambda: not fork_server_pids(key), timeout=10)
    for leftover in (protocol.socket_path(key), protocol.lock_path(key)):
        if os.path.exists(leftover):
            os.unlink(leftover)


@pytest.fixture
def salted(tmp_path_factory: pytest.TempPathFactory, shim_dir: Path, shim_cache_dir: Path) -> Iterator:
    """(containerd 2.1 with a fork server salt of its own, that salt's build key)."""
    salt = f"e2e-{uuid.uuid4().hex}"
    key = _key(salt)
    with running_containerd("2.1", tmp_path_factory.mktemp("containerd-fork"), shim_dir, shim_cache_dir,
                            extra_env={build_key.SALT_ENV: salt}) as daemon:
        try:
            yield daemon, key
        finally:
            _stop_servers(key)


def _http_task(daemon, tmp_path: Path, http_apps, task_id: str) -> HttpTask:
    image = Images(daemon, tmp_path).wasm_image("js-echo", {"/": http_apps["js-echo"]}, ["/"])
    return HttpTask(daemon, image, task_id)


def _wait_for_server(key: str) -> int:
    assert wait_until(lambda: len(fork_server_pids(key)) == 1 and os.path.exists(protocol.socket_path(key)),
                      timeout=30), f"no fork server for {key}"
    return fork_server_pids(key)[0]


def test_pods_start_through_the_server_and_survive_its_sigkill(salted, tmp_path, http_apps):
    daemon, key = salted
    first = _http_task(daemon, tmp_path, http_apps, "fork-first")
    second = _http_task(daemon, tmp_path, http_apps, "fork-second")
    third = _http_task(daemon, tmp_path, http_apps, "fork-third")
    try:
        assert first.run().returncode == 0  # no server yet: cold, and it spawns one
        assert _forked_by(daemon, first.task_id) == "start"
        server = _wait_for_server(key)
        assert second.run().returncode == 0
        assert _forked_by(daemon, second.task_id) == f"the fork server (pid {server})"
        daemon_pid = int(Path(f"/proc/{second.pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        assert daemon_pid in shim_processes(daemon)  # its command line is start's: -address and all
        assert os.getsid(daemon_pid) == daemon_pid  # a session of its own, as a cold daemon
        os.kill(server, signal.SIGKILL)
        assert wait_until(lambda: not fork_server_pids(key), timeout=10)
        assert first.get("/hello").status == 200 and second.get("/hello").status == 200
        assert third.run().returncode == 0  # the stale socket refuses: cold again, and a new server
        assert _forked_by(daemon, third.task_id) == "start"
        assert _wait_for_server(key) != server
        assert third.get("/hello").status == 200
    finally:
        for task in (first, second, third):
            task.remove()
    assert_no_leaks(daemon, [first.task_id, second.task_id, third.task_id])


def test_a_server_of_another_build_is_never_used(tmp_path_factory, shim_dir, shim_cache_dir, tmp_path, http_apps):
    salts = [f"e2e-a-{uuid.uuid4().hex}", f"e2e-b-{uuid.uuid4().hex}"]
    keys = [_key(salt) for salt in salts]
    try:
        with running_containerd("2.1", tmp_path_factory.mktemp("containerd-build-a"), shim_dir, shim_cache_dir,
                                extra_env={build_key.SALT_ENV: salts[0]}) as daemon:
            warm = _http_task(daemon, tmp_path, http_apps, "build-a")
            try:
                assert warm.run().returncode == 0
            finally:
                warm.remove()
        server_a = _wait_for_server(keys[0])
        with running_containerd("2.1", tmp_path_factory.mktemp("containerd-build-b"), shim_dir, shim_cache_dir,
                                extra_env={build_key.SALT_ENV: salts[1]}) as daemon:
            task = _http_task(daemon, tmp_path, http_apps, "build-b")
            try:
                assert task.run().returncode == 0
                assert _forked_by(daemon, task.task_id) == "start"  # build b has no server yet; a's is not asked
                server_b = _wait_for_server(keys[1])
                assert server_b != server_a and fork_server_pids(keys[0]) == [server_a]
            finally:
                task.remove()
            assert_no_leaks(daemon, [task.task_id])
    finally:
        for key in keys:
            _stop_servers(key)


def test_the_cold_path_serves_when_the_server_is_turned_off(tmp_path_factory, shim_dir, shim_cache_dir, tmp_path,
                                                            http_apps):
    salt = f"e2e-off-{uuid.uuid4().hex}"
    with running_containerd("2.1", tmp_path_factory.mktemp("containerd-cold"), shim_dir, shim_cache_dir,
                            extra_env={build_key.SALT_ENV: salt, "SPIN_SHIM_FORK_SERVER": "0"}) as daemon:
        tasks = [_http_task(daemon, tmp_path, http_apps, f"cold-{i}") for i in range(2)]
        try:
            for task in tasks:
                assert task.run().returncode == 0
                assert _forked_by(daemon, task.task_id) == "start"
                assert task.get("/hello").status == 200
            assert not fork_server_pids(_key(salt))
        finally:
            for task in tasks:
                task.remove()
        assert_no_leaks(daemon, [task.task_id for task in tasks])


def test_two_containerd_restarts_under_pods_from_the_server(salted, tmp_path, http_apps):
    daemon, key = salted
    warmup = _http_task(daemon, tmp_path, http_apps, "restart-warmup")
    task = _http_task(daemon, tmp_path, http_apps, "restart-pod")
    try:
        assert warmup.run().returncode == 0
        server = _wait_for_server(key)
        assert task.run().returncode == 0
        assert _forked_by(daemon, task.task_id) == f"the fork server (pid {server})"
        for _ in range(2):
            daemon.restart_daemon()
            assert task.status() == "RUNNING" and task.get("/hello").status == 200
        assert task.stop_task()
        assert fork_server_pids(key) == [server]
    finally:
        warmup.remove()
        task.remove()
    assert_no_leaks(daemon, [warmup.task_id, task.task_id])


def test_a_hundred_create_delete_cycles_leave_nothing(salted, tmp_path, guests):
    daemon, key = salted
    image = Images(daemon, tmp_path).wasm_image("hello", {"/hello.wasm": guests["hello.wasm"]}, ["/hello.wasm"])
    ids = [f"cycle-{i}" for i in range(100)]
    started = time.monotonic()
    for task_id in ids:
        result = daemon.ctr("run", "--rm", "--runtime", RUNTIME, image, task_id, check=False)
        assert result.returncode == 0 and "hello from wasm" in result.stdout, result.stderr
    print(f"\n100 ctr run --rm cycles in {time.monotonic() - started:.1f} s")
    assert "the fork server" in _forked_by(daemon, ids[-1])
    assert_no_leaks(daemon, ids)
    assert not any(task_cgroups(task_id) for task_id in ids)
    assert len(fork_server_pids(key)) == 1 and os.listdir(protocol.SOCKET_DIR).count(f"fork-{key}.sock") == 1
