"""The shim daemon exits on its own only when it has had no task for a while (SPIN_SHIM_IDLE_EXIT_SECONDS).

A long-running task must keep its daemon alive however long it runs: an HTTP app serves for days.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.e2e.conftest import Images, running_containerd
from tests.e2e.http_support import HttpTask
from tests.e2e.support import assert_no_leaks, shim_processes

pytestmark = pytest.mark.e2e

IDLE_SECONDS = 2


@pytest.fixture(scope="module")
def short_idle_containerd(tmp_path_factory: pytest.TempPathFactory, shim_dir: Path,
                          shim_cache_dir: Path) -> Iterator:
    with running_containerd("2.1", tmp_path_factory.mktemp("containerd-idle"), shim_dir, shim_cache_dir,
                            extra_env={"SPIN_SHIM_IDLE_EXIT_SECONDS": str(IDLE_SECONDS)}) as daemon:
        yield daemon


def test_a_running_task_keeps_its_daemon_past_the_idle_exit(short_idle_containerd, tmp_path, http_apps):
    images = Images(short_idle_containerd, tmp_path)
    image = images.wasm_image("js-echo", {"/": http_apps["js-echo"]}, ["/"])
    task = HttpTask(short_idle_containerd, image, "idle-keeps")
    try:
        assert task.run().returncode == 0
        time.sleep(IDLE_SECONDS * 3)
        assert task.get("/hello").status == 200
        assert task.status() == "RUNNING"
        assert task.stop_task()
    finally:
        task.remove()
    # no task any more: the daemon exits within the idle period (assert_no_leaks waits up to 10 s for that)
    assert_no_leaks(short_idle_containerd, [task.task_id])


def test_a_daemon_without_tasks_exits(short_idle_containerd, tmp_path, http_apps):
    images = Images(short_idle_containerd, tmp_path)
    image = images.wasm_image("js-echo", {"/": http_apps["js-echo"]}, ["/"])
    # a failed create leaves a daemon with no task, which containerd may never dial again
    result = short_idle_containerd.ctr("run", "--rm", "--runtime", "io.containerd.spin.v2", "--env",
                                       "SPIN_HTTP_LISTEN_ADDR=bad", image, "idle-empty", "/", check=False)
    assert result.returncode != 0
    started = time.monotonic()
    while shim_processes(short_idle_containerd) and time.monotonic() - started < IDLE_SECONDS + 8:
        time.sleep(0.1)
    assert not shim_processes(short_idle_containerd)
    short_idle_containerd.ctr("containers", "rm", "idle-empty", check=False)
