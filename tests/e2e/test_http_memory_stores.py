"""Spin's in-memory stores through containerd: a `type = "spin"` key-value store or SQLite database without `path`.

In a file of its own: `serving` checks at its end that no shim is left on the daemon, which a module-scoped app
of another file (test_http_spin_apis) would still hold.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.http_support import HttpTask, serving

pytestmark = pytest.mark.e2e


def _sql(app: HttpTask, statements: list) -> tuple[int, object]:
    response = app.get("/sqlite", "-X", "POST", data=json.dumps(statements).encode())
    return response.status, (response.json() if response.status == 200 else response.text)


IN_MEMORY_RUNTIME_CONFIG = b"""
[key_value_store.default]
type = "spin"

[sqlite_database.default]
type = "spin"
"""


def test_stores_without_a_path_are_in_memory_shared_by_the_workers_and_empty_after_a_restart(
        containerd_21, images_21, http_apps):
    """Spin keeps a `type = "spin"` store or database configured without `path` in memory: it serves (every
    worker of the task sees the same data) and is empty at the next start, unlike the default files."""
    image = images_21.wasm_image("py-spin-in-memory", {"/": http_apps["py-spin"],
                                                       "/runtime-config.toml": IN_MEMORY_RUNTIME_CONFIG}, ["/"])
    with serving(containerd_21, image, "spin-in-memory", {"SPIN_VARIABLE_API_TOKEN": "t",
                                                          "SPIN_SHIM_HTTP_WORKERS": "2"}) as task:
        assert task.get("/kv/colour", "-X", "PUT", data=b"blue").status == 200
        assert {task.get("/kv/colour").body for _ in range(8)} == {b"blue"}  # whichever worker answers
        assert _sql(task, [["CREATE TABLE t (x)", []], ["INSERT INTO t VALUES (?)", [7]]])[0] == 200
        assert _sql(task, [["SELECT x FROM t", []]])[1][0]["rows"] == [[7]]
        task.stop_task()
        task.start_again()
        assert task.get("/kv/colour").status == 404
        status, text = _sql(task, [["SELECT x FROM t", []]])
        assert status == 500 and "no such table" in text
