"""The JS app served through each containerd version (1.6, 1.7, 2.1); the app matrix itself runs on 2.1."""

from __future__ import annotations

import pytest

from tests.e2e.http_support import HttpTask
from tests.e2e.support import assert_no_leaks

pytestmark = pytest.mark.e2e


def test_http_app_serves_and_stops_cleanly(containerd, images, http_apps):
    image = images.wasm_image("js-echo", {"/": http_apps["js-echo"]}, ["/"])
    task = HttpTask(containerd, image, "http-version-smoke")
    try:
        result = task.run()
        assert result.returncode == 0, result.stderr
        response = task.get("/hello")
        assert response.status == 200 and response.text == "Hello from JS!"
        assert task.status() == "RUNNING"
        assert task.stop_task(), "SIGTERM did not stop the task"  # the workers drain and exit
        assert task.status() == ""
    finally:
        task.remove()
    assert_no_leaks(containerd, [task.task_id])
