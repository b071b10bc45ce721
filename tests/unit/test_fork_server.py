"""The fork server's pure parts and its process against a real server subprocess (no containerd: that side is
tests/e2e/test_fork_server.py): build keys, the message exchange, what a forked daemon takes on from `start`,
and the refusals."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from shim.forkserver import adopt, build_key, protocol, server
from tests.unit.forked import in_child

SHIM = Path(sys.executable).parent / "containerd-shim-spin-v2"


def test_the_build_key_changes_when_a_dependency_is_installed_or_upgraded(monkeypatch, tmp_path):
    first = build_key.build_key()
    site = tmp_path / "site-packages"
    (site / "spin_shim_test_dep-1.0.dist-info").mkdir(parents=True)
    monkeypatch.syspath_prepend(str(site))
    installed = build_key.build_key()
    assert installed != first
    (site / "spin_shim_test_dep-1.0.dist-info").rename(site / "spin_shim_test_dep-1.1.dist-info")
    assert build_key.build_key() not in (first, installed)


def test_the_build_key_is_stable_and_changes_with_the_salt(monkeypatch):
    first = build_key.build_key()
    assert build_key.build_key() == first
    monkeypatch.setenv(build_key.SALT_ENV, "another build")
    assert build_key.build_key() != first


def test_a_changed_file_changes_the_tree_digest(tmp_path):
    import hashlib

    (tmp_path / "pkg").mkdir()
    module = tmp_path / "pkg" / "mod.py"
    module.write_text("x = 1\n")

    def digest() -> str:
        value = hashlib.sha256()
        build_key._add_tree(value, tmp_path)
        return value.hexdigest()

    before = digest()
    os.utime(module, ns=(module.stat().st_atime_ns, module.stat().st_mtime_ns + 1))
    assert digest() != before
    after = digest()
    (tmp_path / "pkg" / "__pycache__").mkdir()
    (tmp_path / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"x")
    assert digest() == after  # bytecode is not the build


def test_a_request_and_its_socket_cross_a_seqpacket_pair_whole():
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right, listener:
        protocol.send(left, {"hello": "x" * 100_000}, [listener.fileno()])
        message, fds = protocol.receive(right, max_fds=1)
        assert message == {"hello": "x" * 100_000} and len(fds) == 1
        assert os.fstat(fds[0]).st_ino == os.fstat(listener.fileno()).st_ino
        os.close(fds[0])


@pytest.mark.parametrize("payload", [b"[1, 2]", b"not json", b"x" * (protocol.MAX_MESSAGE_BYTES + 10)])
def test_what_is_not_one_whole_json_object_is_refused_and_its_fds_closed(payload):
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    with left, right, sent:
        socket.send_fds(left, [payload], [sent.fileno()])
        open_before = set(os.listdir("/proc/self/fd"))
        with pytest.raises(ValueError):
            protocol.receive(right, max_fds=1)
        assert set(os.listdir("/proc/self/fd")) <= open_before


def test_start_context_crosses_json_unchanged():
    context = adopt.StartContext.capture(["/usr/bin/containerd-shim-spin-v2", "-id", "x", "start"])
    assert adopt.StartContext.from_json(json.loads(json.dumps(context.to_json()))) == context
    assert context.cwd == os.getcwd() and context.env == dict(os.environ)
    assert context.namespaces["mnt"] == os.stat("/proc/self/ns/mnt").st_ino


def test_a_forked_daemon_takes_on_starts_environment_cwd_umask_rlimits_oom_score_and_argv(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    oom_score = int(Path("/proc/self/oom_score_adj").read_text())
    context = adopt.StartContext(
        argv=("/shim", "-address", "/c.sock", "start"),  # short: this test process's own argv area is the limit
        env={"TTRPC_ADDRESS": "/run/containerd/containerd.sock.ttrpc", "PATH": "/usr/bin"}, cwd=str(tmp_path),
        umask=0o027, rlimits={"RLIMIT_NOFILE": (min(soft, 512), min(hard, 1024))}, oom_score_adj=oom_score,
        cgroup=Path("/proc/self/cgroup").read_text(), namespaces=adopt.namespace_ids())

    def become() -> dict:
        adopt.adopt(context)
        umask = os.umask(0)
        return {"env": dict(os.environ), "cwd": os.getcwd(), "umask": umask,
                "nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
                "oom": Path("/proc/self/oom_score_adj").read_text().strip(),
                "cmdline": Path("/proc/self/cmdline").read_bytes().rstrip(b"\0").decode().split("\0")}

    seen = in_child(become)
    assert seen["env"] == context.env and seen["cwd"] == str(tmp_path) and seen["umask"] == 0o027
    assert seen["nofile"] == [min(soft, 512), min(hard, 1024)]
    assert seen["oom"] == str(min(oom_score + 1, 1000))  # one above start's, as the cold path's daemon
    assert seen["cmdline"] == list(context.argv)


def test_a_command_line_longer_than_the_argv_area_is_refused():
    start, end = adopt.argv_area()
    too_long = ("x" * (end - start + 1),)
    assert not adopt.argv_fits(too_long)
    with pytest.raises(ValueError):
        adopt.set_argv(too_long)


def _request(key: str, **context_changes) -> dict:
    context = adopt.StartContext.capture([str(SHIM), "-id", "x", "start"]).to_json()
    context.update(context_changes)
    return {"version": protocol.PROTOCOL_VERSION, "key": key, "daemon": {}, "context": context}


def test_the_server_refuses_another_protocol_another_build_no_socket_other_namespaces_long_argv_threads():
    key = build_key.build_key()
    fits = [str(SHIM)[:8]]  # within this test process's argv area, whatever pytest's command line was

    def refusals() -> dict:  # in a fork: one thread, as the server has
        return {"ok": server._refusal(_request(key, argv=fits), [5], key),
                "version": server._refusal({**_request(key, argv=fits), "version": 0}, [5], key),
                "build": server._refusal(_request("0" * 24, argv=fits), [5], key),
                "socket": server._refusal(_request(key, argv=fits), [], key),
                "namespaces": server._refusal(_request(key, argv=fits, namespaces={**adopt.namespace_ids(), "mnt": 1}),
                                              [5], key),
                "argv": server._refusal(_request(key, argv=["x" * 10_000]), [5], key)}

    seen = in_child(refusals)
    assert seen["ok"] is None
    assert "protocol version" in seen["version"]
    assert seen["build"] == "another shim build"
    assert seen["socket"] == "no listening socket passed"
    assert seen["namespaces"] == "start runs in other namespaces than the server"
    assert "command line" in seen["argv"]
    worker = threading.Thread(target=time.sleep, args=(2,))
    worker.start()
    try:
        assert server._refusal(_request(key, argv=fits), [5], key).startswith("the server has ")
    finally:
        worker.join()


@pytest.fixture
def running_server(monkeypatch):
    """A real server subprocess of a build of its own (a unique salt), which exits when the test ends."""
    salt = f"unit-{uuid.uuid4().hex}"
    monkeypatch.setenv(build_key.SALT_ENV, salt)
    key = build_key.build_key()
    env = {**os.environ, server.IDLE_ENV: "30"}
    process = subprocess.Popen([str(SHIM), "fork-server", key, " " * adopt.ARGV_PADDING], env=env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = protocol.socket_path(key)
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        assert process.poll() is None and time.monotonic() < deadline, "the fork server did not listen"
        time.sleep(0.05)
    yield key, process
    process.terminate()
    process.wait(10)
    for leftover in (path, protocol.lock_path(key)):
        if os.path.exists(leftover):
            os.unlink(leftover)


def _ask(key: str, request: dict, as_uid: int | None = None) -> dict:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with conn, listener:
        conn.settimeout(10)
        conn.connect(protocol.socket_path(key))
        protocol.send(conn, request, [listener.fileno()])
        return protocol.receive(conn)[0]


def test_the_servers_socket_is_root_only_its_title_short_and_another_builds_request_refused(running_server):
    key, process = running_server
    assert os.stat(protocol.SOCKET_DIR).st_mode & 0o777 == 0o700
    assert os.stat(protocol.socket_path(key)).st_mode & 0o777 == 0o600
    cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    assert cmdline == [str(SHIM).encode(), b"fork-server", key.encode()]
    assert _ask(key, _request("f" * 24)) == {"refused": "another shim build"}
    assert process.poll() is None

    def connect_as_nobody() -> dict:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            conn.connect(protocol.socket_path(key))
        except PermissionError:
            return {"refused": True}
        return {"refused": False}

    assert in_child(connect_as_nobody) == {"refused": True}


def test_a_second_server_of_the_same_build_leaves_the_first_alone(running_server):
    key, process = running_server
    second = subprocess.run([str(SHIM), "fork-server", key], timeout=30, capture_output=True)
    assert second.returncode == 0  # it found the lock held and went
    assert process.poll() is None and os.path.exists(protocol.socket_path(key))


def test_the_server_exits_when_idle_and_removes_its_socket(monkeypatch):
    monkeypatch.setenv(build_key.SALT_ENV, f"unit-idle-{uuid.uuid4().hex}")
    key = build_key.build_key()
    started = time.monotonic()
    result = subprocess.run([str(SHIM), "fork-server", key], env={**os.environ, server.IDLE_ENV: "1"},
                            timeout=60, capture_output=True)
    assert result.returncode == 0 and time.monotonic() - started >= 1
    assert not os.path.exists(protocol.socket_path(key)) and not os.path.exists(protocol.lock_path(key))


def test_a_starting_server_removes_what_killed_servers_of_other_builds_left_and_leaves_live_ones(
        running_server, monkeypatch):
    live_key, _ = running_server
    dead = f"dead{uuid.uuid4().hex[:20]}"
    for path in (protocol.socket_path(dead), protocol.lock_path(dead)):
        open(path, "w").close()  # what a SIGKILLed server leaves: nobody holds the lock
    monkeypatch.setenv(build_key.SALT_ENV, f"unit-sweep-{uuid.uuid4().hex}")
    key = build_key.build_key()
    subprocess.run([str(SHIM), "fork-server", key], env={**os.environ, server.IDLE_ENV: "0.2"}, timeout=60,
                   capture_output=True, check=True)
    assert not os.path.exists(protocol.socket_path(dead)) and not os.path.exists(protocol.lock_path(dead))
    assert os.path.exists(protocol.socket_path(live_key)) and os.path.exists(protocol.lock_path(live_key))


def test_every_warm_module_imports_and_none_brings_grpc_or_a_driver():
    """What the server imports is in every daemon and instance process: grpc (its threads and fork handlers) and
    the service drivers (imported by the guests that use them) must not be among it."""
    code = ("import importlib, json, sys\n"
            "from shim.forkserver.server import WARM_MODULES\n"
            "for name in WARM_MODULES:\n"
            "    importlib.import_module(name)\n"
            "from runtime.host.registry import REGISTRY\n"
            "REGISTRY.load_providers()\n"
            "print(json.dumps([sorted(sys.modules), len(WARM_MODULES)]))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr  # a misspelt name would be skipped by the server, silently
    modules, count = json.loads(result.stdout)
    assert count == len(server.WARM_MODULES)
    assert "runtime.host.wasi.http" in modules and "runtime.spin.bindings.key_value" in modules  # providers came
    unwanted = {"grpc", "redis", "pymysql", "pg8000", "paho", "opentelemetry"}
    assert {name.split(".")[0] for name in modules} & unwanted == set()
    assert "oci.client" not in modules  # containerd's gRPC client: artifacts only


def test_a_server_loads_the_host_providers_before_it_forks(monkeypatch):
    from runtime.host.registry import REGISTRY

    monkeypatch.setattr(REGISTRY, "_loaded", set())
    server._load_host_providers()
    assert REGISTRY._loaded == set(REGISTRY._packages)
