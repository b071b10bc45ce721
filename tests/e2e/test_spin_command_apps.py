"""Spin apps (`/spin.toml` in the image root) whose trigger is `command`, through ctr.

The image convention of containerd-shim-spin: a scratch image holding spin.toml and its
wasm, command `["/"]`. The component runs with the task's args and env plus its own
`environment`; files of the image are visible only where the app declares them.
"""

from __future__ import annotations

import pytest

from tests.e2e.support import RUNTIME, assert_no_leaks

pytestmark = pytest.mark.e2e


def test_command_trigger_runs_the_component_with_args_and_environment(containerd, images, guest_apps):
    image = images.wasm_image("command-hello", {"/": guest_apps["command-hello"]}, ["/"])
    result = containerd.ctr("run", "--rm", "--runtime", RUNTIME, image, "app-hello", "/", "one", "two",
                            check=False)
    assert result.returncode == 0, result.stderr
    assert "hello from wasm" in result.stdout
    assert "from spin.toml" in result.stdout  # the component's `environment`
    assert "one two" in result.stdout
    assert_no_leaks(containerd, ["app-hello"])


def test_command_trigger_with_a_p2_component(containerd, images, guest_apps):
    image = images.wasm_image("command-component", {"/": guest_apps["command-component"]}, ["/"])
    result = containerd.ctr("run", "--rm", "--runtime", RUNTIME, image, "app-p2", check=False)
    assert result.returncode == 0, result.stderr
    assert "from an inline component" in result.stdout
    assert_no_leaks(containerd, ["app-p2"])


@pytest.mark.parametrize("path, visible", [
    ("/static/a.txt", True),
    ("/assets/img/logo.txt", True),
    ("/etc/app/config.json", True),
    ("/static/secret.txt", False),  # excluded
    ("/static/notes.md", False),  # not matched by the glob
    ("/spin.toml", False),  # in the image, not declared
    ("/private/key.txt", False),  # only private/config.json is mapped
])
def test_files_are_visible_only_where_declared(containerd, images, guest_apps, path, visible):
    image = images.wasm_image("command-files", {"/": guest_apps["command-files"]}, ["/"])
    task_id = "app-files-" + path.strip("/").replace("/", "-").replace(".", "-")
    result = containerd.ctr("run", "--rm", "--runtime", RUNTIME, image, task_id, "/", path, check=False)
    if visible:
        assert result.returncode == 0, (result.stdout, result.stderr)
        assert result.stdout.strip(), "file content expected"
    else:
        assert result.returncode != 0, result.stdout
        assert "readfile:" in result.stderr
    assert_no_leaks(containerd, [task_id])


def test_declared_files_are_read_only(containerd, images, guest_apps):
    image = images.wasm_image("command-files", {"/": guest_apps["command-files"]}, ["/"])
    result = containerd.ctr("run", "--rm", "--runtime", RUNTIME, image, "app-files-write", "/",
                            "/static/a.txt", "write", check=False)
    assert result.returncode != 0, result.stdout
    # Refused by the read-only preopen: EPERM (63) or ENOTCAPABLE (76) in WASI's numbering.
    assert "readfile: cannot" in result.stderr and ("errno 63" in result.stderr or "errno 76" in result.stderr)
    assert_no_leaks(containerd, ["app-files-write"])
