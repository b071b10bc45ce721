"""What a user reads in the container log of a Spin HTTP app (issue 16, acceptance 1): where it listens and which
routes it has (Spin's own start-up lines), how its start went (precompile cache hit or compile), a warning when
nothing outside the container can reach it, and, when asked for, a line per request.

Through a real containerd 2.1: `ctr run` tasks (with and without `--net-host`, the log a `--log-uri file://`
file, as tests/e2e/http_support.py runs them) and a CRI pod on a CNI bridge (the log kubelet's `kubectl logs`
reads). js-echo serves everything under `/...`.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import running_containerd
from tests.e2e.cri_support import cri_ready, import_image
from tests.e2e.http_support import HttpTask, TaskGroup, curl, free_port, task_group, wait_for_log
from tests.e2e.support import RUNTIME, wait_until

from mkoci import build_image_tar  # noqa: E402  (scripts/ is on sys.path)

pytestmark = pytest.mark.e2e

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
#: The shim's start-up line for js-echo run by one worker (a first start on this containerd compiles it).
SUMMARY = re.compile(r"^spin: http trigger: 1 worker process; js-echo: (precompiled, cache hit \(\d+ ms\)|"
                     r"compiled in \d+\.\d\d s \(cached for the next start\))$", re.M)
ACCESS_LINE = re.compile(rf"^{STAMP} [A-Z]+ \S+ (\d{{3}}|-) \d+\.\d\dms \S+", re.M)
WARNING = "Warning: the HTTP trigger listens on"


def _startup_lines(url: str) -> list[str]:
    return [f"Serving {url}", "Available Routes:", f"  js-echo: {url} (wildcard)"]


@pytest.fixture(scope="module")
def js_image(images_21, http_apps) -> str:
    return images_21.wasm_image("js-echo-startup", {"/": http_apps["js-echo"]}, ["/"])


@pytest.fixture(scope="module")
def started(containerd_21) -> Iterator[TaskGroup]:
    with task_group(containerd_21) as group:
        yield group


@pytest.fixture(scope="module")
def quiet(containerd_21, js_image, started) -> HttpTask:
    """js-echo with `--net-host` on 127.0.0.1:<port>, access log off."""
    return started.run(HttpTask(containerd_21, js_image, "startup-quiet"))


@pytest.fixture(scope="module")
def chatty(containerd_21, js_image, started) -> HttpTask:
    """js-echo with `--net-host`, SPIN_SHIM_ACCESS_LOG=1, listening on a host name as Spin allows."""
    port = free_port()
    return started.run(HttpTask(containerd_21, js_image, "startup-chatty", port=port,
                                  env={"SPIN_HTTP_LISTEN_ADDR": f"localhost:{port}", "SPIN_SHIM_ACCESS_LOG": "1"}))


def test_ctr_task_log_says_where_it_listens_its_routes_and_how_it_loaded(quiet: HttpTask):
    assert wait_for_log(quiet, "Available Routes:"), quiet.log()
    lines = quiet.log().splitlines()
    expected = _startup_lines(f"http://127.0.0.1:{quiet.port}")
    start = lines.index(expected[0])
    assert lines[start:start + 3] == expected, lines
    assert SUMMARY.search(quiet.log()), quiet.log()
    # --net-host: the host's interfaces are there, so no warning.
    assert WARNING not in quiet.log()


def test_no_access_log_unless_asked_for(quiet: HttpTask):
    for path in ("/hello", "/status/404", "/.well-known/spin/health"):
        assert quiet.get(path).status in (200, 404)
    assert quiet.get("/hello").text == "Hello from JS!"
    assert not ACCESS_LINE.search(quiet.log()), quiet.log()


def test_access_log_has_a_line_per_request_when_enabled(chatty: HttpTask):
    assert chatty.get("/hello?secret=s3cr3t").status == 200
    assert chatty.get("/status/418").status == 418
    assert chatty.get("/throw").status == 500

    def lines() -> list[str]:
        return [line for line in chatty.log().splitlines() if ACCESS_LINE.match(line)]

    assert wait_until(lambda: sum(" GET /throw " in line for line in lines()) == 1, timeout=10), chatty.log()
    found = lines()
    assert any(re.fullmatch(rf"{STAMP} GET /hello 200 \d+\.\d\dms js-echo", line) for line in found), found
    assert any(re.fullmatch(rf"{STAMP} GET /status/418 418 \d+\.\d\dms js-echo", line) for line in found), found
    assert any(re.fullmatch(rf"{STAMP} GET /throw 500 \d+\.\d\dms js-echo guest failed", line)
               for line in found), found
    assert "s3cr3t" not in chatty.log()  # paths only: query strings may carry tokens
    # The failure's own line names the request and when it happened.
    assert re.search(rf"^{STAMP} spin: js-echo: .*\[GET /throw\]$", chatty.log(), re.M), chatty.log()


def test_a_host_name_listen_address_is_resolved_as_spin_does(chatty: HttpTask):
    # SPIN_HTTP_LISTEN_ADDR=localhost:<port>: bound on 127.0.0.1 (Spin prefers it among the answers).
    assert chatty.get("/hello").text == "Hello from JS!"
    assert f"Serving http://127.0.0.1:{chatty.port}" in chatty.log().splitlines(), chatty.log()


def test_a_task_without_net_host_warns_that_nothing_outside_can_reach_it(containerd_21, js_image, started):
    # The README's `ctr run` without --net-host: a network namespace with only lo, the app on 0.0.0.0:80.
    task_id = "startup-no-net-host"
    log_dir = Path(tempfile.mkdtemp(prefix=f"{task_id}-"))
    log_path = log_dir / "container.log"
    log_path.touch()
    result = containerd_21.ctr("run", "-d", "--runtime", RUNTIME, "--log-uri", f"file://{log_path}",
                               js_image, task_id, "/", check=False)
    try:
        assert result.returncode == 0, result.stderr
        assert wait_until(lambda: WARNING in log_path.read_text(), timeout=90), log_path.read_text()
        log = log_path.read_text()
        lines = log.splitlines()
        start = lines.index("Serving http://0.0.0.0:80")
        assert lines[start:start + 3] == _startup_lines("http://0.0.0.0:80"), lines
        warning = next(line for line in lines if line.startswith(WARNING))
        assert "only a loopback interface (lo)" in warning and "--net-host" in warning, warning
    finally:
        containerd_21.ctr("task", "kill", "-s", "SIGKILL", task_id, check=False)
        wait_until(lambda: task_id not in containerd_21.ctr("tasks", "ls", check=False).stdout
                   or "STOPPED" in containerd_21.ctr("tasks", "ls", check=False).stdout, timeout=20)
        containerd_21.ctr("task", "rm", "-f", task_id, check=False)
        containerd_21.ctr("containers", "rm", task_id, check=False)
        shutil.rmtree(log_dir, ignore_errors=True)
    assert task_id not in containerd_21.ctr("containers", "ls", "-q", check=False).stdout.split()
    started.include(task_id)


# ------------------------------------------------------------------------------------------------ CRI


def test_cri_pod_log_has_the_startup_lines_and_no_warning_on_a_pod_network(tmp_path_factory, shim_dir,
                                                                          shim_cache_dir, http_apps):
    workdir = tmp_path_factory.mktemp("startup-cri")
    with running_containerd("2.1", workdir, shim_dir, shim_cache_dir) as ctrd, cri_ready(ctrd) as cri:
        rootfs = workdir / "rootfs"
        shutil.copytree(http_apps["js-echo"], rootfs)
        image = "docker.io/spin-shim-test/js-echo-startup-cri:v1"
        tar = workdir / "js-echo.tar"
        build_image_tar(rootfs, tar, image, os_="wasip1", arch="wasm", entrypoint=["/"])
        import_image(ctrd, tar, all_platforms=True)
        with cri.pod("startup-log", runtime_handler="spin") as pod:
            container = cri.run_container(pod, "app", image, command=["/"])
            assert wait_until(lambda: "Available Routes:" in cri.container_log(container, "stderr"), timeout=90), \
                cri.container_log(container)
            assert curl(f"http://{pod.ip}:80/hello").text == "Hello from JS!"
            log = cri.container_log(container, "stderr")
            start = log.index("Serving http://0.0.0.0:80")
            assert log[start:start + 3] == _startup_lines("http://0.0.0.0:80"), log
            assert any(SUMMARY.match(line) for line in log), log
            assert not any(line.startswith(WARNING) for line in log), log  # the pod has eth0 on the bridge
