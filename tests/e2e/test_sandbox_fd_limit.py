"""A worker at its open-files limit neither spins nor stops serving for good (before the fix, a worker
at its fd limit spun at ~70 % CPU and stopped accepting until connections closed).

The task's spec limits RLIMIT_NOFILE to 64 (the instance process applies process.rlimits, shim/wasm/sandbox/
credentials.py) and SPIN_SHIM_HTTP_WORKERS=1 gives it one worker (the instance process itself since InlineServer, a
forked child before). More idle connections than that are opened and held: the worker fills its fd table, accept(2)
fails with EMFILE and the rest wait in the listener's queue, which stays readable. A worker that retried at once
would burn a core; the fix stops polling the listener for 100 ms at a time (runtime/http/server.py
``_Acceptor._starve``), so the task's processes stay near idle (measured 0-2.5 % of a CPU; with ``_starve`` made a
no-op the same test measured 92-99 % and failed). When the connections close the worker accepts again: a request
queued while it was full is answered (in ~15-60 ms), and so is a new one.

ctr has no rlimit flag (1.6, 1.7, 2.1): `ctr run --config` takes a whole OCI spec instead. The spec starts from
`ctr oci spec` (ctr's default, which sets RLIMIT_NOFILE 1024) of the containerd under test, with the limit
lowered, the host's network (as --net-host) and, since a --config run has no image, an absolute root: a copy of
the js-echo app (the Spin JS SDK).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.http_support import HttpTask, free_port
from tests.e2e.sandbox_support import bundle_spec, children
from tests.e2e.support import RUNTIME, assert_no_leaks, wait_until

pytestmark = pytest.mark.e2e

FD_LIMIT = 64
#: Idle connections held open: well past what the worker's fd table has room for.
IDLE_CONNECTIONS = 100
#: Seconds the worker spends at its limit before the CPU window (asyncio's old retry timers piled up over ~1 s).
SETTLE = 1.0
#: Seconds of the CPU window. The idle connections' header timeout (10 s) must not end before it does.
WINDOW = 2.0
#: A worker retrying accept(2) at once uses a whole core; the backoff uses ~0.
MAX_CPU_SHARE = 0.20
REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


@dataclass
class SpecTask(HttpTask):
    """An HttpTask run with `ctr run --config <spec>`: the spec is the file, the root a directory (no image)."""

    rootfs: Path = Path()
    rlimits: list[dict] = field(default_factory=list)

    def write_spec(self, path: Path) -> dict:
        spec = json.loads(self.daemon.ctr("oci", "spec").stdout)  # type: ignore[attr-defined]
        spec["root"] = {"path": str(self.rootfs)}
        process = spec["process"]
        process["args"] = ["/"]
        env = {"SPIN_HTTP_LISTEN_ADDR": f"127.0.0.1:{self.port}", **self.env}
        process["env"] = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                          *(f"{key}={value}" for key, value in env.items())]
        process["rlimits"] = self.rlimits
        linux = spec["linux"]
        linux["namespaces"] = [ns for ns in linux["namespaces"] if ns["type"] != "network"]  # as --net-host
        linux["cgroupsPath"] = f"/default/{self.task_id}"  # what ctr's default spec gives a container of this id
        path.write_text(json.dumps(spec, indent=2))
        return spec

    def run(self, *, wait_ready: bool = True) -> subprocess.CompletedProcess[str]:
        if not self.port:
            self.port = free_port()
        self.log_path = self.rootfs.parent / "container.log"
        self.log_path.touch()
        spec_path = self.rootfs.parent / "config.json"
        self.write_spec(spec_path)
        ctr = self.daemon.ctr  # type: ignore[attr-defined]
        result = ctr("run", "-d", "--runtime", RUNTIME, "--log-uri", f"file://{self.log_path}",
                     "--config", str(spec_path), self.task_id, check=False)
        if result.returncode == 0 and wait_ready:
            self.wait_ready()
        return result


def _cpu_ticks(pids: list[int]) -> int:
    """utime + stime of these processes (all their threads), in clock ticks."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total


def _nofile_limit(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError(f"no open files limit in /proc/{pid}/limits")


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _read_response(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_a_worker_at_its_fd_limit_backs_off_without_spinning_and_serves_again(containerd, http_apps, tmp_path):
    task_id = "sandbox-fd-limit"
    rootfs = tmp_path / "rootfs"
    shutil.copytree(http_apps["js-echo"], rootfs)
    task = SpecTask(containerd, "", task_id, env={"SPIN_SHIM_HTTP_WORKERS": "1"}, rootfs=rootfs,
                    rlimits=[{"type": "RLIMIT_NOFILE", "soft": FD_LIMIT, "hard": FD_LIMIT}])
    result = task.run()
    try:
        assert result.returncode == 0, f"ctr run --config failed: {result.stderr}\nlog:\n{task.log()}"
        assert bundle_spec(containerd, task_id)["process"]["rlimits"] == task.rlimits
        instance = task.pid
        (worker,) = children(instance) or [instance]  # the one worker: a child, or the instance serving inline
        assert _nofile_limit(instance) == _nofile_limit(worker) == (FD_LIMIT, FD_LIMIT)
        assert task.get("/").status == 200

        idle = [socket.create_connection(("127.0.0.1", task.port), timeout=5) for _ in range(IDLE_CONNECTIONS)]
        pending = None
        try:
            assert wait_until(lambda: _open_fds(worker) >= FD_LIMIT, timeout=5), \
                f"the worker never filled its fd table: {_open_fds(worker)} of {FD_LIMIT}"
            # Queued behind the idle connections the worker could not accept: no answer while it is full.
            pending = socket.create_connection(("127.0.0.1", task.port), timeout=5)
            pending.sendall(REQUEST)
            time.sleep(SETTLE)

            pids = [instance, *children(instance)]
            ticks, started = _cpu_ticks(pids), time.monotonic()
            time.sleep(WINDOW)
            ticks, elapsed = _cpu_ticks(pids) - ticks, time.monotonic() - started
            share = ticks / os.sysconf("SC_CLK_TCK") / elapsed
            print(f"\ncontainerd {containerd.version}: the task's {len(pids)} process(es) used {share:.1%} of one CPU "
                  f"over {elapsed:.2f} s with the worker at {_open_fds(worker)}/{FD_LIMIT} fds and "
                  f"{IDLE_CONNECTIONS} idle connections held")
            assert _open_fds(worker) >= FD_LIMIT, "the worker left its fd limit during the window"
            pending.setblocking(False)
            with pytest.raises(BlockingIOError):
                pending.recv(1)
            assert share < MAX_CPU_SHARE, f"the task used {share:.0%} of a CPU at its fd limit (spinning)"
        finally:
            closed_at = time.monotonic()
            for conn in idle:
                conn.close()

        assert pending is not None
        try:
            answer = _read_response(pending, timeout=5)
        finally:
            pending.close()
        answered_in = time.monotonic() - closed_at
        print(f"the request queued at the limit was answered {answered_in * 1000:.0f} ms after the idle connections "
              f"closed")
        assert answer.startswith(b"HTTP/1.1 200"), f"the request queued at the limit got {answer[:80]!r}"
        assert task.get("/", timeout=5).status == 200
        emfile_lines = [line for line in task.log().splitlines() if "cannot accept connections" in line]
        assert emfile_lines and f"open files limit {FD_LIMIT}" in emfile_lines[0], task.log()
        assert len(emfile_lines) <= 2, emfile_lines  # one line per episode, not one per retry
    finally:
        task.remove()
        assert_no_leaks(containerd, [task_id])
