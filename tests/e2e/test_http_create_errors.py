"""Mistakes in an HTTP app or its task settings fail `ctr run` at Create, with the reason in ctr's error and in
the container log, and leave nothing behind (each test runs alone on the daemon so the leak check is exact)."""

from __future__ import annotations

import socket

import pytest

from tests.e2e.http_support import HttpTask, free_port, wait_for_log
from tests.e2e.support import assert_no_leaks

pytestmark = pytest.mark.e2e


def _run_expecting_failure(containerd_21, images_21, app_dir, task_id: str, env: dict[str, str],
                           port: int = 0) -> tuple[str, HttpTask]:
    image = images_21.wasm_image("py-spin", {"/": app_dir}, ["/"])
    task = HttpTask(containerd_21, image, task_id, env=env, port=port)
    result = task.run(wait_ready=False)
    assert result.returncode != 0, "ctr run should have failed"
    return result.stderr, task


def test_missing_required_variable_is_named(containerd_21, images_21, http_apps):
    stderr, task = _run_expecting_failure(containerd_21, images_21, http_apps["py-spin"], "http-novar", {})
    try:
        assert "api_token" in stderr and "SPIN_VARIABLE_API_TOKEN" in stderr, stderr
        assert wait_for_log(task, "api_token"), task.log()  # where `kubectl logs` looks, too
    finally:
        task.remove()
    assert_no_leaks(containerd_21, [task.task_id])


def test_port_in_use_is_a_create_error(containerd_21, images_21, http_apps):
    port = free_port()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        stderr, task = _run_expecting_failure(containerd_21, images_21, http_apps["py-spin"], "http-clash",
                                              {"SPIN_VARIABLE_API_TOKEN": "x"}, port=port)
        try:
            assert "address already in use" in stderr.lower() and "SPIN_HTTP_LISTEN_ADDR" in stderr, stderr
            assert wait_for_log(task, "SPIN_HTTP_LISTEN_ADDR"), task.log()
        finally:
            task.remove()
    assert_no_leaks(containerd_21, [task.task_id])


@pytest.mark.parametrize("env, needle", [
    ({"SPIN_COMPONENTS_TO_RETAIN": "nope"}, "SPIN_COMPONENTS_TO_RETAIN"),
    ({"SPIN_HTTP_LISTEN_ADDR": "not-an-address"}, "SPIN_HTTP_LISTEN_ADDR"),
    ({"SPIN_MAX_INSTANCE_MEMORY": "lots"}, "SPIN_MAX_INSTANCE_MEMORY"),
    ({"SPIN_MAX_INSTANCE_MEMORY": "65536"}, "memory"),  # far below what the Python guest needs
])
def test_bad_settings_are_create_errors(containerd_21, images_21, http_apps, env, needle):
    task_id = "http-badenv-" + str(abs(hash(tuple(env.items()))) % 10_000)
    stderr, task = _run_expecting_failure(containerd_21, images_21, http_apps["py-spin"], task_id,
                                          {"SPIN_VARIABLE_API_TOKEN": "x", **env})
    try:
        assert needle in stderr, stderr
    finally:
        task.remove()
    assert_no_leaks(containerd_21, [task.task_id])
