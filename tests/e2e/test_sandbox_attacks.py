"""Crafted images cannot reach the node through a Wasm task, and a non-root
task serves with any number of workers and a read-only root stays so: one task per test, each
leak-checked.

Each image is py-spin (the Spin Python SDK app: /file?path= reads a file the guest can see, /counter and /kv/ use
the default key-value store) plus entries that point at the node: symlinks to node files and directories, device
nodes. Through `ctr run` on containerd 2.1; the node's files are checked byte for byte afterwards.
"""

from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path

import pytest

from tests.e2e.http_support import HttpTask, serving
from tests.e2e.sandbox_support import assert_specs_identity, children
from tests.e2e.support import DeviceNode, Symlink, assert_no_leaks

pytestmark = pytest.mark.e2e

ENV = {"SPIN_VARIABLE_API_TOKEN": "t"}


def _canary(tmp_path: Path, name: str, content: bytes) -> tuple[Path, os.stat_result]:
    path = tmp_path / name
    path.write_bytes(content)
    return path, path.stat()


def _assert_untouched(path: Path, content: bytes, before: os.stat_result) -> None:
    assert path.read_bytes() == content
    after = path.stat()
    assert (after.st_mtime_ns, after.st_ino, after.st_nlink) == (before.st_mtime_ns, before.st_ino, before.st_nlink)


def _create_error(daemon, image: str, task_id: str) -> tuple[str, str]:
    """Run a task expected to fail at Create; returns (ctr's error, the container log)."""
    task = HttpTask(daemon, image, task_id, env=ENV)
    result = task.run(wait_ready=False)
    try:
        assert result.returncode != 0, f"{task_id}: the crafted image ran:\n{task.log()}"
        return result.stderr, task.log()
    finally:
        task.remove()
        assert_no_leaks(daemon, [task_id])


def test_device_node_in_the_image_gives_no_access_to_the_node_device(containerd_21, images_21, http_apps):
    image = images_21.wasm_image("py-spin-devices", {
        "/": http_apps["py-spin"],
        "/static/zero": DeviceNode("c", 1, 5),
        "/static/disk": DeviceNode("b", 7, 0),
    }, ["/"])
    with serving(containerd_21, image, "sandbox-devices", ENV) as task:
        assert task.get("/file?path=/static/hello.txt").status == 200  # the mapping itself works
        for node in ("zero", "disk"):
            response = task.get(f"/file?path=/static/{node}")
            assert response.status == 404, f"/static/{node} was readable: {response.body[:64]!r}"


def test_key_value_store_symlinked_to_the_node_stays_in_the_container(containerd_21, images_21, http_apps,
                                                                       tmp_path):
    victim_dir = Path("/tmp") / f"spin-kv-victim-{uuid.uuid4().hex[:8]}"
    canary, before = _canary(tmp_path, "existing.db", b"not a database of the app\n")
    image = images_21.wasm_image("py-spin-kv-escape", {
        "/": http_apps["py-spin"],
        "/.spin": Symlink(str(victim_dir)),
    }, ["/"])
    image_file = images_21.wasm_image("py-spin-kv-file-escape", {
        "/": http_apps["py-spin"],
        "/.spin/sqlite_key_value.db": Symlink(str(canary)),
    }, ["/"])
    try:
        for task_id, ref in (("sandbox-kv-dir", image), ("sandbox-kv-file", image_file)):
            # The symlink resolves inside the container, where its target's directory does not exist: Create
            # fails naming the store (a clear error), or, if the store could be made there, the app serves.
            task = HttpTask(containerd_21, ref, task_id, env=ENV)
            result = task.run()
            try:
                if result.returncode == 0:
                    task.get("/counter")
                    task.get("/kv/k", data=b"guest data")
                else:
                    assert "key-value store 'default'" in result.stderr, result.stderr
                    assert "key-value store 'default'" in task.log()
            finally:
                task.remove()
                assert_no_leaks(containerd_21, [task_id])
        assert not victim_dir.exists()
        _assert_untouched(canary, b"not a database of the app\n", before)
    finally:
        if victim_dir.exists():
            for entry in victim_dir.iterdir():
                entry.unlink()
            victim_dir.rmdir()


def test_manifest_symlinked_to_a_node_file_is_neither_read_nor_run(containerd_21, images_21, http_apps,
                                                                   tmp_path):
    marker = f"NODE-SECRET-{uuid.uuid4().hex}"
    not_toml, _ = _canary(tmp_path, "secret.txt", f"{marker} = = not toml\n".encode())
    manifest = (http_apps["py-spin"] / "spin.toml").read_text().replace("py-spin", "node-app")
    runnable, _ = _canary(tmp_path, "spin.toml", manifest.encode())
    for task_id, target in (("sandbox-toml-oracle", not_toml), ("sandbox-toml-run", runnable)):
        image = images_21.wasm_image(f"py-spin-{task_id}", {
            "/app.wasm": http_apps["py-spin"] / "app.wasm",
            "/spin.toml": Symlink(str(target)),
        }, ["/"])
        error, log = _create_error(containerd_21, image, task_id)
        assert marker not in error and marker not in log
        assert "spin.toml" in error, error


def test_runtime_config_symlinked_to_a_node_file_is_not_read(containerd_21, images_21, http_apps, tmp_path):
    marker = f"NODE-SECRET-{uuid.uuid4().hex}"
    secret, _ = _canary(tmp_path, "node-config.toml", f"{marker} = = not toml\n".encode())
    image = images_21.wasm_image("py-spin-rtc-escape", {
        "/": http_apps["py-spin"],
        "/runtime-config.toml": Symlink(str(secret)),
    }, ["/"])
    task = HttpTask(containerd_21, image, "sandbox-rtc", env=ENV)
    result = task.run(wait_ready=False)
    try:
        assert marker not in result.stderr and marker not in task.log()
    finally:
        task.remove()
        assert_no_leaks(containerd_21, ["sandbox-rtc"])


FLOOD_MANIFEST = """spin_manifest_version = 2
[application]
name = "flood"
[[trigger.http]]
route = "/..."
component = "py-spin"
[component.py-spin]
source = "{source}"
"""


@pytest.mark.parametrize("task_id, source, extra, expected", [
    # 880 kB of unknown keys: ten named, the rest counted (it was a 1 MB Create error after 4 s of difflib)
    ("sandbox-key-flood", "app.wasm", "".join(f"k{i:06d} = 1\n" for i in range(80_000)),
     "unknown key(s) 'k000000', 'k000001'"),
    # a 300-byte file name: ENAMETOOLONG inside the sandbox, the image's error (it was "cannot set up the instance
    # process", an internal error)
    ("sandbox-long-name", "x" * 300 + ".wasm", "", "File name too long"),
    # a 600 kB path: refused before any lookup; the Create error stops at 4096 characters
    ("sandbox-long-path", "a/" * 300_000 + "app.wasm", "", "longer than Linux allows"),
    # arrays nested 100 000 deep: tomllib's RecursionError ended the instance process with a traceback
    ("sandbox-deep-toml", "app.wasm", "deep = " + "[" * 100_000 + "]" * 100_000 + "\n",
     "arrays or inline tables nested too deeply"),
])
def test_oversized_manifest_content_is_a_short_user_error(containerd_21, images_21, http_apps, task_id, source,
                                                          extra, expected):
    manifest = FLOOD_MANIFEST.format(source=source) + extra
    image = images_21.wasm_image(f"py-spin-{task_id}", {
        "/app.wasm": http_apps["py-spin"] / "app.wasm",
        "/spin.toml": manifest.encode(),
    }, ["/"])
    error, log = _create_error(containerd_21, image, task_id)
    assert expected in error and expected in log, (error[:2000], log[:2000])
    assert "cannot set up the instance process" not in error  # a user error (InvalidArgument), not internal
    assert len(error) < 6000 and len(log) < 6000, (len(error), len(log))


def test_a_glob_of_many_double_stars_over_a_deep_tree_does_not_hold_up_create(containerd_21, images_21, http_apps):
    # 25 `**` against 40-deep paths that almost match: the recursive matcher it replaced would try C(65, 25) ways to
    # split each path, outside the pod's CPU limit (the load runs before the cgroup join): Create would not return
    deep = "/".join(["d"] * 40)
    manifest = (http_apps["py-spin"] / "spin.toml").read_text().replace(
        'files = [{ source = "static", destination = "/static" }]',
        'files = [{ source = "static", destination = "/static" }, "' + "/".join(["**"] * 25) + '/x"]')
    assert manifest.count("**/") == 25
    image = images_21.wasm_image("py-spin-glob-bomb", {
        "/": http_apps["py-spin"],
        "/spin.toml": manifest.encode(),
        **{f"/{deep}/{name}": b"" for name in ("a", "b", "c")},
    }, ["/"])
    with serving(containerd_21, image, "sandbox-glob-bomb", ENV) as task:
        assert task.get("/file?path=/static/hello.txt").status == 200


def test_non_root_task_with_two_workers_serves_as_its_user(containerd_21, images_21, http_apps):
    image = images_21.wasm_image("py-spin", {"/": http_apps["py-spin"]}, ["/"])
    env = {**ENV, "SPIN_SHIM_HTTP_WORKERS": "2"}
    with serving(containerd_21, image, "sandbox-nonroot", env, ctr_args=("--user", "1000:1000")) as task:
        assert task.get("/hello").status == 200
        assert assert_specs_identity(task, task.pid)["Uid"].split() == ["1000"] * 4
        workers = children(task.pid)
        assert len(workers) == 2
        for worker in workers:
            assert_specs_identity(task, worker)


def test_a_read_only_root_serves_and_stays_read_only(containerd_21, images_21, http_apps):
    """`ctr run --read-only` (root.readonly, CRI's readOnlyRootFilesystem): the app loads (its staged files are
    made before the root is sealed), serves, and nothing can write its root."""
    image = images_21.wasm_image("js-echo", {"/": http_apps["js-echo"]}, ["/"])
    with serving(containerd_21, image, "sandbox-read-only", {}, ctr_args=("--read-only",)) as task:
        assert task.get("/").status == 200
        with pytest.raises(OSError) as refused:
            Path(f"/proc/{task.pid}/root/written-from-the-node").write_text("x")
        assert refused.value.errno == errno.EROFS
